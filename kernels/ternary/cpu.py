"""The fused C++ CPU ternary matmul (csrc/ternary_cpu.cpp): built on first use, cached on disk.

`extension()` compiles the kernel with `torch.utils.cpp_extension.load` (ninja) the first time it
is needed, into `<cache>/kernels/ternary_cpu-<digest>`, where `<cache>` is `$LATENTLM_CACHE` or
`~/.cache/latentlm` and the digest covers the sources, the flags, torch, Python and the machine;
a later process finds the library built and only loads it. If the build fails (no compiler, no
ninja, a read-only cache...) the reference is used instead, after one warning.

The library holds three paths, chosen at run time from the CPU's features: "avx512_vnni"
(vpdpbusd), "avx2" (vpmaddubsw) and "scalar". `cpu_isa()` names the one in use;
`LATENTLM_TERNARY_ISA=avx2` (or the `isa=` argument) forces one, for tests and comparisons.
Every path returns the reference's result bit for bit: the int32 accumulation is exact and the
dequantisation is the same two float32 operations, in the same order.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import re
import sys
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .reference import PackedTernary

ISAS = ("scalar", "avx2", "avx512_vnni")  # the kernel's codes are the indices
ISA_ENV = "LATENTLM_TERNARY_ISA"
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = (CSRC / "ternary_cpu.cpp",)
LDFLAGS = ("-fopenmp",)


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "x64")


def cflags() -> list[str]:
    # x86-64-v2 is only the baseline; the AVX2 / AVX-512 code has its own target attributes.
    return ["-O3", "-fopenmp"] + (["-march=x86-64-v2"] if _is_x86() else [])


@functools.cache
def digest() -> str:
    """Hash of what the built library depends on: sources and headers, flags, torch, Python, machine."""
    h = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        if path.suffix in (".cpp", ".h", ".hpp"):
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(repr((cflags(), LDFLAGS, torch.__version__, sys.version_info[:2], platform.machine())).encode())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    root = os.environ.get("LATENTLM_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "latentlm"


def module_name() -> str:
    return f"latentlm_ternary_cpu_{digest()}"


def build_directory() -> Path:
    return cache_root() / "kernels" / f"ternary_cpu-{digest()}"


def library_path() -> Path:
    """Where the built library lies once `extension()` has succeeded."""
    return build_directory() / f"{module_name()}.so"


def _build():
    """Compile (or, when up to date, just load) the extension; raises on any failure."""
    # torch logs notes (CUDA_HOME on import, compiler checks) and warns; a failure gets our one line instead
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.utils.cpp_extension import load

            directory = build_directory()
            directory.mkdir(parents=True, exist_ok=True)
            return load(name=module_name(), sources=[str(s) for s in SOURCES], extra_cflags=cflags(),
                        extra_ldflags=list(LDFLAGS), build_directory=str(directory), verbose=False)
    finally:
        logger.setLevel(level)


def _reason(e: Exception) -> str:
    """One line saying why the build failed: the compiler's first error if there is one."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"error:|not found|no such file|permission denied", line, re.I)]
    return f"{type(e).__name__}: {(errors or lines or [''])[0][:200]}"


_lock = threading.Lock()
_ext = None
_tried = False


def extension():
    """The compiled module, built on first call; None (after one warning) when it cannot be built."""
    global _ext, _tried
    if not _tried:
        with _lock:
            if not _tried:
                try:
                    _ext = _build()
                except Exception as e:  # noqa: BLE001 - any failure means: use the reference
                    _ext = None
                    warnings.warn(f"latentlm: the C++ ternary CPU kernel could not be built ({_reason(e)}) in "
                                  f"{build_directory()}; using the PyTorch reference instead", RuntimeWarning,
                                  stacklevel=2)
                _tried = True
    return _ext


def available(device: torch.device | str = "cpu") -> bool:
    """Whether the C++ kernel runs on `device` (CPU only; builds it on first call)."""
    return torch.device(device).type == "cpu" and extension() is not None


def supported_isas() -> list[str]:
    """The ISA paths this CPU can run (empty when the extension is unavailable)."""
    ext = extension()
    return [] if ext is None else [name for code, name in enumerate(ISAS) if ext.supports(code)]


def _isa_code(isa: str | None) -> int:
    """-1 (the best path) unless `isa` or $LATENTLM_TERNARY_ISA names one ("auto" = best)."""
    if isa is None:
        isa = os.environ.get(ISA_ENV, "")
    isa = isa.strip().lower()
    if isa in ("", "auto", "best"):
        return -1
    if isa not in ISAS:
        raise ValueError(f"unknown ternary ISA path {isa!r}; choose from {ISAS} or 'auto'")
    code = ISAS.index(isa)
    ext = extension()
    if ext is not None and not ext.supports(code):
        raise ValueError(f"this CPU cannot run the {isa!r} ternary path; it supports {supported_isas()}")
    return code


def cpu_isa(isa: str | None = None) -> str:
    """The path the C++ kernel takes: "avx512_vnni", "avx2" or "scalar" (honouring a forced
    `isa` / $LATENTLM_TERNARY_ISA), or "reference" when the extension is unavailable."""
    ext = extension()
    if ext is None:
        return "reference"
    code = _isa_code(isa)
    return ISAS[ext.best_isa() if code < 0 else code]


def _require():
    ext = extension()
    if ext is None:
        raise RuntimeError("the C++ ternary CPU kernel is unavailable (see the warning); use the reference")
    return ext


def _check(x_q: Tensor, packed: PackedTernary) -> None:
    if x_q.dim() != 2 or x_q.shape[1] != packed.shape[1]:
        raise ValueError(f"need x_q [M, {packed.shape[1]}], got {tuple(x_q.shape)}")


def matmul_int32(x_q: Tensor, packed: PackedTernary, isa: str | None = None) -> Tensor:
    """Exact acc = x_q @ W^T: x_q int8 [M, K], W packed [N, K] -> int32 [M, N]."""
    _check(x_q, packed)
    return _require().matmul_int32(x_q.contiguous(), packed.data.contiguous(), packed.shape[1],
                                   packed.block_size, _isa_code(isa))


def ternary_matmul_cpp(x_q: Tensor, x_scale: Tensor, packed: PackedTernary, isa: str | None = None) -> Tensor:
    """y = (x_q @ W^T) / x_scale * s_w, fp32 [M, N], bit-identical to `ternary_matmul_reference`.

    x_q int8 [M, K] and x_scale fp32 [M, 1] from `quantize_activations`; `packed` from `pack_ternary`.
    (A packed weight holding the invalid code 3 is not checked here: it would count as +2.)
    """
    _check(x_q, packed)
    return _require().matmul(x_q.contiguous(), x_scale.reshape(-1).float().contiguous(), packed.data.contiguous(),
                             packed.scale.float(), packed.shape[1], packed.block_size, _isa_code(isa))


__all__ = ["ISAS", "ISA_ENV", "available", "build_directory", "cpu_isa", "extension", "library_path",
           "matmul_int32", "supported_isas", "ternary_matmul_cpp"]
