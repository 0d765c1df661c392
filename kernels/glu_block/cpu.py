"""The feed-forward half of a block fused in C++ for CPU (csrc/glu_block_cpu.cpp), for decoding a few tokens.

One call does RMSNorm, the gate and up projections, the activation and product, the down projection
and the residual. The three weights stream through the small-batch GEMV kernel of `kernels/gemv`
(csrc/gemv_kernel.cpp is compiled into this extension too), with its settings. Built on first use
(`latentlm.kernels.cpp_build`); offered where the CPU has AVX2+FMA, like that kernel (its scalar path is
slower than torch's).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cpp_build import CppExtension
from ..gemv import cpu as gemv
from .naive import ACTIVATIONS, glu_block_reference

SOURCES = (Path(__file__).resolve().parent / "csrc" / "glu_block_cpu.cpp", gemv.CSRC / "gemv_kernel.cpp")
EXTENSION = CppExtension("glu_block_cpu", SOURCES, "the C++ feed-forward block CPU kernel")
MAX_ROWS = gemv.MAX_ROWS  # tokens per call; more go to the reference (torch's GEMM wins there)


def available(device: torch.device | str = "cpu") -> bool:
    """Whether the C++ kernel runs on `device` (CPU only; builds it on first call) with its AVX2+FMA path."""
    return EXTENSION.runs_on(device) and EXTENSION.get().supports_avx2()


def glu_block_cpp(x: Tensor, norm_weight: Tensor, eps: float, w_gate: Tensor, w_up: Tensor, w_down: Tensor,
                  activation: str = "silu", avx2: bool = True) -> Tensor:
    """Same arguments and result as `glu_block_reference`. Inputs the kernel does not take (not fp32
    contiguous CPU tensors, more than MAX_ROWS tokens, an autograd graph to record) go to the reference;
    avx2=False forces the scalar loops."""
    ext = EXTENSION.get()
    if ext is not None:  # checks the inputs itself: None when it does not take them
        act = ACTIVATIONS.index(activation) if activation in ACTIVATIONS else -1
        if act >= 0:
            y = ext.glu_block(x, norm_weight, eps, w_gate, w_up, w_down, act, MAX_ROWS, avx2,
                              gemv.PREFETCH_BYTES, gemv.MIN_PARALLEL_BYTES, gemv.FAR_WEIGHT_BYTES)
            if y is not None:
                return y
    return glu_block_reference(x, norm_weight, eps, w_gate, w_up, w_down, activation)
