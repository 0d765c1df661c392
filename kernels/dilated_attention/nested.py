"""Dilated attention for nested patterns (LongNet's geometric ones) as a few dense fused-attention calls.

Same function, arguments and result as `dilated.py` (read `naive.py` for the definition): one softmax
over the union of the patterns' keys. It is exact, not an approximation; what it exploits is structure.

Nested patterns. Patterns (w_0, r_0), (w_1, r_1), ... nest when, for every i >= 1,

    w_{i-1} < w_i,  w_i % w_{i-1} == 0,  r_i % r_{i-1} == 0,  w_i % r_i == 0,  w_{i-1} % r_i == 0,
    and every head's offset satisfies s_i % r_{i-1} == s_{i-1}      (and w_0 % r_0 == 0).

LongNet's w = 2k, 4k, 8k, ..., r = 1, 2, 4, ... with offsets j mod r_i do. Then head j's grid under
pattern i (positions p with p % r_i == s_ij) lies inside its grid under every earlier pattern, so a pair
of pattern i is already covered by an earlier pattern exactly when both ends lie in the same
w_{i-1}-segment. In pattern i's gathered block of L = w_i / r_i grid points, cut into n = w_i / w_{i-1}
sub-blocks of L' = w_{i-1} / r_i points, the pairs left to pattern i (the de-duplication of torchscale
issue #108) are therefore exactly: query sub-block a sees key sub-blocks 0 .. a-1, all of them (keys are
earlier, so causality holds by itself). So:

- pattern 0: causal attention inside blocks of w_0 / r_0 grid points: [B*H, G, L_0, D], is_causal;
- pattern i >= 1: for a = 1 .. n-1, queries of sub-block a against the keys of sub-blocks < a, no mask
  (for LongNet's doubling, n = 2: one rectangle, the second half of each block against its first half).

Per head and token that is w_0 / (2 r_0^2) + sum_i w_i (1 - 1/n_i) / (2 r_i^2) scores, against T / 2
for dense causal attention, and every call is a maskless fused kernel
(`aten._scaled_dot_product_flash_attention_for_cpu`, which also returns the log-sum-exp). The patterns
are merged by log-sum-exp (their key sets are disjoint); every query a later pattern touches is on the
first pattern's grid and sees itself there, so the merge never meets an empty row.

A sequence that is not a multiple of w_i is zero-padded at the end for pattern i; padded keys come after
every real query, so no real query sees them (pattern 0 is causal; later patterns only look back).
A pattern whose w_{i-1} >= T adds no pair and is skipped.

Backward: a custom autograd function. With the merged output O and log-sum-exp L, each pattern's share
of the gradient is the flash backward of its blocks given O and L in place of the block's own
(P = exp(scale q k^T - L) is then the union softmax; rowsum(dO * O) is the merged one), through
`aten._scaled_dot_product_flash_attention_for_cpu_backward`, added into strided views of the gradients.

Every block is a strided view (head j's grid points s_j, s_j + r, ... cut into segments), so nothing
is gathered or scattered: q, k and v are copied only to zero-pad a sequence that is not a multiple of w.

Scope: whole sequences on CPU (Tq == S, no padding mask, D == Dv, a gradient only through the output).
Anything else (decoding over a cache, left padding, patterns that do not nest, `return_lse=True`,
other devices) is handed to `dilated.dilated_attention`, so this is always safe to call.
Registered as implementation "nested_flash" (priority 10, CPU) of op "dilated_attention".
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import dispatch
from .dilated import dilated_attention
from .naive import check_patterns, head_offsets

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def patterns_nest(segment_lengths: Sequence[int], dilation_rates: Sequence[int], offsets: list[Tensor]) -> bool:
    """True when the patterns nest (module docstring); `offsets` per pattern, LongTensor [H]."""
    w, r = list(segment_lengths), list(dilation_rates)
    if w[0] % r[0]:
        return False
    for i in range(1, len(w)):
        if not (w[i - 1] < w[i] and w[i] % w[i - 1] == 0 and r[i] % r[i - 1] == 0
                and w[i] % r[i] == 0 and w[i - 1] % r[i] == 0):
            return False
        if not torch.equal(offsets[i] % r[i - 1], offsets[i - 1]):
            return False
    return True


class _Pattern:
    """Pattern i over a sequence padded to a multiple of w: per head, its grid as a strided view.

    Head j's grid points are positions s_j, s_j + r, ...: `x[:, j, s_j::r]` [B, T_pad / r, D], which
    unflattens (without a copy) into blocks [B, G, L, D], G = T_pad / w segments of L = w / r points.
    """

    def __init__(self, w: int, r: int, offsets: list[int], parent_w: int | None, t: int) -> None:
        self.r, self.offsets = r, offsets
        self.t_pad = -(-t // w) * w
        self.n_seg, self.block = self.t_pad // w, w // r
        self.sub = None if parent_w is None else parent_w // r  # sub-block size L'

    def blocks(self, x: Tensor, head: int) -> Tensor:
        """x [B, H, N, ...] (N >= t_pad) -> head's blocks [B, G, L, ...], a view of x."""
        s = self.offsets[head]
        return x[:, head, s:self.t_pad:self.r].unflatten(1, (self.n_seg, self.block))

    def pairs(self) -> list[tuple[slice, slice, bool]]:
        """(query slice, key slice, causal) of the calls this pattern makes inside a block."""
        if self.sub is None:
            return [(slice(None), slice(None), True)]
        n = self.block // self.sub
        return [(slice(a * self.sub, (a + 1) * self.sub), slice(0, a * self.sub), False) for a in range(1, n)]


