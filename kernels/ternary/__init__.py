"""Ternary (BitNet b1.58, W1.58 A8) ops. `reference.py` is the pure-PyTorch oracle and CPU
fallback: absmean weight and absmax int8 activation quantisers, the exact int32 matmul, and the
2-bit I2_S-like packed weight format. The fast packed matmuls (C++ CPU, Triton GPU) go beside it.
"""
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
    "pack_ternary",
    "quantize_activations",
    "ternary_matmul_int32",
    "ternary_matmul_reference",
    "unpack_ternary",
]
