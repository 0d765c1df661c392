"""Retention (RetNet, Sun et al. 2023) with a fixed decay per head: three forms of the same maths,
pure PyTorch, fp32 inside.

- `parallel_retention` (naive.py): the O(T^2) masked form, the oracle (training, short prompts);
- `recurrent_retention` (recurrent.py): one step per token (decoding);
- `chunk_retention` (chunk.py): chunkwise, parallel inside chunks and recurrent across them
  (long prefill, long-sequence training).

q, k [B, H, T, Dk]; v [B, H, T, Dv]; log_decay [H] (log gamma_h <= 0); state [B, H, Dk, Dv] fp32.

The ops are unnormalised (no q.k scale, no division by decay sums), so that every form computes the
same function and they agree to rounding. Scales and normalisation belong to the layer.
"""
from .chunk import chunk_retention
from .naive import parallel_retention, retention_final_state
from .recurrent import recurrent_retention
from .triton_chunk import chunk_retention_triton  # registers the GPU path of "chunk_retention"

__all__ = ["chunk_retention", "chunk_retention_triton", "parallel_retention", "recurrent_retention", "retention_final_state"]
