"""Retention, chunkwise form, as Triton kernels (GPU; on CPU through Triton's interpreter).

Same function, signature and conventions as `chunk.py` (read its docstring); the maths per chunk of
BT positions, with start state S_n and in-chunk cumulative log decays b_i (i = 0..BT-1):

    o_i     = exp(b_i) q_i S_n + sum_{m <= i} exp(b_i - b_m) (q_i . k_m) v_m
    S_{n+1} = exp(B) S_n + sum_m exp(B - b_m) k_m^T v_m,        B = b at the chunk's last real token

Retention (a fixed decay g_h per head) has b_i = (i + 1) g_h, and every exponent is formed as an
integer distance times g_h, exactly as the reference does (no accumulated sums). Gated retention
(`kernels/gated_retention/triton_chunk.py`, per-token g) shares these kernels with b = cumsum(g)
inside the chunk. Every exponent is <= 0 (masked to -inf before exp), so nothing overflows.

Kernels (one program per (batch, head) and tile; all accumulation in fp32):

- `_state_fwd`: the sequential pass over chunks: stores each chunk's start state (fp32) and the final
  state; grid (K tiles, V tiles, B*H).
- `_out_fwd`: every chunk in parallel: intra-chunk masked parallel form + q S_n; grid (V tiles, NT, B*H).
- `_dstate_bwd`: the reverse pass: the gradient of the state leaving each chunk (and of the initial
  state); grid (K tiles, V tiles, B*H).
- `_dqk_bwd`: every chunk in parallel: dq, dk and the per-token gradient of the log decay; the whole Dk
  in one tile, Dv in tiles; grid (NT, B*H).
- `_dv_bwd`: every chunk and V tile in parallel: dv; grid (V tiles, NT, B*H).

The chunk start states are recomputed in the backward (not saved), so autograd keeps only q, k, v,
the decays and the initial state.

Backward maths (dS_{n+1}: gradient of the state leaving chunk n; dS_n = exp(B) dS_{n+1} + sum_i
exp(b_i) q_i^T do_i, dS_NT = gradient of the returned final state):

    dq_i = exp(b_i) do_i S_n^T + sum_{m <= i} exp(b_i - b_m) (do_i . v_m) k_m
    dk_m = exp(B - b_m) v_m dS_{n+1}^T + sum_{i >= m} exp(b_i - b_m) (do_i . v_m) q_i
    dv_m = exp(B - b_m) k_m dS_{n+1} + sum_{i >= m} exp(b_i - b_m) (q_i . k_m) do_i
    d b_i = sum_{m < i} A_im - sum_{j > i} A_ji + exp(b_i) q_i S_n do_i^T - T_i   (+ exp(B) <S_n, dS_{n+1}>
            + sum_m T_m at the last token),  A_im = exp(b_i - b_m) (q_i . k_m) (do_i . v_m),
            T_m = exp(B - b_m) k_m dS_{n+1} v_m^T   (= q_i . dq_i - k_i . dk_i, without the distance-0 terms)
    d g_j = sum_{i >= j in the chunk} d b_i
    retention: d g_h = sum over chunks and batch of sum_{i>m} (i - m) A_im + sum_i (i + 1) exp(b_i) q_i S_n do_i^T
               + sum_m (L - 1 - m) T_m + L exp(B) <S_n, dS_{n+1}>   (L real tokens in the chunk)

Precision: everything is loaded into fp32 and accumulated in fp32. `tl.dot` runs as "tf32x3" (about
fp32 accuracy on tensor cores) for fp32 inputs and in TF32 for fp16/bf16 inputs (whose own mantissa is
no wider); the interpreter computes in plain fp32.

T need not be a multiple of BT (masked loads; the tail's steps are frozen as in the reference). Dk and
Dv need not be powers of two (tiles are padded by masking) but must be <= 256. `chunk_size` only
picks the tile BT (a power of two in [16, 64]; at most 32 for fp32 or Dk > 64): the result does not depend on it beyond
rounding. Triton is imported lazily, on first use (`kernels/triton_utils.py`), so importing this module
never imports triton. Registered as implementation "triton" (priority 20) of op "chunk_retention",
beside this module's "reference" registration of `chunk.chunk_retention`.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .. import dispatch
from ..triton_utils import jitted, pow2, triton_available
from .chunk import chunk_retention
from .naive import _check

tl = None  # bound to triton.language by `jitted` on first use (the kernels' annotations are strings)

MAX_HEAD_DIM = 256


def _precision(dtype: torch.dtype) -> str:
    return "tf32x3" if dtype in (torch.float32, torch.float64) else "tf32"


# ------------------------------------------------------------------------------------------------
# Kernels. FIXED: g_ptr is log_decay [H] (retention); else g_ptr is log_decay [B*H, T] (gated).
# ------------------------------------------------------------------------------------------------


def _state_fwd(k_ptr, v_ptr, g_ptr, h0_ptr, h_ptr, ht_ptr, T, H, K, V, NT,
               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, FIXED: tl.constexpr,
               HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, PREC: tl.constexpr):
    i_k = tl.program_id(0)
    i_v = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    offs_t = tl.arange(0, BT)
    offs_k = i_k * BK + tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    m_kv = (offs_k < K)[:, None] & (offs_v < V)[None, :]
    p_kv = offs_k[:, None] * V + offs_v[None, :]
    s = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        s += tl.load(h0_ptr + i_bh * K * V + p_kv, mask=m_kv, other=0.0).to(tl.float32)
    if FIXED:
        gh = tl.load(g_ptr + i_bh % H).to(tl.float32)
    for n in range(0, NT):
        tl.store(h_ptr + (i_bh * NT + n) * K * V + p_kv, s, mask=m_kv)
        t = n * BT + offs_t
        m_t = t < T
        k_t = tl.load(k_ptr + i_bh * T * K + t[None, :] * K + offs_k[:, None],
                      mask=(offs_k < K)[:, None] & m_t[None, :], other=0.0).to(tl.float32)  # [BK, BT]
        v_c = tl.load(v_ptr + i_bh * T * V + t[:, None] * V + offs_v[None, :],
                      mask=m_t[:, None] & (offs_v < V)[None, :], other=0.0).to(tl.float32)  # [BT, BV]
        if FIXED:
            last = tl.minimum(T - n * BT, BT) - 1  # local index of the last real token
            to_end = tl.exp(tl.where(offs_t <= last, (last - offs_t).to(tl.float32) * gh, float("-inf")))
            total = tl.exp((last + 1).to(tl.float32) * gh)
        else:
            g = tl.load(g_ptr + i_bh * T + t, mask=m_t, other=0.0).to(tl.float32)
            b = tl.cumsum(g, axis=0)
            b_last = tl.sum(tl.where(offs_t == BT - 1, b, 0.0), axis=0)  # padded g are 0: frozen
            to_end = tl.exp(b_last - b)
            total = tl.exp(b_last)
        s = s * total + tl.dot(k_t * to_end[None, :], v_c, input_precision=PREC)
    if STORE_HT:
        tl.store(ht_ptr + i_bh * K * V + p_kv, s, mask=m_kv)


def _out_fwd(q_ptr, k_ptr, v_ptr, g_ptr, h_ptr, o_ptr, T, H, K, V, NT,
             BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, FIXED: tl.constexpr, PREC: tl.constexpr):
    i_v = tl.program_id(0)
    n = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    offs_t = tl.arange(0, BT)
    offs_v = i_v * BV + tl.arange(0, BV)
    t = n * BT + offs_t
    m_t = t < T
    m_v = offs_v < V
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    scores = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        offs_k = i_k * BK + tl.arange(0, BK)
        m_k = offs_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        q_c = tl.load(q_ptr + i_bh * T * K + t[:, None] * K + offs_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        k_c = tl.load(k_ptr + i_bh * T * K + t[:, None] * K + offs_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        s = tl.load(h_ptr + (i_bh * NT + n) * K * V + offs_k[:, None] * V + offs_v[None, :],
                    mask=m_k[:, None] & m_v[None, :], other=0.0)
        scores += tl.dot(q_c, tl.trans(k_c), input_precision=PREC)
        acc += tl.dot(q_c, s, input_precision=PREC)
    causal = offs_t[:, None] >= offs_t[None, :]
    if FIXED:
        gh = tl.load(g_ptr + i_bh % H).to(tl.float32)
        q_decay = tl.exp((offs_t + 1).to(tl.float32) * gh)
        dist = (offs_t[:, None] - offs_t[None, :]).to(tl.float32)
        decay = tl.exp(tl.where(causal, dist * gh, float("-inf")))
    else:
        g = tl.load(g_ptr + i_bh * T + t, mask=m_t, other=0.0).to(tl.float32)
        b = tl.cumsum(g, axis=0)
        q_decay = tl.exp(b)
        decay = tl.exp(tl.where(causal, b[:, None] - b[None, :], float("-inf")))
    v_c = tl.load(v_ptr + i_bh * T * V + t[:, None] * V + offs_v[None, :],
                  mask=m_t[:, None] & m_v[None, :], other=0.0).to(tl.float32)
    o = acc * q_decay[:, None] + tl.dot(scores * decay, v_c, input_precision=PREC)
    tl.store(o_ptr + i_bh * T * V + t[:, None] * V + offs_v[None, :], o.to(o_ptr.dtype.element_ty),
             mask=m_t[:, None] & m_v[None, :])


def _dstate_bwd(q_ptr, do_ptr, g_ptr, dht_ptr, dh_ptr, dh0_ptr, T, H, K, V, NT,
                BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, FIXED: tl.constexpr,
                HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, PREC: tl.constexpr):
    i_k = tl.program_id(0)
    i_v = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    offs_t = tl.arange(0, BT)
    offs_k = i_k * BK + tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    m_kv = (offs_k < K)[:, None] & (offs_v < V)[None, :]
    p_kv = offs_k[:, None] * V + offs_v[None, :]
    ds = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        ds += tl.load(dht_ptr + i_bh * K * V + p_kv, mask=m_kv, other=0.0).to(tl.float32)
    if FIXED:
        gh = tl.load(g_ptr + i_bh % H).to(tl.float32)
    for r in range(0, NT):
        n = NT - 1 - r
        tl.store(dh_ptr + (i_bh * NT + n) * K * V + p_kv, ds, mask=m_kv)  # gradient of the state leaving n
        t = n * BT + offs_t
        m_t = t < T
        q_t = tl.load(q_ptr + i_bh * T * K + t[None, :] * K + offs_k[:, None],
                      mask=(offs_k < K)[:, None] & m_t[None, :], other=0.0).to(tl.float32)  # [BK, BT]
        do_c = tl.load(do_ptr + i_bh * T * V + t[:, None] * V + offs_v[None, :],
                       mask=m_t[:, None] & (offs_v < V)[None, :], other=0.0).to(tl.float32)  # [BT, BV]
        if FIXED:
            last = tl.minimum(T - n * BT, BT) - 1
            q_decay = tl.exp((offs_t + 1).to(tl.float32) * gh)
            total = tl.exp((last + 1).to(tl.float32) * gh)
        else:
            g = tl.load(g_ptr + i_bh * T + t, mask=m_t, other=0.0).to(tl.float32)
            b = tl.cumsum(g, axis=0)
            q_decay = tl.exp(b)
            total = tl.exp(tl.sum(tl.where(offs_t == BT - 1, b, 0.0), axis=0))
        ds = ds * total + tl.dot(q_t * q_decay[None, :], do_c, input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0_ptr + i_bh * K * V + p_kv, ds, mask=m_kv)


def _dqk_bwd(q_ptr, k_ptr, v_ptr, g_ptr, h_ptr, do_ptr, dh_ptr, dq_ptr, dk_ptr, dg_ptr, T, H, K, V, NT,
             BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, FIXED: tl.constexpr, PREC: tl.constexpr):
    """dq, dk and the per-token d log decay of one chunk: the whole Dk in one tile, Dv in tiles."""
    n = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    offs_t = tl.arange(0, BT)
    offs_k = tl.arange(0, BK)
    t = n * BT + offs_t
    m_t = t < T
    m_k = offs_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_tk = i_bh * T * K + t[:, None] * K + offs_k[None, :]
    dq_acc = tl.zeros([BT, BK], dtype=tl.float32)  # do S_n^T
    dk_acc = tl.zeros([BT, BK], dtype=tl.float32)  # v dS_{n+1}^T
    dp = tl.zeros([BT, BT], dtype=tl.float32)  # do v^T
    s_ds = tl.zeros([BV], dtype=tl.float32)  # column sums of S_n * dS_{n+1}
    for i_v in range(0, tl.cdiv(V, BV)):
        offs_v = i_v * BV + tl.arange(0, BV)
        m_v = offs_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        p_tv = i_bh * T * V + t[:, None] * V + offs_v[None, :]
        p_kv = (i_bh * NT + n) * K * V + offs_k[:, None] * V + offs_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        v_c = tl.load(v_ptr + p_tv, mask=m_tv, other=0.0).to(tl.float32)
        do_c = tl.load(do_ptr + p_tv, mask=m_tv, other=0.0).to(tl.float32)
        s = tl.load(h_ptr + p_kv, mask=m_kv, other=0.0)
        ds = tl.load(dh_ptr + p_kv, mask=m_kv, other=0.0)
        dp += tl.dot(do_c, tl.trans(v_c), input_precision=PREC)
        dq_acc += tl.dot(do_c, tl.trans(s), input_precision=PREC)
        dk_acc += tl.dot(v_c, tl.trans(ds), input_precision=PREC)
        s_ds += tl.sum(s * ds, axis=0)
    last = tl.minimum(T - n * BT, BT) - 1  # local index of the last real token
    causal = offs_t[:, None] >= offs_t[None, :]
    if FIXED:
        gh = tl.load(g_ptr + i_bh % H).to(tl.float32)
        q_decay = tl.exp((offs_t + 1).to(tl.float32) * gh)
        to_end = tl.exp(tl.where(offs_t <= last, (last - offs_t).to(tl.float32) * gh, float("-inf")))
        total = tl.exp((last + 1).to(tl.float32) * gh)
        decay = tl.exp(tl.where(causal, (offs_t[:, None] - offs_t[None, :]).to(tl.float32) * gh, float("-inf")))
    else:
        g = tl.load(g_ptr + i_bh * T + t, mask=m_t, other=0.0).to(tl.float32)
        b = tl.cumsum(g, axis=0)
        b_last = tl.sum(tl.where(offs_t == BT - 1, b, 0.0), axis=0)
        q_decay = tl.exp(b)
        to_end = tl.exp(b_last - b)
        total = tl.exp(b_last)
        decay = tl.exp(tl.where(causal, b[:, None] - b[None, :], float("-inf")))
    q_c = tl.load(q_ptr + p_tk, mask=m_tk, other=0.0).to(tl.float32)
    k_c = tl.load(k_ptr + p_tk, mask=m_tk, other=0.0).to(tl.float32)
    dp = dp * decay
    dq_inter = dq_acc * q_decay[:, None]
    dk_inter = dk_acc * to_end[:, None]
    dq = dq_inter + tl.dot(dp, k_c, input_precision=PREC)
    dk = dk_inter + tl.dot(tl.trans(dp), q_c, input_precision=PREC)
    tl.store(dq_ptr + p_tk, dq.to(dq_ptr.dtype.element_ty), mask=m_tk)
    tl.store(dk_ptr + p_tk, dk.to(dk_ptr.dtype.element_ty), mask=m_tk)
    # Gradient of the cumulative log decays b, then of the per-token log decays g. Terms at distance 0
    # (the diagonal of the chunk, and the last token's own state term) do not depend on the decay: they
    # are left out rather than added and subtracted (which would leave rounding noise).
    a = tl.dot(q_c, tl.trans(k_c), input_precision=PREC) * dp  # (q_i . k_m) D_im (do_i . v_m)
    a = tl.where(offs_t[:, None] > offs_t[None, :], a, 0.0)
    t_m = tl.where(offs_t == last, 0.0, tl.sum(k_c * dk_inter, axis=1))  # exp(B - b_m) k_m dS v_m^T
    qs = tl.sum(q_c * dq_inter, axis=1)  # exp(b_i) q_i S_n do_i^T
    s_term = total * tl.sum(s_ds, axis=0)  # exp(B) <S_n, dS_{n+1}>
    if FIXED:
        # b_i = (i + 1) g: weight every term by its integer distance (as autograd of the reference does),
        # one value per chunk, summed over chunks and batch by the caller.
        dist = (offs_t[:, None] - offs_t[None, :]).to(tl.float32)
        dg_chunk = tl.sum(tl.sum(a * dist, axis=1), axis=0) + tl.sum(qs * (offs_t + 1).to(tl.float32), axis=0) \
            + tl.sum(t_m * (last - offs_t).to(tl.float32), axis=0) + s_term * (last + 1).to(tl.float32)
        tl.store(dg_ptr + i_bh * NT + n, dg_chunk)
    else:
        db = tl.sum(a, axis=1) - tl.sum(a, axis=0) + qs - t_m
        db += tl.where(offs_t == last, s_term + tl.sum(t_m, axis=0), 0.0)
        dg = tl.cumsum(db, axis=0, reverse=True)
        tl.store(dg_ptr + i_bh * T + t, dg, mask=m_t)


def _dv_bwd(q_ptr, k_ptr, g_ptr, do_ptr, dh_ptr, dv_ptr, T, H, K, V, NT,
            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, FIXED: tl.constexpr, PREC: tl.constexpr):
    """dv of one chunk and V tile: (q k^T * D)^T do + (k * exp(B - b)) dS_{n+1}, Dk in tiles."""
    i_v = tl.program_id(0)
    n = tl.program_id(1)
    i_bh = tl.program_id(2).to(tl.int64)
    offs_t = tl.arange(0, BT)
    offs_v = i_v * BV + tl.arange(0, BV)
    t = n * BT + offs_t
    m_t = t < T
    m_v = offs_v < V
    last = tl.minimum(T - n * BT, BT) - 1
    causal = offs_t[:, None] >= offs_t[None, :]
    if FIXED:
        gh = tl.load(g_ptr + i_bh % H).to(tl.float32)
        to_end = tl.exp(tl.where(offs_t <= last, (last - offs_t).to(tl.float32) * gh, float("-inf")))
        decay = tl.exp(tl.where(causal, (offs_t[:, None] - offs_t[None, :]).to(tl.float32) * gh, float("-inf")))
    else:
        g = tl.load(g_ptr + i_bh * T + t, mask=m_t, other=0.0).to(tl.float32)
        b = tl.cumsum(g, axis=0)
        b_last = tl.sum(tl.where(offs_t == BT - 1, b, 0.0), axis=0)
        to_end = tl.exp(b_last - b)
        decay = tl.exp(tl.where(causal, b[:, None] - b[None, :], float("-inf")))
    scores = tl.zeros([BT, BT], dtype=tl.float32)
    dv = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        offs_k = i_k * BK + tl.arange(0, BK)
        m_k = offs_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        q_c = tl.load(q_ptr + i_bh * T * K + t[:, None] * K + offs_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        k_c = tl.load(k_ptr + i_bh * T * K + t[:, None] * K + offs_k[None, :], mask=m_tk, other=0.0).to(tl.float32)
        ds = tl.load(dh_ptr + (i_bh * NT + n) * K * V + offs_k[:, None] * V + offs_v[None, :],
                     mask=m_k[:, None] & m_v[None, :], other=0.0)
        scores += tl.dot(q_c, tl.trans(k_c), input_precision=PREC)
        dv += tl.dot(k_c, ds, input_precision=PREC)
    do_c = tl.load(do_ptr + i_bh * T * V + t[:, None] * V + offs_v[None, :],
                   mask=m_t[:, None] & m_v[None, :], other=0.0).to(tl.float32)
    dv = dv * to_end[:, None] + tl.dot(tl.trans(scores * decay), do_c, input_precision=PREC)
    tl.store(dv_ptr + i_bh * T * V + t[:, None] * V + offs_v[None, :], dv.to(dv_ptr.dtype.element_ty),
             mask=m_t[:, None] & m_v[None, :])


# ------------------------------------------------------------------------------------------------
# Launchers and the autograd function (shared with gated retention).
# ------------------------------------------------------------------------------------------------


def _tiles(dk: int, dv: int, chunk_size: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BT, BK for the whole Dk, BK, BV). Chosen from compiled sm_80 / sm_90 resource usage so that the
    backward's [BT, Dk] tiles fit in registers (fp32 operands of tl.dot take twice the space)."""
    if dk > MAX_HEAD_DIM or dv > MAX_HEAD_DIM:
        raise ValueError(f"Triton chunked retention supports head dims up to {MAX_HEAD_DIM}, got Dk={dk}, Dv={dv}")
    bk_full = pow2(dk)
    bt = min(64, pow2(min(chunk_size, 64)))
    if dtype in (torch.float32, torch.float64) or bk_full > 64:
        bt = min(bt, 32)
    if bk_full > 128:
        bt = 16
    return bt, bk_full, min(64, bk_full), min(64, pow2(dv))


