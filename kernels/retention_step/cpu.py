"""One RetNet decoding step fused in C++ for CPU (csrc/retention_step_cpu.cpp): rotary q and k, the
state update S' = gamma S + k^T v, o = q S' and its RMSNorm, per head, in one call, fp32.

At batch 1 the op-by-op path is ~15 small torch ops per layer (view, permute, rotary, scale, decay,
addcmul, matmul, norm, transpose...), each a few microseconds of overhead on tiny tensors; here it is
one pass over each head's state. Built on first use (`latentlm.kernels.cpp_build`); AVX2+FMA where the
CPU has it, else scalar loops. The extension checks its inputs itself and answers None to those it
does not take (cheaper than checking them in Python, which costs microseconds a call).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cpp_build import CppExtension
from .naive import retention_step_reference

SOURCES = (Path(__file__).resolve().parent / "csrc" / "retention_step_cpu.cpp",)
EXTENSION = CppExtension("retention_step_cpu", SOURCES, "the C++ retention step CPU kernels")  # gated too
# Heads are spread over the threads only when each thread gets at least this many state floats
# (64 KiB read and 64 KiB written); below, the calling thread does it all (batch 1: 4 heads of 64 x 64).
MIN_PARALLEL_FLOATS = 1 << 14


def available(device: torch.device | str = "cpu") -> bool:
    """Whether the C++ kernel runs on `device` (CPU only; builds it on first call)."""
    return EXTENSION.runs_on(device)


def retention_step_cpp(
    qkv: Tensor, cos: Tensor, sin: Tensor, log_decay: Tensor, state: Tensor | None,
    norm_weight: Tensor | None, eps: float, avx2: bool = True,
) -> tuple[Tensor, Tensor]:
    """Same arguments and result as `retention_step_reference`. Inputs the kernel does not take (not
    fp32, not on the CPU, not contiguous, T != 1, an odd Dh, an autograd graph to record) go to the
    reference; state None is zeros. avx2=False forces the scalar loops."""
    ext = EXTENSION.get()
    if ext is not None:  # checks the inputs itself: None when it does not take them
        out = ext.retention_step(qkv, cos, sin, log_decay, state, norm_weight, eps, avx2, MIN_PARALLEL_FLOATS)
        if out is not None:
            return out
    return retention_step_reference(qkv, cos, sin, log_decay, state, norm_weight, eps)
