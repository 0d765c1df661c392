"""The feed-forward half of a block, pure PyTorch: the reference (and fallback) of the fused kernel.

    y = x + W_down (act(W_gate n) * (W_up n)),   n = rms_norm(x) * norm_weight

act is "silu" (SwiGLU) or "relu2" (squared ReLU, BitNet b1.58 2B4T). The same ops, in the same order,
as the modules `RMSNorm` and `SwiGLU` / `ReLU2GLU` of `latentlm.backbones.layers`.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS = ("silu", "relu2")


def glu_activation(gate: Tensor, activation: str) -> Tensor:
    """act(gate): SiLU or squared ReLU."""
    if activation == "silu":
        return F.silu(gate)
    if activation == "relu2":
        return F.relu(gate).square()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def glu_block_reference(x: Tensor, norm_weight: Tensor, eps: float, w_gate: Tensor, w_up: Tensor, w_down: Tensor,
                        activation: str = "silu") -> Tensor:
    """x [..., D], norm_weight [D], w_gate / w_up [F, D], w_down [D, F] -> [..., D]."""
    n = F.rms_norm(x, (x.shape[-1],), norm_weight, eps)
    return x + F.linear(glu_activation(F.linear(n, w_gate), activation) * F.linear(n, w_up), w_down)
