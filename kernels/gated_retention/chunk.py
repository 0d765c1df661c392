"""Gated retention, chunkwise form: parallel inside chunks of `chunk_size`, recurrent across them.

For a chunk with start state S_0 and in-chunk cumulative log decay b_i = g_1 + ... + g_i:

    o_i  = exp(b_i) q_i S_0 + sum_{m <= i in chunk} exp(b_i - b_m) (q_i . k_m) v_m
    S_C  = exp(b_C) S_0 + sum_m exp(b_C - b_m) k_m^T v_m

Every exponent is <= 0 when log_decay <= 0, so nothing overflows. T need not be a multiple of
`chunk_size`: the tail is padded with k = v = q = 0 and log decay 0, which leaves the state unchanged.
Shapes as in `naive.py`; `state` continues a sequence (None: zeros).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def chunk_gated_retention(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, chunk_size: int = 64, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Returns o [B, H, T, Dv] (dtype of v) and the final state [B, H, Dk, Dv] (fp32)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    s = q.new_zeros(b, h, dk, dv, dtype=torch.float32) if state is None else state.float()
    if t == 0:
        return v.new_zeros(b, h, 0, dv), s
    c = min(chunk_size, t)
    pad = -t % c
    n = (t + pad) // c
    qf, kf, vf = (F.pad(x.float(), (0, 0, 0, pad)).view(b, h, n, c, -1) for x in (q, k, v))
    g = F.pad(log_decay.float(), (0, pad)).view(b, h, n, c)
    cum = g.cumsum(-1)  # b_i, [B, H, N, C]

    # Inside each chunk: the decay-masked parallel form.
    upper = torch.ones(c, c, dtype=torch.bool, device=q.device).triu(1)
    decay = (cum[..., :, None] - cum[..., None, :]).masked_fill(upper, float("-inf")).exp()  # [B,H,N,C,C]
    o = ((qf @ kf.transpose(-1, -2)) * decay) @ vf  # [B, H, N, C, Dv]

    # Each chunk's own contribution to the state at its end, and its total decay.
    to_end = (cum[..., -1:] - cum).exp()  # exp(b_C - b_m), [B, H, N, C]
    chunk_kv = (kf * to_end[..., None]).transpose(-1, -2) @ vf  # [B, H, N, Dk, Dv]
    chunk_decay = cum[..., -1].exp()  # [B, H, N]

    # Across chunks: a scan over N states (the start state of every chunk).
    starts = []
    for i in range(n):
        starts.append(s)
        s = chunk_decay[..., i, None, None] * s + chunk_kv[:, :, i]
    start = torch.stack(starts, dim=2)  # [B, H, N, Dk, Dv]
    o = o + (qf * cum.exp()[..., None]) @ start

    o = o.reshape(b, h, n * c, dv)[:, :, :t]
    return o.to(v.dtype), s
