"""The start of an attention layer fused in C++ for CPU (csrc/rotary_heads_cpu.cpp): the fused
projection's output split into heads, q and k rotated, v copied, in one call, fp32.

At batch 1 the op-by-op path is ~8 small torch ops per layer (view, transpose, contiguous, two
multiplies, roll, add, split), each a few microseconds of overhead on a few hundred floats; here it is
one pass over p. Built on first use (`latentlm.kernels.cpp_build`); plain loops the compiler
vectorises. The extension checks its inputs itself and answers None to those it does not take
(cheaper than checking them in Python, which costs microseconds a call).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cpp_build import CppExtension
from .naive import rotary_heads_reference

SOURCES = (Path(__file__).resolve().parent / "csrc" / "rotary_heads_cpu.cpp",)
EXTENSION = CppExtension("rotary_heads_cpu", SOURCES, "the C++ rotary heads CPU kernel")
# Tokens (b, t) are spread over the threads only when each thread gets at least this many floats of p
# (128 KiB read and written); below, the calling thread does it all (decoding: a few hundred floats).
MIN_PARALLEL_FLOATS = 1 << 15


def available(device: torch.device | str = "cpu") -> bool:
    """Whether the C++ kernel runs on `device` (CPU only; builds it on first call)."""
    return EXTENSION.runs_on(device)


def rotary_heads_cpp(p: Tensor, cos: Tensor, sin: Tensor, n_q: int, n_kv: int) -> tuple[Tensor, Tensor, Tensor]:
    """Same arguments and result as `rotary_heads_reference`, bit for bit. Inputs the kernel does not
    take (not fp32, not on the CPU, not contiguous, tables that are not [T, Dh], an odd Dh, shapes that
    do not match, an autograd graph to record) go to the reference."""
    ext = EXTENSION.get()
    if ext is not None:  # checks the inputs itself: None when it does not take them
        out = ext.rotary_heads(p, cos, sin, n_q, n_kv, MIN_PARALLEL_FLOATS)
        if out is not None:
            return out
    return rotary_heads_reference(p, cos, sin, n_q, n_kv)