def _plan(t: int, segment_lengths, dilation_rates, offs: list[Tensor]) -> list[_Pattern]:
    """The patterns that add pairs to a sequence of t positions; `offs` per pattern, LongTensor [H]."""
    plan, parent = [], None
    for w, r, s in zip(segment_lengths, dilation_rates, offs):
        if parent is None or parent < t:  # a pattern whose parent segment already spans T adds nothing
            plan.append(_Pattern(w, r, s.tolist(), parent, t))
        parent = w
    return plan


def _pad_to(x: Tensor, n: int) -> Tensor:
    """Zero-pad (or cut) dim 2 to length n."""
    return x if x.shape[2] == n else F.pad(x, (0, 0, 0, n - x.shape[2]))


def _merge_into(o_acc: Tensor, lse_acc: Tensor, o: Tensor, lse: Tensor) -> None:
    """In place: (o_acc, lse_acc) <- the merge over disjoint key sets of it and (o, lse) (all finite)."""
    m = torch.maximum(lse_acc, lse)
    wa, wb = torch.exp(lse_acc - m), torch.exp(lse - m)
    z = wa + wb
    o_acc.mul_((wa / z)[..., None]).add_(o * (wb / z)[..., None])
    lse_acc.copy_(m + torch.log(z))


def _forward(q, k, v, plan: list[_Pattern], scale: float) -> tuple[Tensor, Tensor]:
    """Merged (o [B, H, N, D] fp32, lse [B, H, N] fp32), N = the largest padded length."""
    b, h, t, d = q.shape
    n = max(p.t_pad for p in plan)
    out = q.new_zeros(b, h, n, d, dtype=torch.float32)
    lse = q.new_full((b, h, n), float("-inf"), dtype=torch.float32)
    for p in plan:
        qp, kp, vp = (_pad_to(x, p.t_pad) for x in (q, k, v))
        for j in range(h):
            qb, kb, vb = p.blocks(qp, j), p.blocks(kp, j), p.blocks(vp, j)  # [B, G, L, D]
            o_acc, lse_acc = p.blocks(out, j), p.blocks(lse, j)  # views into the merged result
            for qs, ks, causal in p.pairs():
                o, l = _flash(qb[:, :, qs], kb[:, :, ks], vb[:, :, ks], 0.0, causal, scale=scale)
                if p.sub is None:  # the first pattern: nothing to merge with yet
                    o_acc.copy_(o)
                    lse_acc.copy_(l)
                else:  # every query here is on the first pattern's grid and sees itself: lse_acc finite
                    _merge_into(o_acc[:, :, qs], lse_acc[:, :, qs], o.float(), l)
    return out, lse


def _backward(q, k, v, out, lse, d_out, plan: list[_Pattern], scale: float):
    b, h, t, d = q.shape
    n = out.shape[2]
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # off-grid / padded rows: P stays finite
    out, d_out = out.to(q.dtype), _pad_to(d_out.to(q.dtype), n)
    grads = [torch.zeros(b, h, n, d, dtype=torch.float32, device=q.device) for _ in range(3)]
    for p in plan:
        qp, kp, vp = (_pad_to(x, p.t_pad) for x in (q, k, v))
        for j in range(h):
            qb, kb, vb, ob, dob, lb = (p.blocks(x, j) for x in (qp, kp, vp, out, d_out, lse))
            dqb, dkb, dvb = (p.blocks(g, j) for g in grads)
            for qs, ks, causal in p.pairs():
                dq, dk, dv = _flash_backward(dob[:, :, qs], qb[:, :, qs], kb[:, :, ks], vb[:, :, ks], ob[:, :, qs],
                                             lb[:, :, qs], 0.0, causal, scale=scale)
                dqb[:, :, qs] += dq
                dkb[:, :, ks] += dk
                dvb[:, :, ks] += dv
    return [g[:, :, :t].to(x.dtype) for g, x in zip(grads, (q, k, v))]


class _NestedDilated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan, scale):
        out, lse = _forward(q, k, v, plan, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.scale = plan, scale
        return out[:, :, : q.shape[2]].to(v.dtype)

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, lse, d_out, ctx.plan, ctx.scale)
        return dq, dk, dv, None, None


def dilated_attention_nested(
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
    """Twin of `dilated.dilated_attention` (same arguments and result); fast for whole sequences with
    nested patterns on CPU, and the reference itself for everything else."""
    check_patterns(segment_lengths, dilation_rates)
    b, h, tq, d = q.shape
    s_len = k.shape[2]
    simple = (q.device.type == "cpu" and valid is None and not return_lse and tq == s_len > 0
              and v.shape[-1] == d and q.dtype == k.dtype == v.dtype)
    if simple:
        offs = head_offsets(h, dilation_rates, offsets, q.device)
        simple = patterns_nest(segment_lengths, dilation_rates, offs)
    if not simple:
        return dilated_attention(q, k, v, segment_lengths, dilation_rates, offsets, valid, scale, return_lse)
    scale = d**-0.5 if scale is None else float(scale)
    plan = _plan(tq, segment_lengths, dilation_rates, offs)
    return _NestedDilated.apply(q, k, v, plan, scale)


dispatch.register("dilated_attention", "nested_flash", dilated_attention_nested,
                  available=lambda device: torch.device(device).type == "cpu", priority=10)
