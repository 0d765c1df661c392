"""Building blocks shared by the backbones: RMSNorm, rotary embeddings, the GLU MLPs and the feed-forward half."""
from __future__ import annotations

import torch
from torch import Tensor, nn

import latentlm.kernels.gemv  # noqa: F401  (registers the small_batch_linear implementations)
import latentlm.kernels.rms_norm  # noqa: F401  (registers the rms_norm implementations)
from latentlm.backbones.config import BackboneConfig
from latentlm.kernels import dispatch
from latentlm.kernels.glu_block import glu_activation  # importing registers the glu_block implementations
from latentlm.kernels.rotary_heads.naive import apply_rotary  # noqa: F401  (the backbones' rotary, re-exported)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last dim: op "rms_norm" (fused C++ on CPU for
    inference; the training path is `F.rms_norm`)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return dispatch.choose("rms_norm", x.device).fn(x, self.weight, self.eps)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters and state dict) through op "small_batch_linear": decoding a few
    tokens on CPU streams the weight through a fused C++ GEMV; anything else is `F.linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return dispatch.choose("small_batch_linear", x.device).fn(x, self.weight, self.bias)


def linear(config: BackboneConfig, d_in: int, d_out: int) -> nn.Module:
    """A projection of the backbone: dense, or ternary BitLinear when `config.ternary`."""
    if config.ternary:
        from latentlm.backbones.bitlinear import BitLinear  # BitNet b1.58: RMSNorm + int8 x ternary

        return BitLinear(d_in, d_out, bias=False, eps=config.norm_eps)
    return Linear(d_in, d_out, bias=False)


def rotary_angles(positions: Tensor, dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """Rotary tables for integer `positions` [T], each [T, dim]: (cos a, cos a) and (-sin a, sin a),
    where a [T, dim/2] are the angles of the dim/2 frequencies (the layout `apply_rotary` takes)."""
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)
    angles = positions.float()[:, None] * inv_freq[None, :]  # [T, dim/2]
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


class GLU(nn.Module):
    """down(act(gate(x)) * up(x)), act named by `activation` (op "glu_block"'s names: "silu", "relu2")."""

    activation = "silu"

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        d, h = config.d_model, config.ffn_dim
        self.gate = linear(config, d, h)
        self.up = linear(config, d, h)
        self.down = linear(config, h, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(glu_activation(self.gate(x), self.activation) * self.up(x))


class SwiGLU(GLU):
    """down(silu(gate(x)) * up(x))."""


class ReLU2GLU(GLU):
    """Squared-ReLU GLU (BitNet b1.58 2B4T): down(relu(gate(x))^2 * up(x)); same parameters as SwiGLU."""

    activation = "relu2"


def residual_ffn(x: Tensor, norm: RMSNorm, mlp: GLU) -> Tensor:
    """x + mlp(norm(x)): the feed-forward half of every block. With dense projections it is op
    "glu_block", one fused C++ call while decoding on CPU (else the same ops one by one); BitLinear
    ones quantise their inputs, so they run module by module."""
    if all(type(p) is Linear and p.bias is None for p in (mlp.gate, mlp.up, mlp.down)):
        fn = dispatch.choose("glu_block", x.device).fn
        return fn(x, norm.weight, norm.eps, mlp.gate.weight, mlp.up.weight, mlp.down.weight, mlp.activation)
    return x + mlp(norm(x))


def ffn(config: BackboneConfig) -> nn.Module:
    """The feed-forward block chosen by `config.ffn_act`: SwiGLU ("swiglu") or ReLU2GLU ("relu2")."""
    if config.ffn_act == "relu2":
        return ReLU2GLU(config)
    return SwiGLU(config)