def _states(k, v, g, h0, fixed, bt, bk, bv, prec, store_final):
    bh, t, dk = k.shape
    dv = v.shape[-1]
    nt = -(-t // bt)
    h = torch.empty(bh, nt, dk, dv, dtype=torch.float32, device=k.device)
    ht = torch.empty(bh, dk, dv, dtype=torch.float32, device=k.device) if store_final else h
    grid = (-(-dk // bk), -(-dv // bv), bh)
    jitted(_state_fwd)[grid](k, v, g, h0 if h0 is not None else h, h, ht, t, _heads(g, fixed), dk, dv, nt,
                             BT=bt, BK=bk, BV=bv, FIXED=fixed, HAS_H0=h0 is not None, STORE_HT=store_final,
                             PREC=prec)
    return h, (ht if store_final else None)


def _heads(g: Tensor, fixed: bool) -> int:
    return g.shape[0] if fixed else 1  # only read when FIXED (the head of row (b, h) is row % H)


class ChunkRetentionFunction(torch.autograd.Function):
    """(q, k, v [BH, T, D] contiguous, g: [H] if fixed else [BH, T] fp32, h0 [BH, Dk, Dv] fp32 or None)
    -> (o [BH, T, Dv] in v's dtype, final state [BH, Dk, Dv] fp32). Gradients for all tensor inputs
    (for a fixed decay the kernel writes one value per (row, chunk), summed to [H] here)."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, fixed: bool, chunk_size: int):
        bh, t, dk = q.shape
        dv = v.shape[-1]
        bt, bk_full, bk, bv = _tiles(dk, dv, chunk_size, q.dtype)
        prec = _precision(q.dtype)
        h, ht = _states(k, v, g, h0, fixed, bt, bk, bv, prec, store_final=True)
        o = torch.empty(bh, t, dv, dtype=v.dtype, device=v.device)
        nt = h.shape[1]
        jitted(_out_fwd)[(-(-dv // bv), nt, bh)](q, k, v, g, h, o, t, _heads(g, fixed), dk, dv, nt,
                                                  BT=bt, BK=bk, BV=bv, FIXED=fixed, PREC=prec, num_warps=8)
        ctx.save_for_backward(q, k, v, g, h0)
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        ctx.fixed, ctx.tiles, ctx.prec = fixed, (bt, bk_full, bk, bv), prec
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0 = ctx.saved_tensors
        fixed, (bt, bk_full, bk, bv), prec = ctx.fixed, ctx.tiles, ctx.prec
        bh, t, dk = q.shape
        dv = v.shape[-1]
        heads = _heads(g, fixed)
        h, _ = _states(k, v, g, h0, fixed, bt, bk, bv, prec, store_final=False)  # recomputed, not saved
        nt = h.shape[1]
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dh = torch.empty_like(h)
        dh0 = torch.empty(bh, dk, dv, dtype=torch.float32, device=q.device) if h0 is not None else dh
        grid = (-(-dk // bk), -(-dv // bv), bh)
        jitted(_dstate_bwd)[grid](q, do, g, dht.contiguous() if dht is not None else dh, dh, dh0, t, heads, dk, dv,
                                  nt, BT=bt, BK=bk, BV=bv, FIXED=fixed, HAS_DHT=dht is not None,
                                  STORE_DH0=h0 is not None, PREC=prec)
        dq, dk_, dv_ = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dg = torch.empty(bh, nt if fixed else t, dtype=torch.float32, device=q.device)  # fixed: per chunk
        jitted(_dqk_bwd)[(nt, bh)](q, k, v, g, h, do, dh, dq, dk_, dg, t, heads, dk, dv, nt,
                                   BT=bt, BK=bk_full, BV=min(bv, 32), FIXED=fixed, PREC=prec, num_warps=8)
        jitted(_dv_bwd)[(-(-dv // bv), nt, bh)](q, k, g, do, dh, dv_, t, heads, dk, dv, nt,
                                                BT=bt, BK=bk, BV=bv, FIXED=fixed, PREC=prec, num_warps=8)
        if fixed:  # per chunk -> per head: rows are (b, h) with h fastest
            dg = dg.view(-1, heads, nt).sum(dim=(0, 2))
        return dq, dk_, dv_, dg.to(g.dtype), (dh0.to(h0.dtype) if h0 is not None else None), None, None


def run_chunk(q, k, v, g, state, fixed: bool, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Shared wrapper: [B, H, T, D] in and out, the kernels on [B*H, T, D] views."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, h, t, dk = q.shape
    dv = v.shape[-1]
    s0 = None if state is None else state.float().reshape(b * h, dk, dv).contiguous()
    if t == 0:
        s = q.new_zeros(b, h, dk, dv, dtype=torch.float32) if state is None else state.float()
        return v.new_zeros(b, h, 0, dv), s
    flat = [x.reshape(b * h, t, x.shape[-1]).contiguous() for x in (q, k, v)]
    gf = g.float().contiguous() if fixed else g.float().reshape(b * h, t).contiguous()
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():  # launch on q's GPU
        o, s = ChunkRetentionFunction.apply(*flat, gf, s0, fixed, chunk_size)
    return o.view(b, h, t, dv), s.view(b, h, dk, dv)


def chunk_retention_triton(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, chunk_size: int = 64, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Triton twin of `chunk.chunk_retention`: o [B, H, T, Dv] (dtype of v), final state [B, H, Dk, Dv] fp32.
    Differentiable in q, k, v, log_decay and state."""
    _check(q, k, v, log_decay)
    return run_chunk(q, k, v, log_decay, state, fixed=True, chunk_size=chunk_size)


dispatch.register("chunk_retention", "reference", chunk_retention)
dispatch.register("chunk_retention", "triton", chunk_retention_triton, available=triton_available, priority=20)
