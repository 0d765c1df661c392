"""Gated retention, parallel form: the O(T^2) oracle.

Shapes (all forms): q, k [B, H, T, Dk]; v [B, H, T, Dv]; log_decay [B, H, T], the per-head,
per-token log decay g_t <= 0 (YOCO: logsigmoid(W_g x_t) / 16).

    o_n = sum_{m <= n} exp(g_{m+1} + ... + g_n) (q_n . k_m) v_m

No scale is applied to q . k: the caller folds it into q or k.
"""
from __future__ import annotations

import torch
from torch import Tensor


def decay_matrix(log_decay: Tensor) -> Tensor:
    """D[..., n, m] = exp(sum_{j=m+1..n} g_j) for m <= n, else 0: [B, H, T, T] fp32.

    Cumulative sums are taken in fp32 and the upper triangle is masked to -inf before exp, so no
    positive exponent (which could overflow) is ever evaluated.
    """
    c = log_decay.float().cumsum(-1)  # [B, H, T]
    t = c.shape[-1]
    upper = torch.ones(t, t, dtype=torch.bool, device=c.device).triu(1)  # m > n
    return (c[..., :, None] - c[..., None, :]).masked_fill(upper, float("-inf")).exp()


def parallel_gated_retention(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor) -> Tensor:
    """o [B, H, T, Dv] (dtype of v), computed in fp32."""
    scores = q.float() @ k.float().transpose(-1, -2)  # [B, H, T, T]
    return ((scores * decay_matrix(log_decay)) @ v.float()).to(v.dtype)
