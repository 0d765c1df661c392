"""One YOCO gated-retention decoding step fused in C++ for CPU (the retention step extension,
kernels/retention_step/csrc/retention_step_cpu.cpp, which serves both steps):
rotary q and k, the decay exp(logsigmoid(logit) / normalizer), the state update S' = gamma S + k^T v,
o = q S' and its RMSNorm, per head, in one call, fp32.

At batch 1 the op-by-op path is ~15 small torch ops per layer (view, permute, rotary, scale,
logsigmoid, transpose, divide, exp, decay, addcmul, matmul, norm, transpose...), each a few
microseconds of overhead on tiny tensors; here it is one pass over each head's state. The update is
the RetNet step's (`latentlm.kernels.retention_step`) with a gamma per (b, h) instead of per head.
Built on first use (`latentlm.kernels.cpp_build`); AVX2+FMA where the CPU has it, else scalar loops.
The extension checks its inputs itself and answers None to those it does not take (cheaper than
checking them in Python, which costs microseconds a call).
"""
from __future__ import annotations

from torch import Tensor

from ..retention_step.cpu import EXTENSION, MIN_PARALLEL_FLOATS, available  # noqa: F401 (available: the op's)
from .naive import gated_retention_step_reference


def gated_retention_step_cpp(
    qkv: Tensor, decay_logits: Tensor, cos: Tensor, sin: Tensor, state: Tensor | None,
    norm_weight: Tensor | None, eps: float, gate_normalizer: float, avx2: bool = True,
) -> tuple[Tensor, Tensor]:
    """Same arguments and result as `gated_retention_step_reference`. Inputs the kernel does not take
    (not fp32, not on the CPU, not contiguous, T != 1, an odd Dh, an autograd graph to record) go to
    the reference; state None is zeros. avx2=False forces the scalar loops."""
    ext = EXTENSION.get()
    if ext is not None:  # checks the inputs itself: None when it does not take them
        out = ext.gated_retention_step(qkv, decay_logits, cos, sin, state, norm_weight, eps, gate_normalizer,
                                       avx2, MIN_PARALLEL_FLOATS)
        if out is not None:
            return out
    return gated_retention_step_reference(qkv, decay_logits, cos, sin, state, norm_weight, eps, gate_normalizer)
