"""One decoding step of attention: the new query of each head over every cached key, no mask.

- `decode_attention_reference` (naive.py): pure PyTorch, grouped queries through one SDPA call;
- `decode_attention_cpp` (cpu.py): fused C++ for CPU, split-K over the cache, fp32.

q [B, H, 1, D]; k, v [B, Hkv, S, D] (H a multiple of Hkv, grouped-query attention) -> [B, H, 1, D].
Registered as op "decode_attention": "reference" everywhere, "cpp" on CPU (priority 10).
"""
from .. import dispatch
from .cpu import available, decode_attention_cpp
from .naive import decode_attention_reference

dispatch.register("decode_attention", "reference", decode_attention_reference)
dispatch.register("decode_attention", "cpp", decode_attention_cpp, available=available, priority=10)

__all__ = ["decode_attention_cpp", "decode_attention_reference"]
