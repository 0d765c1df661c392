"""Dilated attention (LongNet, Ding et al. 2023), pure PyTorch, fp32 inside:

- `naive_dilated_attention` (naive.py): the dense O(T^2) oracle: masks per pattern, one softmax over
  the union of the patterns' keys (a key two patterns cover counts once; torchscale issue #108);
- `dilated_attention` (dilated.py): the efficient form, O(T w/r^2) per pattern and head: sparse
  segments gathered, attended, scattered back, merged by log-sum-exp with de-duplication;
- `dilated_attention_nested` (nested.py, CPU): for nested patterns (LongNet's geometric ones), the
  de-duplicated pairs form dense rectangles, so each pattern is a few maskless fused-attention calls;
- `dilated_attention_sdpa` (sdpa_gather.py, CUDA): batched fused attention over gathered segments.

q [B, H, Tq, D] (the last Tq positions); k [B, H, S, D]; v [B, H, S, Dv]; valid [B, S] or None.
"""
from .dilated import dilated_attention
from .nested import dilated_attention_nested, patterns_nest  # registers the CPU path (nested patterns)
from .sdpa_gather import dilated_attention_sdpa  # registers the GPU path (batched SDPA)
from .naive import first_cover, head_offsets, masked_attention, merge_by_lse, naive_dilated_attention, pattern_masks

__all__ = [
    "dilated_attention",
    "dilated_attention_nested",
    "dilated_attention_sdpa",
    "first_cover",
    "head_offsets",
    "masked_attention",
    "merge_by_lse",
    "naive_dilated_attention",
    "pattern_masks",
    "patterns_nest",
]
