"""The whole sampling loop of one latent through the diffusion head, pure PyTorch: the reference (and
fallback) of the fused kernel.

Per step s of S (classifier-free guidance: the R rows run twice, conditional then unconditional):

    h   = x_in(x)                                                       [N, W]
    h  += gate_l * W2_l silu(W1_l (LN(h) * (1 + scale_l) + shift_l) + b1_l) + b2_l     per block l < L
    out = W_out (LN(h) * (1 + scale_o) + shift_o) + b_out                [N, D]
    out = out_u + cfg * (out_c - out_u)                                 (guided)
    x, m = A x + B out + C m,  P x + Q out                              (the solver: one affine step)

The modulations of step s are one row per MLP row, mods [S, N, (3L + 2) W]: (shift, scale, gate) per
block, then (shift, scale) of the output layer, as one linear with the blocks' and the output's
modulation weights concatenated gives them. The solver's coefficients `coefs` [S, 5] are (P, Q, A, B, C)
per step (`latentlm.solver_recurrence` reads them off diffusers' scheduler). The same ops, in the same
order, as `latentlm.diffusion_head.SplitDenoiser` and the scheduler's step.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class HeadWeights(NamedTuple):
    """The MLP's weights (the blocks' stacked), all of one dtype and device."""

    x_in_w: Tensor  # [W, D]
    x_in_b: Tensor  # [W]
    up_w: Tensor  # [L, W, W]
    up_b: Tensor  # [L, W]
    down_w: Tensor  # [L, W, W]
    down_b: Tensor  # [L, W]
    out_w: Tensor  # [D, W]
    out_b: Tensor  # [D]
    eps: tuple[float, ...]  # L + 1 LayerNorm epsilons: the blocks', then the output's


def modulated_norm(h: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """LN(h) * (1 + scale) + shift, h and the modulations [N, W]."""
    return F.layer_norm(h, (h.shape[-1],), eps=eps) * (1 + scale) + shift


def denoise(x: Tensor, mods: Tensor, w: HeadWeights) -> Tensor:
    """The MLP on x [N, D] with one step's modulations [N, (3L + 2) W] -> the prediction [N, D]."""
    m = mods.unflatten(-1, (-1, w.x_in_w.shape[0]))  # [N, 3L + 2, W]
    h = F.linear(x, w.x_in_w, w.x_in_b)  # [N, W]
    for l in range(w.up_w.shape[0]):
        a = modulated_norm(h, m[:, 3 * l], m[:, 3 * l + 1], w.eps[l])
        h = h + m[:, 3 * l + 2] * F.linear(F.silu(F.linear(a, w.up_w[l], w.up_b[l])), w.down_w[l], w.down_b[l])
    return F.linear(modulated_norm(h, m[:, -2], m[:, -1], w.eps[-1]), w.out_w, w.out_b)


def guide(out: Tensor, cfg_scale: float) -> Tensor:
    """[cond; uncond] predictions [2R, D] -> uncond + cfg_scale * (cond - uncond) [R, D]."""
    out_c, out_u = out.chunk(2)
    return out_u + cfg_scale * (out_c - out_u)


def solver_update(coef: list[float], x: Tensor, out: Tensor, m_prev: Tensor) -> tuple[Tensor, Tensor]:
    """One solver step (P, Q, A, B, C): -> (x_next = A x + B out + C m_prev, m = P x + Q out)."""
    p, q, a, b, c = coef
    return a * x + b * out + c * m_prev, p * x + q * out


def adaln_head_sample_reference(x: Tensor, mods: Tensor, coefs: Tensor, weights: HeadWeights, cfg_scale: float,
                                guided: bool) -> Tensor:
    """x [R, D] (the scaled starting noise), mods [S, N, (3L + 2) W] (N = 2R guided, else R), coefs [S, 5]
    -> the sampled latent [R, D]. Runs in the dtype of its inputs."""
    m = torch.zeros_like(x)  # [R, D], the stored converted output (unread by the first step: C = 0)
    for mods_s, coef in zip(mods, coefs.tolist()):
        out = denoise(torch.cat([x, x]) if guided else x, mods_s, weights)  # [N, D]
        x, m = solver_update(coef, x, guide(out, cfg_scale) if guided else out, m)
    return x
