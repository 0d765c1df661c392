"""Dilated attention (LongNet) as batched fused attention over gathered segments.

Same function, signature and result as `dilated.py` (read its docstring and `naive.py`'s): one softmax
over the union of the patterns' keys. What differs is how each pattern's blocks are attended:

- For pattern i, the grid points of every segment touched by the queries are gathered into a batch of
  blocks [B*H*G, Lq, Lk] (the same indices and the same mask as `dilated.py`: causal, the short last
  segment and invalid keys, and the de-duplication that masks a pair an earlier pattern covers).
- The blocks go through a fused attention kernel that also returns the per-query log-sum-exp:
  on CUDA, FlashAttention-2 (`aten._scaled_dot_product_flash_attention`, fp16/bf16, when the block's
  mask is plain causal: the first pattern, no padding, whole segments, a whole sequence) or the
  memory-efficient kernel (`aten._scaled_dot_product_efficient_attention`, with the mask as an additive
  bias); on CPU, the fused CPU flash kernel (`aten._scaled_dot_product_flash_attention_for_cpu`).
  These are the kernels behind `F.scaled_dot_product_attention`, called directly because the public
  function does not return the log-sum-exp. Elsewhere, or if a fused call fails (a warning is given
  once), a plain fp32 matmul-softmax computes the same pair.
- Rows with no allowed key get o = 0 and lse = -inf (decided from the mask, not from the kernel).
- The patterns are merged by their log-sum-exp (`naive.merge_by_lse`); the key sets are disjoint,
  so the merge is the union softmax.

Backward (a custom autograd function; nothing of the forward's blocks is kept). With the merged
output O and merged log-sum-exp L, each pattern's share of the gradient is that of an attention block
whose probabilities are P = exp(scale q k^T - L) on its allowed pairs (the merge weight folded in):

    dv = P^T do,   dP = do v^T,   dS = P * (dP - rowsum(do * O) + dL),   dq = scale dS k,   dk = scale dS^T q

computed per pattern in fp32 with plain matmuls over slices of segments (so at most about 2**24
scores live at once) and scattered back with index_add. dL is the gradient of the returned lse (zero
unless the caller uses it).

Registered as implementation "sdpa_gather" (priority 20, CUDA) of op "dilated_attention", beside
this module's "reference" registration of `dilated.dilated_attention`.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import dispatch
from .dilated import dilated_attention
from .naive import check_patterns, head_offsets, merge_by_lse, row_shift

BACKENDS = ("auto", "fused", "math")
MAX_BLOCK_SCORES = 1 << 24  # scores held at once per slice of segments (backward, math path)
_warned: set[str] = set()


@dataclass
class _Grid:
    """One pattern's gathered grid: positions, indices into q / k and validity, [B, H, G, L] each."""

    w: int
    r: int
    s: Tensor  # [1, H, 1, 1] head offsets
    q_pos: Tensor
    q_idx: Tensor
    q_ok: Tensor
    k_pos: Tensor
    k_idx: Tensor
    k_ok: Tensor
    plain_causal: bool  # the block mask is exactly the causal lower triangle (and every q, k is ok)


