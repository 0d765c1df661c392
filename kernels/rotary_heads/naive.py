"""The start of an attention layer, pure PyTorch: the reference of the fused kernel, the ops the
attention layers ran one by one between their fused projection and attention.

p [B, T, (Hq + 2 Hkv) Dh] holds per token Hq query heads, then Hkv key heads, then Hkv value heads:

    heads = p.view(B, T, Hq + 2 Hkv, Dh).transpose(1, 2)          # [B, Hq + 2 Hkv, T, Dh]
    q, k = split(rotary(heads[:, :Hq + Hkv]), [Hq, Hkv]);  v = heads[:, Hq + Hkv:]

rotary(x) = x cos + swap_halves(x) sin with the tables of `rotary_angles` (`apply_rotary` below, which
`latentlm.backbones.layers` re-exports): q and k turn in one call, as `Attention.forward` did. The outputs are made contiguous (copies where the
layers had views of p or of the rotated q and k; same values), so that every implementation returns
the same layout and a KV cache built from k and v does not keep p alive.
"""
from __future__ import annotations

from torch import Tensor


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the pairs (x[..., i], x[..., i + D/2]) of x [..., T, D] by the tables cos, sin [T, D] of
    `rotary_angles` ((cos a, cos a) and (-sin a, sin a)): (x1 cos - x2 sin, x1 sin + x2 cos), computed
    as x * cos + swap_halves(x) * sin: three ops instead of eight, with the same rounding (the sign sits
    in the table). Leading dims broadcast, so q and k can turn in one call ([2, B, H, T, D])."""
    xf = x.float().contiguous()  # strided q / k views would make the output, and the matmuls after it, strided
    out = xf * cos + xf.roll(x.shape[-1] // 2, dims=-1) * sin
    return out.to(x.dtype)


def rotary_heads_reference(p: Tensor, cos: Tensor, sin: Tensor, n_q: int, n_kv: int) -> tuple[Tensor, Tensor, Tensor]:
    """p [B, T, (n_q + 2 n_kv) Dh], cos, sin [T, Dh] (Dh = cos.shape[-1]) -> q [B, n_q, T, Dh],
    k [B, n_kv, T, Dh] (both rotated), v [B, n_kv, T, Dh], contiguous; a count of 0 gives 0 heads."""
    b, t, width = p.shape
    dh = cos.shape[-1]
    if width != (n_q + 2 * n_kv) * dh:
        raise ValueError(f"p has {width} features per token, not (n_q + 2 n_kv) Dh = ({n_q} + 2 * {n_kv}) * {dh}")
    heads = p.reshape(b, t, n_q + 2 * n_kv, dh).transpose(1, 2)  # [B, Hq + 2 Hkv, T, Dh]
    q, k = apply_rotary(heads[:, :n_q + n_kv], cos, sin).split([n_q, n_kv], dim=1)
    return q.contiguous(), k.contiguous(), heads[:, n_q + n_kv:].contiguous()
