"""Dilated attention (LongNet), the efficient form: gather each pattern's sparse segments, attend
inside them, scatter back, merge the patterns by their log-sum-exp.

Same maths, shapes and conventions as `naive.py` (read its docstring): the result equals
`naive_dilated_attention(..., merge="union")`, one softmax over the union of the patterns' keys.

For pattern i (segment length w, rate r, head offsets s_j) and each segment g touched by the queries,
head j gathers the keys at positions g*w + s_j + r*t (t = 0 .. ceil(min(w, S)/r) - 1) and the queries
on the same grid that lie among the last Tq positions: blocks [B, H, G, Lq, Lk] with Lk <= w/r and
Lq <= min(Lk, ceil(Tq/r)). Attention is causal inside a block; grid points past the segment's end or
past S (the short last segment) and invalid keys are masked; a pair that an earlier pattern already
covers is masked too (the de-duplication of torchscale issue #108), so the patterns' key sets are
disjoint and the lse-weighted merge is the softmax over their union.

Cost per pattern: O(B H (S/w + 1) Lq Lk D), i.e. O(T w/r^2) per head for a whole sequence (at most
O(T w/r)), and O(w/r) per head per decoded token; nothing of size T x T is ever built. Scores are held
in fp32, computed with plain matmuls (no fused kernel; a pure-PyTorch path for CPU and small GPU runs).
Works for any Tq <= S, so the same function serves the parallel form, prefill, chunked continuation
and one-token decoding over a KV cache.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .naive import check_patterns, head_offsets, masked_attention, merge_by_lse, row_shift


def _ceil_div(a: Tensor, b: int) -> Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """x [B, H, N, D], index [B, H, G, L] into N -> [B, H, G, L, D]."""
    b, h, g, l = index.shape
    flat = index.reshape(b, h, g * l, 1).expand(b, h, g * l, x.shape[-1])
    return torch.gather(x, 2, flat).view(b, h, g, l, x.shape[-1])


def dilated_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    offsets: Sequence[Sequence[int]] | None = None,
    valid: Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
):
    """o [B, H, Tq, Dv] (dtype of v); with `return_lse`, also lse [B, H, Tq] fp32.

    q [B, H, Tq, D] are the last Tq of the S positions of k [B, H, S, D] and v [B, H, S, Dv];
    valid [B, S] is False at padding (positions count from each row's first valid key).
    """
    check_patterns(segment_lengths, dilation_rates)
    b, h, tq, d = q.shape
    s_len, dv = k.shape[2], v.shape[-1]
    if tq > s_len:
        raise ValueError(f"more queries ({tq}) than keys ({s_len})")
    start = s_len - tq
    device = q.device
    scale = d**-0.5 if scale is None else scale
    out = torch.zeros(b, h, tq, dv, dtype=torch.float32, device=device)
    lse = torch.full((b, h, tq), float("-inf"), dtype=torch.float32, device=device)
    if tq == 0:
        return (out.to(v.dtype), lse) if return_lse else out.to(v.dtype)

    shift = row_shift(valid, b, device)  # [B] leading padding
    q_lo = (start - shift).clamp_min(0)  # [B] position of the first query (positions < 0 are padding)
    k_end = s_len - shift  # [B] one past the last position
    shift4, k_end4 = shift[:, None, None, None], k_end[:, None, None, None]
    done: list[tuple[int, int, Tensor]] = []  # earlier patterns (w, r, offsets [1, H, 1, 1])
    for w, r, offs in zip(segment_lengths, dilation_rates, head_offsets(h, dilation_rates, offsets, device)):
        s = offs[None, :, None, None]  # [1, H, 1, 1]
        g0 = q_lo // w  # [B] first segment holding a query
        if valid is None:  # plain ints: no device sync
            n_seg = (s_len - 1) // w - start // w + 1
        else:
            n_seg = int(((k_end - 1).clamp_min(0) // w - g0).max()) + 1
        lk = -(-min(w, s_len) // r)
        lq = min(lk, -(-tq // r))
        base = ((g0[:, None] + torch.arange(n_seg, device=device)) * w)[:, None, :, None]  # [B, 1, G, 1]

        rel_k = s + r * torch.arange(lk, device=device)  # [1, H, 1, Lk] position inside the segment
        k_pos = base + rel_k  # [B, H, G, Lk]
        k_ok = (rel_k < w) & (k_pos < k_end4)
        k_idx = (k_pos + shift4).clamp_max(s_len - 1)
        if valid is not None:
            k_ok = k_ok & torch.gather(valid, 1, k_idx.flatten(1)).view_as(k_idx)

        t_lo = _ceil_div(q_lo[:, None, None, None] - base - s, r).clamp_min(0)  # [B, H, G, 1] first query on grid
        rel_q = s + r * (t_lo + torch.arange(lq, device=device))  # [B, H, G, Lq]
        q_pos = base + rel_q
        q_ok = (rel_q < w) & (q_pos < k_end4)
        q_idx = (q_pos + shift4 - start).clamp(0, tq - 1)

        mask = k_ok[..., None, :] & (k_pos[..., None, :] <= q_pos[..., :, None])  # [B, H, G, Lq, Lk]
        for w2, r2, s2 in done:  # de-duplicate: a pair an earlier pattern covers is not counted again
            qc = (q_pos % w2) % r2 == s2
            kc = (k_pos % w2) % r2 == s2
            same = (q_pos // w2)[..., :, None] == (k_pos // w2)[..., None, :]
            mask = mask & ~(same & qc[..., :, None] & kc[..., None, :])
        done.append((w, r, s))

        o_i, lse_i = masked_attention(_gather(q, q_idx), _gather(k, k_idx), _gather(v, k_idx), mask, scale)
        # scatter the pattern's queries back; off-grid or out-of-range rows go to a dump slot at tq
        dest = torch.where(q_ok, q_idx, torch.full_like(q_idx, tq)).flatten(2)  # [B, H, G*Lq]
        o_dense = out.new_zeros(b, h, tq + 1, dv).scatter(2, dest[..., None].expand(-1, -1, -1, dv), o_i.flatten(2, 3))
        lse_dense = lse.new_full((b, h, tq + 1), float("-inf")).scatter(2, dest, lse_i.flatten(2))
        out, lse = merge_by_lse([out, o_dense[:, :, :tq]], [lse, lse_dense[:, :, :tq]])
    out = out.to(v.dtype)
    return (out, lse) if return_lse else out
