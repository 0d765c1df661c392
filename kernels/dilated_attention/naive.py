"""Dilated attention (LongNet), dense form: the O(T^2) oracle, and the helpers both forms share.

Shapes (both forms): q [B, H, Tq, D]; k [B, H, S, D]; v [B, H, S, Dv], Tq <= S. The queries are the
last Tq of the S positions (Tq == S: a whole sequence; Tq < S: a continuation over a cache).
`valid` [B, S] (optional) is False at padding keys.

Positions. A row's positions are counted from its first valid key, so left padding shifts nothing:
with p_b leading False in row b, the key at index m has position m - p_b (the same convention makes a
left-padded row give the same result as the row alone). Keys marked invalid anywhere are never seen.

Patterns. Pattern i has a segment length w_i, a dilation rate r_i and, per head j, an offset
s_ij in [0, r_i) (LongNet: s_ij = j mod r_i). Under pattern i, head j, the query at position n sees
the key at position m iff

    m <= n,   n // w_i == m // w_i   (same segment),
    (n % w_i) % r_i == s_ij  and  (m % w_i) % r_i == s_ij   (both on the head's dilated grid).

A query off its head's grid gets nothing from that pattern. A segment whose length is not a multiple
of r_i is allowed (its grid simply ends earlier), and so is T not a multiple of w_i (the last segment is
short).

Union, not sum (torchscale issue #108). Patterns overlap: with w = (4, 8), r = (1, 2), a pair of even
positions inside one 4-segment is covered by both. LongNet's merge, sum_i exp(lse_i - LSE) o_i with
each o_i a softmax over its own pattern, then counts such a key twice. We define dilated attention as
ONE softmax over the union of the keys that any pattern gives the query. The merge reproduces it
exactly when every (query, key) pair is given to one pattern only: `first_cover` keeps a pair in the
first pattern that covers it and masks it out of all later ones; over disjoint key sets the
lse-weighted merge is the softmax over their union.

A query that no pattern covers (possible only when every r_i > 1, or at padding) has an empty union:
its output is 0 and its lse is -inf (never NaN, in the forward or the backward pass).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

MERGES = ("union", "first_cover", "overlap")


def head_offsets(
    n_heads: int, dilation_rates: Sequence[int], offsets: Sequence[Sequence[int]] | None = None, device=None
) -> list[Tensor]:
    """Per pattern, the offset of each head: LongTensor [H] in [0, r_i). Default (LongNet): j mod r_i."""
    if offsets is None:
        return [torch.arange(n_heads, device=device) % r for r in dilation_rates]
    if len(offsets) != len(dilation_rates):
        raise ValueError(f"offsets need one entry per pattern: got {len(offsets)} for {len(dilation_rates)}")
    out = []
    for r, s in zip(dilation_rates, offsets):
        s = torch.as_tensor(s, dtype=torch.long, device=device).reshape(-1)
        if s.numel() != n_heads or bool(((s < 0) | (s >= r)).any()):
            raise ValueError(f"offsets for dilation rate {r} must be {n_heads} ints in [0, {r}), got {s.tolist()}")
        out.append(s)
    return out


def check_patterns(segment_lengths: Sequence[int], dilation_rates: Sequence[int]) -> None:
    if len(segment_lengths) != len(dilation_rates) or not segment_lengths:
        raise ValueError("segment_lengths and dilation_rates need one entry per pattern, equally many")
    if any(w < 1 for w in segment_lengths) or any(r < 1 for r in dilation_rates):
        raise ValueError(f"segment lengths and dilation rates must be >= 1: {segment_lengths}, {dilation_rates}")


def row_shift(valid: Tensor | None, batch: int, device=None) -> Tensor:
    """Leading padding per row, LongTensor [B]: the index of the first valid key (S when none is)."""
    if valid is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    s = valid.shape[1]
    first = valid.to(torch.uint8).argmax(dim=1)  # the first maximum: the first True
    return torch.where(valid.any(dim=1), first, torch.full_like(first, s))


def pattern_masks(
    q_len: int,
    k_len: int,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    n_heads: int,
    offsets: Sequence[Sequence[int]] | None = None,
    valid: Tensor | None = None,
    device=None,
) -> Tensor:
    """Which key each query sees under each pattern: bool [P, B, H, Tq, S] (B = 1 when `valid` is None).

    Causal, same segment, both on the head's grid (positions counted from each row's first valid key),
    and the key valid.
    """
    check_patterns(segment_lengths, dilation_rates)
    device = valid.device if valid is not None else device
    b = valid.shape[0] if valid is not None else 1
    shift = row_shift(valid, b, device)[:, None]  # [B, 1]
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[None] - shift  # [B, Tq]
    k_pos = torch.arange(k_len, device=device)[None] - shift  # [B, S]
    q_pos, k_pos = q_pos[:, None, :, None], k_pos[:, None, None, :]  # [B, 1, Tq, 1], [B, 1, 1, S]
    key_ok = k_pos <= q_pos
    if valid is not None:
        key_ok = key_ok & valid[:, None, None, :]
    masks = []
    for w, r, s in zip(segment_lengths, dilation_rates, head_offsets(n_heads, dilation_rates, offsets, device)):
        s = s[None, :, None, None]  # [1, H, 1, 1]
        on_grid_q = (q_pos % w) % r == s  # [B, H, Tq, 1]
        on_grid_k = (k_pos % w) % r == s  # [B, H, 1, S]
        masks.append(key_ok & (q_pos // w == k_pos // w) & on_grid_q & on_grid_k)
    return torch.stack(masks)


def first_cover(masks: Tensor) -> Tensor:
    """Give each (query, key) pair to the first pattern that covers it: masks [P, ...] -> disjoint masks."""
    out, seen = [], torch.zeros_like(masks[0])
    for m in masks:
        out.append(m & ~seen)
        seen = seen | m
    return torch.stack(out)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Softmax attention over the keys where `mask` is True, in fp32: (o [..., Tq, Dv], lse [..., Tq]).

    o = softmax(scale q k^T) v over the allowed keys, lse = log sum exp(scale q k^T) over them.
    A row with no allowed key gives o = 0, lse = -inf, and no NaN in the gradient.
    """
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    m = scores.amax(dim=-1, keepdim=True).detach()  # only for stability: lse does not depend on it
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(scores - m)  # 0 where masked
    z = e.sum(dim=-1, keepdim=True)
    some = z > 0
    z_safe = torch.where(some, z, torch.ones_like(z))
    o = (e @ v.float()) / z_safe
    lse = torch.where(some, m + torch.log(z_safe), torch.full_like(z, float("-inf")))
    return o, lse.squeeze(-1)


