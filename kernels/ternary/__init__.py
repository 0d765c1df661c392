"""Ternary (BitNet b1.58, W1.58 A8) ops. `reference.py` is the pure-PyTorch oracle and CPU
fallback: absmean weight and absmax int8 activation quantisers, the exact int32 matmul, and the
2-bit I2_S-like packed weight format. `cpu.py` is the fused C++ CPU kernel over the packed format
(AVX-512 VNNI / AVX2 / scalar, picked at run time). `pack` and `matmul` (ops.py) are what callers
use: `matmul` dispatches op "ternary_matmul" to the fastest implementation, bit-identical to the
reference.
"""
from . import cpu
from .cpu import cpu_isa
from .ops import matmul, pack
from .triton_gpu import ternary_matmul_triton  # registers the GPU path of "ternary_matmul"
from .reference import (
    BLOCK_SIZE,
    CODE_OF,
    PackedTernary,
    absmean_ternary,
    pack_ternary,
    quantize_activations,
    ternary_matmul_int32,
    ternary_matmul_reference,
    unpack_ternary,
)

__all__ = [
    "BLOCK_SIZE",
    "CODE_OF",
    "PackedTernary",
    "absmean_ternary",
    "cpu",
    "cpu_isa",
    "matmul",
    "pack",
    "pack_ternary",
    "quantize_activations",
    "ternary_matmul_int32",
    "ternary_matmul_reference",
    "ternary_matmul_triton",
    "unpack_ternary",
]
