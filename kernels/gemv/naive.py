"""Small-batch linear layer, pure PyTorch: the reference (and fallback) of the fused kernel.

y [..., N] = x [..., K] . weight^T + bias, weight [N, K], bias [N] or None: `F.linear` itself.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def small_batch_linear_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear: x [..., K], weight [N, K], bias [N] or None -> [..., N]."""
    return F.linear(x, weight, bias)
