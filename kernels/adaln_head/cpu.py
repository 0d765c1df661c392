"""The diffusion head's whole sampling loop of one latent fused in C++ for CPU (csrc/adaln_head_cpu.cpp):
S steps of the AdaLN MLP, the guidance mix and the solver's affine steps in one call, instead of ~25 small
torch ops and a diffusers `step` per step from Python.

The linears stream through the small-batch GEMV kernel of `kernels/gemv` (csrc/gemv_kernel.cpp is compiled
into this extension too), with its settings. Built on first use (`latentlm.kernels.cpp_build`); AVX2+FMA
where the CPU has it, else scalar loops (still one call per latent). The extension checks its inputs
itself and answers None to those it does not take; they go to the reference.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cpp_build import CppExtension
from ..gemv import cpu as gemv
from .naive import HeadWeights, adaln_head_sample_reference

SOURCES = (Path(__file__).resolve().parent / "csrc" / "adaln_head_cpu.cpp", gemv.CSRC / "gemv_kernel.cpp")
EXTENSION = CppExtension("adaln_head_cpu", SOURCES, "the C++ diffusion-head sampling CPU kernel")
# MLP rows (2 x latents guided) per call; more go to the reference. One latent of 20 steps, W = 256, L = 3,
# one thread (Xeon, AVX-512 CPU, AVX2 path): fused vs the torch path 8.2 vs 16 ms at 16 rows, 17 vs 22 ms at
# 32, 40 vs 36 ms at 64 (the GEMVs, compute bound by then, lose to torch's GEMM).
MAX_ROWS = 32
# The kernel runs on the calling thread: its GEMVs are a few microseconds each, 160 a latent, and handing
# each to a second thread costs more than it saves (far more beside a busy process).
NEVER_PARALLEL = 1 << 62


def available(device: torch.device | str = "cpu") -> bool:
    """Whether the C++ kernel runs on `device` (CPU only; builds it on first call)."""
    return EXTENSION.runs_on(device)


def adaln_head_sample_cpp(x: Tensor, mods: Tensor, coefs: Tensor, weights: HeadWeights, cfg_scale: float,
                          guided: bool, avx2: bool = True) -> Tensor:
    """Same arguments and result as `adaln_head_sample_reference`. Inputs the kernel does not take (not fp32
    contiguous CPU tensors, shapes that do not fit, more than MAX_ROWS MLP rows, an autograd graph to
    record) go to the reference; avx2=False forces the scalar loops."""
    ext = EXTENSION.get()
    if ext is not None:  # checks the inputs itself: None when it does not take them
        y = ext.adaln_head_sample(x, mods, coefs, *weights[:8], list(weights.eps), cfg_scale, guided, MAX_ROWS, avx2,
                                  gemv.PREFETCH_BYTES, NEVER_PARALLEL, gemv.FAR_WEIGHT_BYTES)
        if y is not None:
            return y
    return adaln_head_sample_reference(x, mods, coefs, weights, cfg_scale, guided)
