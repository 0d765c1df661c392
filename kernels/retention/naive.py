"""Retention, parallel form: the O(T^2) oracle.

Shapes (all forms): q, k [B, H, T, Dk]; v [B, H, T, Dv]; log_decay [H], log gamma_h <= 0 per head.

    o = (q k^T ⊙ D) v,    D[n, m] = gamma^(n - m) if n >= m else 0

No scale is applied to q . k: the caller folds it into q or k.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _check(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"expected q, k [B, H, T, Dk] and v [B, H, T, Dv], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if log_decay.shape != (q.shape[1],):
        raise ValueError(f"log_decay must be [H] = [{q.shape[1]}], got {tuple(log_decay.shape)}")


def decay_matrix(log_decay: Tensor, t: int) -> Tensor:
    """D[h, n, m] = exp((n - m) log gamma_h) for m <= n, else 0: [H, T, T] fp32.

    The exponent is an integer distance times the log decay (no accumulated sums), and the upper
    triangle is set to -inf before exp, so no positive exponent is ever evaluated: no inf, no inf * 0.
    """
    pos = torch.arange(t, device=log_decay.device)
    dist = pos[:, None] - pos[None, :]  # n - m, [T, T]
    expo = dist.float()[None] * log_decay.float()[:, None, None]  # [H, T, T]
    return expo.masked_fill((dist < 0)[None], float("-inf")).exp()


def parallel_retention(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor) -> Tensor:
    """o [B, H, T, Dv] (dtype of v), computed in fp32; the sequence starts from a zero state."""
    _check(q, k, v, log_decay)
    scores = q.float() @ k.float().transpose(-1, -2)  # [B, H, T, T]
    return ((scores * decay_matrix(log_decay, q.shape[2])) @ v.float()).to(v.dtype)


def retention_final_state(k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor | None = None) -> Tensor:
    """The recurrent state after the T tokens, in closed form: [B, H, Dk, Dv] fp32.

        S_T = gamma^T S_0 + sum_m gamma^(T - 1 - m) k_m^T v_m

    It lets the parallel form hand a state to the recurrent and chunkwise forms.
    """
    t = k.shape[2]
    g = log_decay.float()[:, None]  # [H, 1]
    to_end = ((t - 1 - torch.arange(t, device=k.device)).float()[None] * g).exp()  # [H, T]
    s = (k.float() * to_end[..., None]).transpose(-1, -2) @ v.float()  # [B, H, Dk, Dv]
    if state is not None:
        s = s + (t * g).exp()[..., None] * state.float()
    return s
