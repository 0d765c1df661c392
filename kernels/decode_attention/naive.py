"""One decoding step of attention, pure PyTorch: the reference of the fused kernels.

q [B, H, 1, D] (one new query per head) over all S cached keys and values k, v [B, Hkv, S, D], no
mask, H a multiple of Hkv (grouped-query attention: query head i reads KV head i // (H // Hkv)).
The g = H / Hkv query heads of a group are g queries of one head against the same keys, so one
fused SDPA call reads each KV head once (SDPA's own `enable_gqa` reads it once per query head on
CPU, and expands the cache with `repeat_interleave` in its fp32 math path).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def decode_attention_reference(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """softmax(scale q k^T) v per head: q [B, H, 1, D], k, v [B, Hkv, S, D] -> [B, H, 1, D]."""
    b, h, _, d = q.shape
    hkv = k.shape[1]
    k, v = k.to(q.dtype), v.to(q.dtype)  # a cache stored in lower precision (fp16) is widened exactly
    out = F.scaled_dot_product_attention(q.reshape(b, hkv, h // hkv, d), k, v, scale=scale)  # [B, Hkv, g, D]
    return out.reshape(b, h, 1, d)
