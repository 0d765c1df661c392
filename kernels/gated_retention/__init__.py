"""Gated retention (YOCO's gRet, fla's "simple GLA"): retention with a data-dependent scalar decay
per head and token. Three forms of the same maths, pure PyTorch, fp32 inside:

- `parallel_gated_retention` (naive.py): O(T^2) oracle;
- `recurrent_gated_retention` (recurrent.py): one step per token, for decoding;
- `chunk_gated_retention` (chunk.py): chunkwise, for training and prefill.

q, k [B, H, T, Dk]; v [B, H, T, Dv]; log_decay [B, H, T] (<= 0); state [B, H, Dk, Dv] fp32.
"""
from .chunk import chunk_gated_retention
from .naive import parallel_gated_retention
from .recurrent import recurrent_gated_retention
from .triton_chunk import chunk_gated_retention_triton  # registers the GPU path

__all__ = ["chunk_gated_retention", "chunk_gated_retention_triton", "parallel_gated_retention", "recurrent_gated_retention"]
