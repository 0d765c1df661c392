"""One YOCO gated-retention decoding step between the projections and the gate: rotary q and k, the
data-dependent decay, the recurrent update of the state, and the per-head RMSNorm of the output,
per batch row b and head h (x: the head's decay logit, the output of `GatedRetention.decay`):

    q, k, v = split(qkv);  q = rotary(q);  k = rotary(k) * Dh^-0.5
    gamma = exp(logsigmoid(x) / gate_normalizer)
    S' = gamma S + k^T v;  o = rms_norm(q S') * norm_weight

- `gated_retention_step_reference` (naive.py): pure PyTorch, today's op-by-op path (any T);
- `gated_retention_step_cpp` (cpu.py): the whole step in one C++ call for CPU inference, fp32, T == 1.

qkv [B, 1, 3D] (D = H * Dh), decay_logits [B, 1, H], cos, sin [1, Dh] (`rotary_angles`), state
[B, H, Dh, Dh] or None, norm_weight [Dh], eps, gate_normalizer (YOCO: 16)
-> (o [B, 1, D], S' [B, H, Dh, Dh] fp32).
Registered as op "gated_retention_step": "reference" everywhere, "cpp" on CPU (priority 10).
"""
from .. import dispatch
from .cpu import available, gated_retention_step_cpp
from .naive import gated_retention_step_reference

dispatch.register("gated_retention_step", "reference", gated_retention_step_reference)
dispatch.register("gated_retention_step", "cpp", gated_retention_step_cpp, available=available, priority=10)

__all__ = ["gated_retention_step_cpp", "gated_retention_step_reference"]
