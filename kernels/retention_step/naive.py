"""One RetNet decoding step between the qkv projection and the gate, pure PyTorch: the reference of
the fused kernel, the ops `MultiScaleRetention.forward` ran one by one.

Per head h (gamma_h = exp(log_decay_h)), with q, k, v the three [Dh] slices of qkv:

    q = rotary(q),  k = rotary(k) * Dh^-0.5      (x cos + swap_halves(x) sin, tables of `rotary_angles`)
    S' = gamma_h S + k^T v                         (`recurrent_retention`; S: [Dh, Dh] fp32)
    o = rms_norm(q S') * norm_weight               (`F.rms_norm` over Dh)

and o is returned with its heads concatenated (h = 0..H-1), beside S'. `_rotary` is the same three
ops as `latentlm.backbones.layers.apply_rotary` (this package imports nothing else of latentlm);
tests/test_retention_step.py checks that this function equals the layer's op-by-op path bit for bit.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..retention import recurrent_retention


def _rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """`apply_rotary`'s ops: pairs (i, i + Dh/2) of x [..., T, Dh] turned by the tables cos, sin [T, Dh]."""
    xf = x.float().contiguous()
    return (xf * cos + xf.roll(x.shape[-1] // 2, dims=-1) * sin).to(x.dtype)


def retention_step_reference(
    qkv: Tensor, cos: Tensor, sin: Tensor, log_decay: Tensor, state: Tensor | None,
    norm_weight: Tensor | None, eps: float,
) -> tuple[Tensor, Tensor]:
    """qkv [B, T, 3D] (D = H * Dh), cos, sin [T, Dh], log_decay [H], state [B, H, Dh, Dh] or None
    (zeros), norm_weight [Dh] -> (o [B, T, D], S' [B, H, Dh, Dh] fp32). Any T (T == 1: decoding)."""
    b, t, _ = qkv.shape
    h, dh = log_decay.shape[0], cos.shape[-1]
    qkv = qkv.reshape(b, t, 3, h, dh).permute(2, 0, 3, 1, 4)  # [3, B, H, T, Dh]
    q, k = _rotary(qkv[:2], cos, sin)  # each [B, H, T, Dh]
    o, state = recurrent_retention(q, k * dh**-0.5, qkv[2], log_decay, state)  # [B, H, T, Dh], [B, H, Dh, Dh]
    o = F.rms_norm(o, (dh,), norm_weight, eps)
    return o.transpose(1, 2).reshape(b, t, h * dh), state
