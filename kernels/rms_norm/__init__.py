"""RMSNorm over the last dimension: y = x / sqrt(mean(x^2) + eps) * weight.

- `rms_norm_reference` (naive.py): `F.rms_norm`, the oracle (and the training path: it records the graph);
- `rms_norm_cpp` (cpu.py): one fused C++ pass per row for CPU inference, fp32.

Registered as op "rms_norm": "reference" everywhere, "cpp" on CPU (priority 10).
"""
from .. import dispatch
from .cpu import available, rms_norm_cpp
from .naive import rms_norm_reference

dispatch.register("rms_norm", "reference", rms_norm_reference)
dispatch.register("rms_norm", "cpp", rms_norm_cpp, available=available, priority=10)

__all__ = ["rms_norm_cpp", "rms_norm_reference"]
