"""RMSNorm fused in C++ for CPU (csrc/rms_norm_cpu.cpp): one pass per row, fp32.

torch's CPU `rms_norm` is a composition of five or six ops, ~20 us on a single row of 256; decoding
one token through a 12-layer backbone normalises ~40 such rows, so this matters at batch 1.
Built on first use (`latentlm.kernels.cpp_build`); AVX2+FMA where the CPU has it, else scalar loops.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cpp_build import CppExtension
from .naive import rms_norm_reference

SOURCES = (Path(__file__).resolve().parent / "csrc" / "rms_norm_cpu.cpp",)
EXTENSION = CppExtension("rms_norm_cpu", SOURCES, "the C++ RMSNorm CPU kernel")
_NO_WEIGHT = torch.empty(0)


def available(device: torch.device | str = "cpu") -> bool:
    """Whether the C++ kernel runs on `device` (CPU only; builds it on first call)."""
    return EXTENSION.runs_on(device)


def _fits(x: Tensor, weight: Tensor | None) -> bool:
    """Cheap checks only: at batch 1 this runs ~40 times per decoded token."""
    if torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)):
        return False  # training: the reference records the graph
    return (x.dtype == torch.float32 and x.is_cpu and x.is_contiguous() and x.numel() > 0
            and (weight is None or (weight.dtype == torch.float32 and weight.is_contiguous()
                                    and weight.shape[0] == x.shape[-1])))


def rms_norm_cpp(x: Tensor, weight: Tensor | None, eps: float, avx2: bool = True) -> Tensor:
    """Same arguments and result as `rms_norm_reference`; what the kernel does not take (not fp32,
    not contiguous, an autograd graph to record, empty) goes to the reference."""
    ext = EXTENSION.get()
    if ext is None or not _fits(x, weight):
        return rms_norm_reference(x, weight, eps)
    return ext.rms_norm(x, _NO_WEIGHT if weight is None else weight, eps, avx2)  # [..., D]
