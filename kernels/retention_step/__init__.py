"""One RetNet decoding step between the qkv projection and the gate: rotary q and k, the recurrent
retention update of the state, and the per-head RMSNorm of the output, per head h:

    q, k, v = split(qkv);  q = rotary(q);  k = rotary(k) * Dh^-0.5
    S' = gamma_h S + k^T v;  o = rms_norm(q S') * norm_weight

- `retention_step_reference` (naive.py): pure PyTorch, today's op-by-op path (any T; the training path);
- `retention_step_cpp` (cpu.py): the whole step in one C++ call for CPU inference, fp32, T == 1.

qkv [B, 1, 3D] (D = H * Dh), cos, sin [1, Dh] (`rotary_angles`), log_decay [H], state [B, H, Dh, Dh]
or None, norm_weight [Dh] -> (o [B, 1, D], S' [B, H, Dh, Dh] fp32).
Registered as op "retention_step": "reference" everywhere, "cpp" on CPU (priority 10).
"""
from .. import dispatch
from .cpu import available, retention_step_cpp
from .naive import retention_step_reference

dispatch.register("retention_step", "reference", retention_step_reference)
dispatch.register("retention_step", "cpp", retention_step_cpp, available=available, priority=10)

__all__ = ["retention_step_cpp", "retention_step_reference"]
