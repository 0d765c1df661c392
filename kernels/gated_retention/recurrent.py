"""Gated retention, recurrent form: one step per token (decoding).

    S_n = exp(g_n) S_{n-1} + k_n^T v_n        S: [B, H, Dk, Dv], fp32
    o_n = q_n S_n

Shapes as in `naive.py`. `state` is S before the first token (None: zeros); the returned state is
S after the last token. Same maths as `parallel_gated_retention` with a prior state.
"""
from __future__ import annotations

import torch
from torch import Tensor


def recurrent_gated_retention(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Returns o [B, H, T, Dv] (dtype of v) and the final state [B, H, Dk, Dv] (fp32)."""
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    s = q.new_zeros(b, h, dk, dv, dtype=torch.float32) if state is None else state.float()
    qf, kf, vf = q.float(), k.float(), v.float()
    decay = log_decay.float().exp()  # [B, H, T]
    if t == 1:  # decoding: the same two steps in as few ops as can be (each op costs ~3 us at batch 1)
        s = torch.addcmul(decay[..., None] * s, kf.transpose(-1, -2), vf)  # [B, H, Dk, 1] x [B, H, 1, Dv]
        return (qf @ s).to(v.dtype), s  # [B, H, 1, Dv]
    outs = []
    for i in range(t):
        s = decay[..., i, None, None] * s + kf[..., i, :, None] * vf[..., i, None, :]
        outs.append((qf[..., i, None, :] @ s).squeeze(-2))  # [B, H, Dv]
    o = torch.stack(outs, dim=2) if outs else vf.new_zeros(b, h, 0, dv)
    return o.to(v.dtype), s
