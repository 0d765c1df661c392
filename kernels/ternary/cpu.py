"""The fused C++ CPU ternary matmul (csrc/ternary_cpu.cpp): built on first use, cached on disk.

`extension()` compiles the kernel the first time it is needed, into
`<cache>/kernels/ternary_cpu-<digest>` (see `latentlm.kernels.cpp_build`); a later process finds the
library built and only loads it. If the build fails (no compiler, no ninja, a read-only cache...) the
reference is used instead, after one warning.

The library holds three paths, chosen at run time from the CPU's features: "avx512_vnni"
(vpdpbusd), "avx2" (vpmaddubsw) and "scalar". `cpu_isa()` names the one in use;
`LATENTLM_TERNARY_ISA=avx2` (or the `isa=` argument) forces one, for tests and comparisons.
Every path returns the reference's result bit for bit: the int32 accumulation is exact and the
dequantisation is the same two float32 operations, in the same order.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cpp_build import CppExtension
from ..isa_paths import IsaPaths
from .reference import PackedTernary

ISAS = ("scalar", "avx2", "avx512_vnni")  # the kernel's codes are the indices
ISA_ENV = "LATENTLM_TERNARY_ISA"
SOURCES = (Path(__file__).resolve().parent / "csrc" / "ternary_cpu.cpp",)
EXTENSION = CppExtension("ternary_cpu", SOURCES, "the C++ ternary CPU kernel")
PATHS = IsaPaths(EXTENSION, ISAS, ISA_ENV, "ternary")


def build_directory() -> Path:
    return EXTENSION.build_directory()


def library_path() -> Path:
    """Where the built library lies once `extension()` has succeeded."""
    return EXTENSION.library_path()


def extension():
    """The compiled module, built on first call; None (after one warning) when it cannot be built."""
    return EXTENSION.get()


def available(device: torch.device | str = "cpu") -> bool:
    """Whether the C++ kernel runs on `device` (CPU only; builds it on first call)."""
    return EXTENSION.runs_on(device)


def supported_isas() -> list[str]:
    """The ISA paths this CPU can run (empty when the extension is unavailable)."""
    return PATHS.supported()


def _isa_code(isa: str | None) -> int:
    """-1 (the best path) unless `isa` or $LATENTLM_TERNARY_ISA names one ("auto" = best)."""
    return PATHS.code(isa)


def cpu_isa(isa: str | None = None) -> str:
    """The path the C++ kernel takes: "avx512_vnni", "avx2" or "scalar" (honouring a forced
    `isa` / $LATENTLM_TERNARY_ISA), or "reference" when the extension is unavailable."""
    return PATHS.in_use(isa)


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
