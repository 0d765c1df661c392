"""Small-batch fp32 linear layer fused in C++ for CPU, for decoding a few tokens: csrc/gemv_cpu.cpp, the
torch op over the kernel of csrc/gemv_kernel.{h,cpp} (which kernels/glu_block shares).

With a few rows of x, `F.linear` is bound by reading the weight from memory once; this kernel
streams it at close to memory bandwidth, small matrices included: the weight's rows are split over
the threads in contiguous ranges, each range is read as 4 (or 2) interleaved sequential streams
(the hardware prefetcher follows those, where it loses rows of 1 KiB taken one block at a time),
each weight row is read once for all the rows of x, and software prefetch runs PREFETCH_BYTES
ahead of each thread's reads. Built on first use (`latentlm.kernels.cpp_build`); AVX2+FMA where
the CPU has it, else scalar loops. The extension checks its inputs itself and answers None to
those it does not take (cheaper than checking them in Python, which costs microseconds a call).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cpp_build import CppExtension
from .naive import small_batch_linear_reference

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = (CSRC / "gemv_cpu.cpp", CSRC / "gemv_kernel.cpp")
EXTENSION = CppExtension("gemv_cpu", SOURCES, "the C++ small-batch linear CPU kernel")
# Rows of x (product of the leading dims) the kernel takes; more go to torch's GEMM. Its time grows
# linearly with the rows past ~8 (it becomes compute bound), so MKL catches up: on a 2-core AMD EPYC
# (Zen 3) the kernel was 1.15-1.9x faster at 16 rows ([768,256], [256,680], [4096,4096], weights hot
# in the caches or cold), about even at 24 rows hot, and slower at 32-64 rows hot.
MAX_ROWS = 16
PREFETCH_BYTES = 4096  # software prefetch distance per thread, bytes of weights ahead of its reads (0: none)
MIN_PARALLEL_BYTES = 192 << 10  # smaller weights are read by the calling thread alone (faster below ~200 KiB)
# Weights of this many bytes or more are prefetched into L2, smaller ones into L1: a matrix too large for
# the last-level cache comes from memory, and L1 prefetches held back that stream (2-core AMD EPYC, Zen 4,
# 32 MiB L3: 1.01-1.11x faster in the fastest of 40 rounds, 1.06-1.49x in the median, at 16-108 MiB from
# memory; 2-20% slower at <= 16 MiB held in the caches; csrc/gemv_kernel.cpp).
FAR_WEIGHT_BYTES = 16 << 20


def available(device: torch.device | str = "cpu") -> bool:
    """Whether the C++ kernel runs on `device` (CPU only; builds it on first call) with its AVX2+FMA
    path: the scalar path, kept for other CPUs and for tests, is slower than `F.linear`."""
    return EXTENSION.runs_on(device) and EXTENSION.get().supports_avx2()


def small_batch_linear_cpp(x: Tensor, weight: Tensor, bias: Tensor | None = None, avx2: bool = True) -> Tensor:
    """Same arguments and result as `small_batch_linear_reference`: x [..., K], weight [N, K],
    bias [N] or None -> [..., N]. Inputs the kernel does not take (not fp32, not on the CPU, more
    than MAX_ROWS rows, a weight or bias that is not contiguous, an autograd graph to record) go to
    the reference."""
    ext = EXTENSION.get()
    if ext is not None:  # checks the inputs itself (cheaper than here): None when it does not take them
        y = ext.small_batch_linear(x, weight, bias, MAX_ROWS, avx2, PREFETCH_BYTES, MIN_PARALLEL_BYTES, 0,
                                   FAR_WEIGHT_BYTES)
        if y is not None:
            return y
    return small_batch_linear_reference(x, weight, bias)
