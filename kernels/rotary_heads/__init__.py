"""The start of every attention layer after its fused projection: split into heads, rotary on q and
k, in one op:

    p [B, T, (Hq + 2 Hkv) Dh] (per token: Hq query heads, Hkv key heads, Hkv value heads), cos, sin
    [T, Dh] (`rotary_angles`), n_q = Hq, n_kv = Hkv -> q [B, Hq, T, Dh], k [B, Hkv, T, Dh] (rotated),
    v [B, Hkv, T, Dh], all contiguous. A count of 0 gives 0 heads (an empty tensor), so a call site
    that needs only q (a cross-attention) or only k and v (YOCO's global KV) unpacks three tensors
    and ignores what it does not use.

- `rotary_heads_reference` (naive.py): pure PyTorch, the layers' old op-by-op path (any dtype; the
  training path: it records the autograd graph);
- `rotary_heads_cpp` (cpu.py): one C++ call for CPU inference, fp32, any T, bit for bit the reference.

Registered as op "rotary_heads": "reference" everywhere, "cpp" on CPU (priority 10).
"""
from .. import dispatch
from .cpu import available, rotary_heads_cpp
from .naive import rotary_heads_reference

dispatch.register("rotary_heads", "reference", rotary_heads_reference)
dispatch.register("rotary_heads", "cpp", rotary_heads_cpp, available=available, priority=10)

__all__ = ["rotary_heads_cpp", "rotary_heads_reference"]