def _ceil_div(a: Tensor, b: int) -> Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def _grids(b, h, tq, s_len, segment_lengths, dilation_rates, offsets, valid, device) -> list[_Grid]:
    start = s_len - tq
    shift = row_shift(valid, b, device)  # [B] leading padding
    q_lo = (start - shift).clamp_min(0)  # [B] position of the first query
    k_end = s_len - shift  # [B] one past the last position
    shift4, k_end4 = shift[:, None, None, None], k_end[:, None, None, None]
    grids = []
    for i, (w, r, offs) in enumerate(zip(segment_lengths, dilation_rates,
                                         head_offsets(h, dilation_rates, offsets, device))):
        s = offs[None, :, None, None]
        g0 = q_lo // w  # [B] first segment holding a query
        if valid is None:
            n_seg = (s_len - 1) // w - start // w + 1
        else:
            n_seg = int(((k_end - 1).clamp_min(0) // w - g0).max()) + 1
        lk = -(-min(w, s_len) // r)
        lq = min(lk, -(-tq // r))
        base = ((g0[:, None] + torch.arange(n_seg, device=device)) * w)[:, None, :, None]  # [B, 1, G, 1]
        rel_k = s + r * torch.arange(lk, device=device)  # [1, H, 1, Lk]
        k_pos = base + rel_k
        k_ok = (rel_k < w) & (k_pos < k_end4)
        k_idx = (k_pos + shift4).clamp_max(s_len - 1)
        if valid is not None:
            k_ok = k_ok & torch.gather(valid, 1, k_idx.flatten(1)).view_as(k_idx)
        t_lo = _ceil_div(q_lo[:, None, None, None] - base - s, r).clamp_min(0)  # [B, H, G, 1]
        rel_q = s + r * (t_lo + torch.arange(lq, device=device))
        q_pos = base + rel_q
        q_ok = (rel_q < w) & (q_pos < k_end4)
        q_idx = (q_pos + shift4 - start).clamp(0, tq - 1)
        plain = i == 0 and valid is None and tq == s_len and s_len % w == 0 and w % r == 0
        grids.append(_Grid(w, r, s, q_pos, q_idx, q_ok, k_pos, k_idx, k_ok, plain))
    return grids


def _block_mask(grid: _Grid, sl: slice, earlier: Sequence[_Grid], with_q_ok: bool) -> Tensor:
    """Allowed pairs of segments `sl`: bool [B, H, g, Lq, Lk] (as `dilated.py`, plus q_ok if asked)."""
    q_pos, k_pos = grid.q_pos[:, :, sl], grid.k_pos[:, :, sl]
    mask = grid.k_ok[:, :, sl, None, :] & (k_pos[..., None, :] <= q_pos[..., :, None])
    for e in earlier:  # de-duplicate: a pair an earlier pattern covers is not counted again
        qc = (q_pos % e.w) % e.r == e.s
        kc = (k_pos % e.w) % e.r == e.s
        same = (q_pos // e.w)[..., :, None] == (k_pos // e.w)[..., None, :]
        mask = mask & ~(same & qc[..., :, None] & kc[..., None, :])
    if with_q_ok:
        mask = mask & grid.q_ok[:, :, sl, :, None]
    return mask


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """x [B, H, N, D], index [B, H, G, L] into N -> [B, H, G, L, D]."""
    b, h, g, l = index.shape
    flat = index.reshape(b, h, g * l, 1).expand(b, h, g * l, x.shape[-1])
    return torch.gather(x, 2, flat).view(b, h, g, l, x.shape[-1])


def _scatter_add(dst: Tensor, index: Tensor, src: Tensor) -> None:
    """dst [B, H, N, D] += src [B, H, G, L, D] at index [B, H, G, L]."""
    b, h, g, l = index.shape
    dst.scatter_add_(2, index.reshape(b, h, g * l, 1).expand(b, h, g * l, dst.shape[-1]), src.reshape(b, h, g * l, -1))


def _slices(n_seg: int, per_seg: int) -> list[slice]:
    step = max(1, MAX_BLOCK_SCORES // max(1, per_seg))
    return [slice(i, min(i + step, n_seg)) for i in range(0, n_seg, step)]


# ------------------------------------------------------------------------------------------------
# One batch of blocks: fused kernels returning (o, lse), and the fp32 math twin.
# ------------------------------------------------------------------------------------------------


def _attend_math(q, k, v, mask, scale):
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    p = torch.exp(scores - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None])
    return p @ v.float(), lse


def _pad_last(x: Tensor, n: int) -> Tensor:
    return x if x.shape[-1] == n else torch.nn.functional.pad(x, (0, n - x.shape[-1]))


def _attend_fused(q, k, v, mask, causal, scale):
    """q [N, G, Lq, D], k [N, G, Lk, D], v [N, G, Lk, Dv]; mask bool [N, G, Lq, Lk] or None (then
    `causal` says top-left causal or full). Returns (o [N, G, Lq, Dv], lse [N, G, Lq]), any dtype."""
    d, dv = q.shape[-1], v.shape[-1]
    if q.device.type == "cpu":
        e = max(d, dv)  # the CPU kernel wants one head size: zero columns change nothing
        bias = None if mask is None else torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf"))
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            _pad_last(q, e), _pad_last(k, e), _pad_last(v, e), 0.0, causal and mask is None, attn_mask=bias,
            scale=scale)
        return o[..., :dv], lse
    if q.device.type == "cuda":
        if mask is None and d == dv and d % 8 == 0 and d <= 256 and q.dtype in (torch.float16, torch.bfloat16):
            out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
            return out[0], out[1]
        e, ev = -(-d // 8) * 8, -(-dv // 8) * 8
        bias = None
        if mask is not None:  # additive bias, last dim allocated 16-aligned as the kernel requires
            lk = mask.shape[-1]
            bias = torch.zeros(*mask.shape[:-1], -(-lk // 16) * 16, dtype=q.dtype, device=q.device)[..., :lk]
            bias.masked_fill_(~mask, float("-inf"))
        out = torch.ops.aten._scaled_dot_product_efficient_attention(
            _pad_last(q, e), _pad_last(k, e), _pad_last(v, ev), bias, True, 0.0, causal and mask is None, scale=scale)
        return out[0][..., :dv], out[1][..., : q.shape[-2]]
    raise NotImplementedError(f"no fused attention with log-sum-exp on {q.device.type}")


def _attend(q, k, v, mask, causal, scale, backend):
    """Blocks [N, G, L, D] -> (o fp32 [N, G, Lq, Dv], lse fp32 [N, G, Lq]); rows without keys: 0, -inf."""
    if mask is None and causal:  # only used for square blocks (the plain-causal first pattern)
        mask_for_math = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    else:
        mask_for_math = mask
    o = lse = None
    if backend != "math":
        try:
            o, lse = _attend_fused(q, k, v, mask, causal, scale)
        except (RuntimeError, NotImplementedError) as err:
            if backend == "fused":
                raise
            key = f"{q.device.type}:{q.dtype}:{type(err).__name__}"
            if key not in _warned:
                _warned.add(key)
                warnings.warn(f"dilated attention: fused attention unavailable ({err}); using fp32 matmuls",
                              stacklevel=3)
    if o is None:
        o, lse = _attend_math(q, k, v, mask_for_math, scale)
    o, lse = o.float(), lse.float()
    if mask is not None:
        some = mask.any(dim=-1)  # [N, G, Lq]
        o = torch.where(some[..., None], o, torch.zeros_like(o))
        lse = torch.where(some, lse, torch.full_like(lse, float("-inf")))
    return o, lse


# ------------------------------------------------------------------------------------------------
# The autograd function.
# ------------------------------------------------------------------------------------------------


class _SdpaGatherDilated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, valid, segment_lengths, dilation_rates, offsets, scale, backend):
        b, h, tq, _ = q.shape
        s_len, dv = k.shape[2], v.shape[-1]
        grids = _grids(b, h, tq, s_len, segment_lengths, dilation_rates, offsets, valid, q.device)
        out = torch.zeros(b, h, tq, dv, dtype=torch.float32, device=q.device)
        lse = torch.full((b, h, tq), float("-inf"), dtype=torch.float32, device=q.device)
        for i, grid in enumerate(grids):
            n_seg, lq, lk = grid.q_idx.shape[2], grid.q_idx.shape[3], grid.k_idx.shape[3]
            o_dense = out.new_zeros(b, h, tq + 1, dv)  # slot tq: the dump for off-grid rows
            lse_dense = lse.new_full((b, h, tq + 1), float("-inf"))
            for sl in _slices(n_seg, b * h * lq * lk):
                qi, ki = grid.q_idx[:, :, sl], grid.k_idx[:, :, sl]
                g = qi.shape[2]
                # blocks as [B*H, g, L, D]: batch B*H and "heads" g, both well inside the kernels' grids
                blocks = [_gather(x, idx).reshape(b * h, g, idx.shape[-1], x.shape[-1])
                          for x, idx in ((q, qi), (k, ki), (v, ki))]
                mask = None if grid.plain_causal else \
                    _block_mask(grid, sl, grids[:i], with_q_ok=False).reshape(b * h, g, lq, lk)
                o_i, lse_i = _attend(*blocks, mask, True, scale, backend)
                dest = torch.where(grid.q_ok[:, :, sl], qi, torch.full_like(qi, tq)).flatten(2)  # [B, H, g*Lq]
                o_dense.scatter_(2, dest[..., None].expand(-1, -1, -1, dv), o_i.reshape(b, h, g * lq, dv))
                lse_dense.scatter_(2, dest, lse_i.reshape(b, h, g * lq))
            out, lse = merge_by_lse([out, o_dense[:, :, :tq]], [lse, lse_dense[:, :, :tq]])
        ctx.save_for_backward(q, k, v, valid, out, lse)
        ctx.args = (segment_lengths, dilation_rates, offsets, scale)
        return out.to(v.dtype), lse

    @staticmethod
    def backward(ctx, d_out, d_lse):
        q, k, v, valid, out, lse = ctx.saved_tensors
        segment_lengths, dilation_rates, offsets, scale = ctx.args
        b, h, tq, d = q.shape
        s_len, dv = k.shape[2], v.shape[-1]
        grids = _grids(b, h, tq, s_len, segment_lengths, dilation_rates, offsets, valid, q.device)
        d_out = torch.zeros_like(out) if d_out is None else d_out.float()
        delta = (d_out * out).sum(-1)  # [B, H, Tq]
        if d_lse is not None:
            delta = delta - d_lse.float()
        lse_safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # rows without keys: P = 0 anyway
        qf, kf, vf = q.float(), k.float(), v.float()
        dq, dk, dvv = torch.zeros_like(qf), torch.zeros_like(kf), torch.zeros_like(vf)
        for i, grid in enumerate(grids):
            n_seg, lq, lk = grid.q_idx.shape[2], grid.q_idx.shape[3], grid.k_idx.shape[3]
            for sl in _slices(n_seg, b * h * lq * lk):
                qi, ki = grid.q_idx[:, :, sl], grid.k_idx[:, :, sl]
                qb, kb, vb, dob = _gather(qf, qi), _gather(kf, ki), _gather(vf, ki), _gather(d_out, qi)
                lse_b = torch.gather(lse_safe, 2, qi.flatten(2)).view_as(qi)  # [B, H, g, Lq]
                delta_b = torch.gather(delta, 2, qi.flatten(2)).view_as(qi)
                mask = _block_mask(grid, sl, grids[:i], with_q_ok=True)
                scores = (qb @ kb.transpose(-1, -2)) * scale
                p = torch.exp(scores.masked_fill(~mask, float("-inf")) - lse_b[..., None])  # [B, H, g, Lq, Lk]
                _scatter_add(dvv, ki, p.transpose(-1, -2) @ dob)
                ds = p * (dob @ vb.transpose(-1, -2) - delta_b[..., None])
                _scatter_add(dq, qi, (ds @ kb) * scale)
                _scatter_add(dk, ki, (ds.transpose(-1, -2) @ qb) * scale)
        return dq.to(q.dtype), dk.to(k.dtype), dvv.to(v.dtype), None, None, None, None, None, None


def dilated_attention_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    offsets: Sequence[Sequence[int]] | None = None,
    valid: Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str = "auto",
):
    """Twin of `dilated.dilated_attention` (same arguments and result): o [B, H, Tq, Dv] (dtype of v);
    with `return_lse`, also lse [B, H, Tq] fp32. `backend`: "auto" (fused kernels where they run, else
    fp32 matmuls), "fused" (fail rather than fall back), "math" (fp32 matmuls only)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_patterns(segment_lengths, dilation_rates)
    b, h, tq, d = q.shape
    s_len, dv = k.shape[2], v.shape[-1]
    if tq > s_len:
        raise ValueError(f"more queries ({tq}) than keys ({s_len})")
    scale = d**-0.5 if scale is None else float(scale)
    if tq == 0:
        o = v.new_zeros(b, h, 0, dv)
        lse = torch.zeros(b, h, 0, dtype=torch.float32, device=q.device)
        return (o, lse) if return_lse else o
    if offsets is not None:  # hashable plain ints (validated by `head_offsets`)
        offsets = tuple(tuple(int(x) for x in torch.as_tensor(per).reshape(-1).tolist()) for per in offsets)
    o, lse = _SdpaGatherDilated.apply(q, k, v, valid, tuple(segment_lengths), tuple(dilation_rates), offsets,
                                      scale, backend)
    return (o, lse) if return_lse else o


dispatch.register("dilated_attention", "reference", dilated_attention)
dispatch.register("dilated_attention", "sdpa_gather", dilated_attention_sdpa,
                  available=lambda device: torch.device(device).type == "cuda", priority=20)
