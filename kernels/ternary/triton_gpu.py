"""Ternary matmul (W1.58 A8) as a Triton kernel over the packed 2-bit weights (GPU; on CPU through
Triton's interpreter).

    y = (x_q @ W_q^T) / x_scale * w_scale        x_q int8 [M, K], x_scale [M, 1], packed W [N, K]

The packed format is `reference.PackedTernary` (read its docstring): per row, blocks of `block_size`
weights, Q = block_size / 4 bytes each, byte j of a block holding the weights at block offsets j, j+Q,
j+2Q, j+3Q in bits [1:0], [3:2], [5:4], [7:6]. The kernel walks the blocks of K; for each tile of BQ
bytes of a block it loads the bytes of BN weight rows once ([BN, BQ] uint8), and for each of the four
2-bit fields shifts and masks them in registers (code - 1 in {-1, 0, 1}, int8) and multiplies them
with the matching contiguous run of BQ activations ([BM, BQ] int8). Nothing is unpacked in memory.

Accumulation is exact:

- on GPUs with int8 tensor cores (compute capability >= 8.0) and in the interpreter, `tl.dot` on int8
  operands with an int32 accumulator;
- elsewhere (older GPUs) the same small integers go through `tl.dot` as fp16 operands (|x_q| <= 128 and
  w in {-1, 0, 1} are exact in fp16, and so are their products) with an fp32 accumulator, which is
  exact while every partial sum stays below 2**24: |acc| <= 128 K, so K <= 131_072 (checked).

Dequantisation repeats the reference's float32 operations in its order: acc (exact int32) converted to
fp32, divided by x_scale with round-to-nearest division (`div_rn`; Triton's plain `/` may be approximate
on GPU), times w_scale. So the result is bit-identical to `ternary_matmul_reference` on the same inputs.

Registered as implementation "triton" of op "ternary_matmul" (x_q, x_scale, packed) -> y fp32 [M, N];
the "reference" of that op is registered beside the CPU kernel.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .. import dispatch
from ..triton_utils import jitted, pow2, triton_available
from .reference import PackedTernary

tl = None  # bound to triton.language by `jitted` on first use (the kernel's annotations are strings)

EXACT_FP32_K = 131_072  # 128 * K < 2**24: partial sums exact in fp32 (the non-int8 path)


def _ternary_matmul_kernel(x_ptr, xs_ptr, w_ptr, ws_ptr, y_ptr, M, N, K, ROW_BYTES, N_BLOCKS, Q,
                           BM: tl.constexpr, BN: tl.constexpr, BQ: tl.constexpr, INT_DOT: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_j = tl.arange(0, BQ)
    m_m = offs_m < M
    m_n = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * K
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * ROW_BYTES
    if INT_DOT:
        acc = tl.zeros([BM, BN], dtype=tl.int32)
    else:
        acc = tl.zeros([BM, BN], dtype=tl.float32)
    block_size = 4 * Q
    for blk in range(0, N_BLOCKS):
        for j0 in range(0, Q, BQ):
            j = j0 + offs_j
            m_j = j < Q
            # [BN, BQ] packed bytes; out-of-range bytes read as 0b01010101 (four zero weights)
            packed = tl.load(w_rows + blk * Q + j[None, :], mask=m_n[:, None] & m_j[None, :], other=85)
            for field in tl.static_range(4):
                w = ((packed >> (2 * field)) & 3).to(tl.int8) - 1  # [BN, BQ] in {-1, 0, 1}
                kk = blk * block_size + field * Q + j  # [BQ] the weights' columns
                x = tl.load(x_rows + kk[None, :], mask=m_m[:, None] & (m_j & (kk < K))[None, :], other=0)
                if INT_DOT:
                    acc += tl.dot(x, tl.trans(w), out_dtype=tl.int32)
                else:
                    acc += tl.dot(x.to(tl.float16), tl.trans(w.to(tl.float16)), out_dtype=tl.float32)
    acc_f = acc.to(tl.float32)  # exact either way (|acc| < 2**24 on the fp32 path)
    xs = tl.load(xs_ptr + offs_m, mask=m_m, other=1.0)
    ws = tl.load(ws_ptr)
    y = tl.math.div_rn(acc_f, tl.broadcast_to(xs[:, None], (BM, BN))) * ws  # div_rn does not broadcast
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :], y, mask=m_m[:, None] & m_n[None, :])


def _int_dot_supported(device: torch.device) -> bool:
    if device.type != "cuda":
        return True  # the interpreter: numpy integer matmul
    return torch.cuda.get_device_capability(device) >= (8, 0)


def ternary_matmul_triton(x_q: Tensor, x_scale: Tensor, packed: PackedTernary) -> Tensor:
    """y = (x_q @ W_q^T) / x_scale * packed.scale, fp32 [M, N], bit-identical to the reference.

    x_q int8 [M, K]; x_scale [M, 1] (from `quantize_activations`); packed: a `PackedTernary` [N, K] on
    the same device.
    """
    n, k = packed.shape
    if x_q.dtype != torch.int8 or x_q.dim() != 2 or x_q.shape[1] != k:
        raise ValueError(f"x_q must be int8 [M, {k}], got {x_q.dtype} {tuple(x_q.shape)}")
    m = x_q.shape[0]
    if x_scale.numel() != m:
        raise ValueError(f"x_scale must hold one scale per row ([{m}, 1]), got {tuple(x_scale.shape)}")
    data = packed.data
    bs = packed.block_size
    if data.dtype != torch.uint8 or data.shape[0] != n or (data.shape[1] * 4) % bs or data.shape[1] * 4 < k:
        raise ValueError(f"packed data {tuple(data.shape)} {data.dtype} does not fit shape {packed.shape}, block {bs}")
    if data.device != x_q.device:
        raise ValueError(f"x_q is on {x_q.device} but the packed weight on {data.device}")
    y = torch.empty(m, n, dtype=torch.float32, device=x_q.device)
    if m == 0 or n == 0:
        return y
    int_dot = _int_dot_supported(x_q.device)
    if not int_dot and k > EXACT_FP32_K:
        raise ValueError(f"K = {k} > {EXACT_FP32_K}: fp32 accumulation would not be exact on this GPU")
    q = bs // 4
    bq = min(64, pow2(q, lo=32))  # int8 tl.dot needs K >= 32
    bm = min(64, pow2(m))
    bn = 64
    x = x_q.contiguous()
    xs = x_scale.float().reshape(m).contiguous()
    ws = packed.scale.to(device=x.device, dtype=torch.float32).reshape(1)
    grid = (-(-m // bm), -(-n // bn))
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():  # launch on x's GPU
        jitted(_ternary_matmul_kernel)[grid](x, xs, data.contiguous(), ws, y, m, n, k, data.shape[1],
                                             data.shape[1] * 4 // bs, q, BM=bm, BN=bn, BQ=bq, INT_DOT=int_dot)
    return y


dispatch.register("ternary_matmul", "triton", ternary_matmul_triton, available=triton_available, priority=20)
