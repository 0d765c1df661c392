"""Building blocks shared by the backbones: RMSNorm, rotary embeddings, the SwiGLU MLP."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentlm.backbones.config import BackboneConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def linear(config: BackboneConfig, d_in: int, d_out: int) -> nn.Module:
    """A projection of the backbone: dense, or ternary BitLinear when `config.ternary`."""
    if config.ternary:
        from latentlm.backbones.bitlinear import BitLinear  # BitNet b1.58: RMSNorm + int8 x ternary

        return BitLinear(d_in, d_out, bias=False, eps=config.norm_eps)
    return nn.Linear(d_in, d_out, bias=False)


def rotary_angles(positions: Tensor, dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin of rotary angles for integer `positions` [T]: each [T, dim/2]."""
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)
    angles = positions.float()[:, None] * inv_freq[None, :]  # [T, dim/2]
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) of x [B, H, T, D] by the angles [T, D/2]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


class SwiGLU(nn.Module):
    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        d, h = config.d_model, config.ffn_dim
        self.gate = linear(config, d, h)
        self.up = linear(config, d, h)
        self.down = linear(config, h, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class ReLU2GLU(nn.Module):
    """Squared-ReLU GLU (BitNet b1.58 2B4T): down(relu(gate(x))^2 * up(x)); same parameters as SwiGLU."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        d, h = config.d_model, config.ffn_dim
        self.gate = linear(config, d, h)
        self.up = linear(config, d, h)
        self.down = linear(config, h, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.relu(self.gate(x)).square() * self.up(x))


def ffn(config: BackboneConfig) -> nn.Module:
    """The feed-forward block chosen by `config.ffn_act`: SwiGLU ("swiglu") or ReLU2GLU ("relu2")."""
    if config.ffn_act == "relu2":
        return ReLU2GLU(config)
    return SwiGLU(config)
