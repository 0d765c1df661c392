"""Softmax attention over a KV cache, with grouped-query attention (GQA).

Queries have H heads, keys and values Hkv heads, H a multiple of Hkv: query head i reads KV head
i // (H // Hkv) (the layout of `repeat_interleave`, and of SDPA's `enable_gqa`). GQA shrinks the
cache, and the bytes read per decoded token, by H / Hkv (YOCO 3B: 24 heads, 8 KV heads; BitNet
b1.58 2B4T: 20 heads, 5 KV heads).

Paths:
- whole sequences, prefill, masked continuation: `F.scaled_dot_product_attention(..., enable_gqa=True)`.
- one query with no mask (decoding without padding): op "decode_attention" of `latentlm.kernels`,
  which reads each KV head once for all the query heads sharing it: the fused C++ kernel on CPU,
  elsewhere one SDPA call with a group's query heads as queries of one head (SDPA's own enable_gqa
  reads a KV head once per query head on CPU). Timings: BENCHMARKS.md "Backbones", "Decode attention".
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

import latentlm.kernels.decode_attention  # noqa: F401  (registers the decode_attention implementations)
from latentlm.kernels import dispatch


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
    """q [B, H, Tq, Dh] over k, v [B, Hkv, S, Dh] -> [B, H, Tq, Dh].

    `mask` [B, 1, Tq, S] bool (True: may attend) or None; `causal` is SDPA's top-left aligned causal
    mask, for queries and keys at the same positions (Tq == S). k and v may be stored in lower
    precision than q (an fp16 or bf16 cache, `kv_dtype`): the decode kernel reads them so, SDPA gets them
    widened.
    """
    groups = q.shape[1] // k.shape[1]
    if q.shape[1] != groups * k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} KV heads")
    if q.shape[2] == 1 and mask is None and not causal:
        return dispatch.choose("decode_attention", q.device).fn(q, k, v)
    k, v = k.to(q.dtype), v.to(q.dtype)  # no copy when they already match
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=groups > 1)
