"""A measure shared by the recurrent-step kernel tests (tests/test_retention_step.py,
tests/test_gated_retention_step.py): how ill-conditioned the readout o = q S' of a step is."""
from __future__ import annotations

from torch import Tensor

from latentlm.backbones.layers import apply_rotary


def condition(qkv: Tensor, cos: Tensor, sin: Tensor, state: Tensor) -> float:
    """Largest over (b, h) of rms(|q| |S'|) / rms(q S'): how much o = q S' amplifies rounding (1 when no
    terms cancel). From a zero state S' = k^T v, so q S' = (q . k) v: a cancelling dot product.
    qkv [B, 1, 3 H Dh], cos / sin [1, Dh], state (S') [B, H, Dh, Dh]."""
    b, h, dh = qkv.shape[0], state.shape[1], state.shape[-1]
    q = apply_rotary(qkv.double().view(b, 3, h, dh)[:, 0, :, None], cos.double(), sin.double())  # [B, H, 1, Dh]
    s = state.double()
    return ((q.abs() @ s.abs()).square().mean(-1).sqrt() / (q @ s).square().mean(-1).sqrt()).max().item()
