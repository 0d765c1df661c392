"""Shared plumbing of latentlm's Triton kernels: lazy import, lazy jit, the availability rule.

Importing a kernel module never imports triton: the kernels are plain functions (with
`from __future__ import annotations`, so `tl.constexpr` annotations stay strings) and are jitted on
first use, when `jitted` imports triton and binds `triton` and `tl` in the kernel's module globals.

Why lazy: Triton's interpreter (TRITON_INTERPRET=1, kernels run on CPU tensors with numpy) must be
switched on before triton is first imported, since triton's own standard library (tl.sum, tl.cumsum,
...) is jitted at import in whichever mode is on then. A package import must not fix that mode.

Availability (dispatch): CUDA with triton importable, or the interpreter switched on and usable.
"""
from __future__ import annotations

import importlib.util
import os

import torch


def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """TRITON_INTERPRET=1 is set."""
    return os.environ.get("TRITON_INTERPRET", "").strip() == "1"


def interpreter_ready() -> bool:
    """The interpreter can run kernels in this process: TRITON_INTERPRET=1 is set, and triton was (or
    now is) imported with it set, so that its standard library is interpreted too."""
    if not interpreting() or not triton_importable():
        return False
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.standard.sum, InterpretedFunction)


def triton_available(device: torch.device | str) -> bool:
    """The availability rule of every Triton kernel of latentlm (registered with priority 20)."""
    if interpreting():
        return interpreter_ready()
    return torch.device(device).type == "cuda" and triton_importable()


_JITTED: dict[str, object] = {}


def jitted(fn):
    """`triton.jit(fn)`, made once per process; binds `triton` and `tl` in fn's module first."""
    key = f"{fn.__module__}.{fn.__qualname__}"
    if key not in _JITTED:
        import triton
        import triton.language as tl

        fn.__globals__["triton"] = triton
        fn.__globals__["tl"] = tl
        _JITTED[key] = triton.jit(fn)
    return _JITTED[key]


def pow2(n: int, lo: int = 16) -> int:
    """The smallest power of two >= max(n, lo)."""
    return max(lo, 1 << max(0, n - 1).bit_length())
