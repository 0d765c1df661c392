"""Retention, chunkwise form: parallel inside chunks of `chunk_size`, recurrent across them.

For a chunk of L real tokens with start state S_0, local positions i, m = 0..L-1:

    o_i = gamma^(i+1) q_i S_0 + sum_{m <= i} gamma^(i - m) (q_i . k_m) v_m
    S_L = gamma^L S_0 + sum_m gamma^(L - 1 - m) k_m^T v_m

Every power is taken as exp(integer distance * log gamma) with the distance >= 0 (the causal mask
is applied as -inf before exp), so nothing overflows for any T. T need not be a multiple of
`chunk_size`: the last chunk is padded with q = k = v = 0, and the padded steps are given
distance 0 (no decay), so the state leaving the last chunk is that after exactly T tokens.
Shapes as in `naive.py`; `state` continues a sequence (None: zeros).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .naive import _check


def chunk_retention(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, chunk_size: int = 64, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Returns o [B, H, T, Dv] (dtype of v) and the final state [B, H, Dk, Dv] (fp32)."""
    _check(q, k, v, log_decay)
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

    # Steps taken so far inside each chunk, i + 1 for a real token, frozen over the padded tail.
    real = torch.ones(n * c, device=q.device)
    real[t:] = 0
    steps = real.view(n, c).cumsum(-1)  # [N, C], small exact integers
    g = log_decay.float()[:, None, None]  # [H, 1, 1]

    # Inside each chunk: the decay-masked parallel form (the same for every chunk but the tail).
    dist = steps[:, :, None] - steps[:, None, :]  # [N, C, C]
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    expo = dist[None] * g[..., None]  # [H, N, C, C]
    decay = expo.masked_fill(~causal, float("-inf")).exp()
    o = ((qf @ kf.transpose(-1, -2)) * decay) @ vf  # [B, H, N, C, Dv]

    # Each chunk's own contribution to the state at its end, and its total decay.
    to_end = ((steps[:, -1:] - steps)[None] * g).exp()  # gamma^(L - 1 - m), [H, N, C]
    chunk_kv = (kf * to_end[..., None]).transpose(-1, -2) @ vf  # [B, H, N, Dk, Dv]
    chunk_decay = (steps[:, -1][None] * g[:, :, 0]).exp()  # gamma^L, [H, N]

    # Across chunks: a scan over the N chunk start states.
    starts = []
    for i in range(n):
        starts.append(s)
        s = chunk_decay[:, i, None, None] * s + chunk_kv[:, :, i]
    start = torch.stack(starts, dim=2)  # [B, H, N, Dk, Dv]
    o = o + (qf * (steps[None] * g).exp()[..., None]) @ start  # gamma^(i+1) q_i S_0

    o = o.reshape(b, h, n * c, dv)[:, :, :t]
    return o.to(v.dtype), s