def merge_by_lse(outs: Sequence[Tensor], lses: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Merge attention results over disjoint key sets: o = sum_i exp(lse_i - LSE) o_i, LSE = logsumexp_i lse_i.

    outs: each [..., Dv] fp32; lses: each [...]. Rows where every lse_i is -inf give o = 0, lse = -inf.
    """
    lse = torch.stack(list(lses))  # [P, ...]
    m = lse.amax(dim=0).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(lse - m)  # [P, ...]
    z = w.sum(dim=0)
    some = z > 0
    z_safe = torch.where(some, z, torch.ones_like(z))
    o = sum(wi[..., None] * oi for wi, oi in zip(w, outs)) / z_safe[..., None]
    return o, torch.where(some, m + torch.log(z_safe), torch.full_like(z, float("-inf")))


def naive_dilated_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    offsets: Sequence[Sequence[int]] | None = None,
    valid: Tensor | None = None,
    scale: float | None = None,
    merge: str = "union",
    return_lse: bool = False,
):
    """Dense dilated attention: o [B, H, Tq, Dv] (dtype of v); with `return_lse`, also lse [B, H, Tq] fp32.

    merge="union" (the definition): one masked softmax over the union of all patterns' keys.
    merge="first_cover": per pattern, masked softmax over the pairs `first_cover` gives it, then
        `merge_by_lse`; equal to "union" (this is what the fast path computes).
    merge="overlap": per pattern over all its pairs, then `merge_by_lse`: torchscale's merge, which
        counts a key covered by several patterns several times. Only for comparison; not dilated attention.
    """
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
    b, h, tq, d = q.shape
    scale = d**-0.5 if scale is None else scale
    masks = pattern_masks(tq, k.shape[2], segment_lengths, dilation_rates, h, offsets, valid, q.device)
    if merge == "union":
        o, lse = masked_attention(q, k, v, masks.any(dim=0), scale)
    else:
        if merge == "first_cover":
            masks = first_cover(masks)
        parts = [masked_attention(q, k, v, m, scale) for m in masks]
        o, lse = merge_by_lse([p[0] for p in parts], [p[1] for p in parts])
    o = o.to(v.dtype)
    return (o, lse) if return_lse else o
