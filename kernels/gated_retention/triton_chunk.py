"""Gated retention, chunkwise form, as Triton kernels (GPU; on CPU through Triton's interpreter).

Same function, signature and conventions as `chunk.py`: log_decay [B, H, T] per head and token. The
kernels are those of `kernels/retention/triton_chunk.py` (read its docstring for the maths, tiling and
backward) run with FIXED=False: inside each chunk of BT tokens the cumulative log decays
b_i = g_1 + ... + g_i are a `tl.cumsum` in fp32, the padded tail has g = 0 (the state is unchanged),
and the per-token gradient d g_j = sum_{i >= j in the chunk} d b_i is a reverse cumsum.
"""
from __future__ import annotations

from torch import Tensor

from .. import dispatch
from ..retention.triton_chunk import run_chunk
from ..triton_utils import triton_available
from .chunk import chunk_gated_retention


def chunk_gated_retention_triton(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, chunk_size: int = 64, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Triton twin of `chunk.chunk_gated_retention`: o [B, H, T, Dv] (dtype of v), final state
    [B, H, Dk, Dv] fp32. Differentiable in q, k, v, log_decay and state."""
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"expected q, k [B, H, T, Dk] and v [B, H, T, Dv], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if log_decay.shape != q.shape[:3]:
        raise ValueError(f"log_decay must be [B, H, T] = {list(q.shape[:3])}, got {tuple(log_decay.shape)}")
    return run_chunk(q, k, v, log_decay, state, fixed=False, chunk_size=chunk_size)


dispatch.register("chunk_gated_retention", "reference", chunk_gated_retention)
dispatch.register("chunk_gated_retention", "triton", chunk_gated_retention_triton, available=triton_available,
                  priority=20)
