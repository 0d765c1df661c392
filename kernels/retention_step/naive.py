"""One RetNet decoding step between the qkv projection and the gate, pure PyTorch: the reference of
the fused kernel, the ops `MultiScaleRetention.forward` ran one by one.

Per head h (gamma_h = exp(log_decay_h)), with q, k, v the three [Dh] slices of qkv:

    q = rotary(q),  k = rotary(k) * Dh^-0.5      (x cos + swap_halves(x) sin, tables of `rotary_angles`)
    S' = gamma_h S + k^T v                         (`recurrent_retention`; S: [Dh, Dh] fp32)
    o = rms_norm(q S') * norm_weight               (`F.rms_norm` over Dh)

and o is returned with its heads concatenated (h = 0..H-1), beside S'. The split and rotary are
`rotary_heads_reference`, as in the layer's op-by-op path; tests/test_retention_step.py checks that
this function equals that path bit for bit.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..retention import recurrent_retention
from ..rotary_heads.naive import rotary_heads_reference


def retention_step_reference(
    qkv: Tensor, cos: Tensor, sin: Tensor, log_decay: Tensor, state: Tensor | None,
    norm_weight: Tensor | None, eps: float,
) -> tuple[Tensor, Tensor]:
    """qkv [B, T, 3D] (D = H * Dh), cos, sin [T, Dh], log_decay [H], state [B, H, Dh, Dh] or None
    (zeros), norm_weight [Dh] -> (o [B, T, D], S' [B, H, Dh, Dh] fp32). Any T (T == 1: decoding)."""
    b, t, _ = qkv.shape
    h, dh = log_decay.shape[0], cos.shape[-1]
    q, k, v = rotary_heads_reference(qkv, cos, sin, h, h)  # each [B, H, T, Dh]
    o, state = recurrent_retention(q, k * dh**-0.5, v, log_decay, state)  # [B, H, T, Dh], [B, H, Dh, Dh]
    o = F.rms_norm(o, (dh,), norm_weight, eps)
    return o.transpose(1, 2).reshape(b, t, h * dh), state
