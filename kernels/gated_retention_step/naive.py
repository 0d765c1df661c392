"""One YOCO gated-retention decoding step between the projections and the gate, pure PyTorch: the
reference of the fused kernel, the ops `GatedRetention.forward` ran one by one.

Per batch row b and head h, with q, k, v the three [Dh] slices of qkv and x the head's decay logit:

    q = rotary(q),  k = rotary(k) * Dh^-0.5        (`rotary_heads_reference`, as the layer splits)
    g = logsigmoid(x) / gate_normalizer            (`F.logsigmoid` in fp32; YOCO: normalizer 16)
    S' = exp(g) S + k^T v,  o = q S'               (`recurrent_gated_retention`: decay, add, then read)
    o = rms_norm(o) * norm_weight                  (`F.rms_norm` over Dh)

and o is returned with its heads concatenated (h = 0..H-1), beside S'.
tests/test_gated_retention_step.py checks that this function equals the layer's op-by-op path bit for bit.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..gated_retention.recurrent import recurrent_gated_retention
from ..rotary_heads.naive import rotary_heads_reference


def gated_retention_step_reference(
    qkv: Tensor, decay_logits: Tensor, cos: Tensor, sin: Tensor, state: Tensor | None,
    norm_weight: Tensor | None, eps: float, gate_normalizer: float,
) -> tuple[Tensor, Tensor]:
    """qkv [B, T, 3D] (D = H * Dh), decay_logits [B, T, H], cos, sin [T, Dh], state [B, H, Dh, Dh] or
    None (zeros), norm_weight [Dh] -> (o [B, T, D], S' [B, H, Dh, Dh] fp32). Any T (T == 1: decoding)."""
    b, t, _ = qkv.shape
    h, dh = decay_logits.shape[-1], cos.shape[-1]
    q, k, v = rotary_heads_reference(qkv, cos, sin, h, h)  # each [B, H, T, Dh]
    log_decay = F.logsigmoid(decay_logits.float()).transpose(1, 2) / gate_normalizer  # [B, H, T]
    o, state = recurrent_gated_retention(q, k * dh**-0.5, v, log_decay, state)  # [B, H, T, Dh], [B, H, Dh, Dh]
    o = F.rms_norm(o, (dh,), norm_weight, eps)
    return o.transpose(1, 2).reshape(b, t, h * dh), state
