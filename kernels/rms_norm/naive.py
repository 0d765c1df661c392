"""RMSNorm, pure PyTorch: the reference of the fused kernel.

    y = x / sqrt(mean(x^2 over the last dim) + eps) * weight
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def rms_norm_reference(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """x [..., D], weight [D] or None -> [..., D]."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)
