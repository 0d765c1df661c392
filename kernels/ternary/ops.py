"""The ternary ops as callers use them: `pack` a float weight, `matmul` float activations by it.

`matmul` quantises the activations per token (reference `quantize_activations`) and runs op
"ternary_matmul" through `kernels.dispatch`: the C++ kernel ("cpp", priority 10) on CPU when it
builds, else the reference ("reference", priority 0: unpack + exact int32 matmul). Both give the
same bits; `LATENTLM_KERNELS=reference` forces the reference.

Op "ternary_matmul": (x_q int8 [M, K], x_scale fp32 [M, 1], packed PackedTernary [N, K]) -> fp32 [M, N].
"""
from __future__ import annotations

from torch import Tensor

from .. import dispatch
from . import cpu
from .reference import (
    BLOCK_SIZE,
    PackedTernary,
    absmean_ternary,
    pack_ternary,
    quantize_activations,
    ternary_matmul_reference,
    unpack_ternary,
)

OP = "ternary_matmul"


def pack(w: Tensor, block_size: int = BLOCK_SIZE) -> PackedTernary:
    """Absmean-quantise a float weight [N, K] to ternary and pack it (2 bits per weight, with its scale)."""
    w_q, scale = absmean_ternary(w)
    return pack_ternary(w_q, scale, block_size)


def _reference(x_q: Tensor, x_scale: Tensor, packed: PackedTernary) -> Tensor:
    return ternary_matmul_reference(x_q, x_scale, unpack_ternary(packed), packed.scale)


dispatch.register(OP, "reference", _reference)
dispatch.register(OP, "cpp", cpu.ternary_matmul_cpp, available=cpu.available, priority=10)


def matmul(x: Tensor, packed: PackedTernary) -> Tensor:
    """y = Quant(x) @ W^T dequantised: x float [..., K] -> fp32 [..., N], W the packed ternary weight.

    Equal (torch.equal) to `ternary_matmul_reference(*quantize_activations(x), unpack_ternary(packed),
    packed.scale)` whichever implementation runs. No gradient flows.
    """
    k = packed.shape[1]
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features, the packed weight {k}")
    x_q, x_scale = quantize_activations(x)
    impl = dispatch.choose(OP, x.device)
    y = impl.fn(x_q.reshape(-1, k), x_scale.reshape(-1, 1), packed)
    return y.reshape(*x.shape[:-1], packed.shape[0])


__all__ = ["OP", "matmul", "pack"]
