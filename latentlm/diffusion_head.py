"""Per-token diffusion head (LatentLM §2.2, MAR's diffusion loss).

A small MLP with adaptive layer norm predicts the noise (or velocity) of one latent vector, given
the noisy vector, the diffusion timestep and the backbone's hidden state at the position before it.
Noising and sampling use diffusers' schedulers: DDPM (cosine betas) for training, DPM-Solver++ for
sampling. Several noise draws per token (`batch_mul`) make each backbone pass count more.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from pydantic import BaseModel, Field
from torch import Tensor, nn


class DiffusionHeadConfig(BaseModel):
    width: int = Field(256, ge=8)
    depth: int = Field(3, ge=1)  # AdaLN residual blocks
    num_train_timesteps: int = Field(1000, ge=10)
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    batch_mul: int = Field(4, ge=1)  # noise draws per token in training


class AdaLNBlock(nn.Module):
    """x + gate * MLP(LN(x) * (1 + scale) + shift), with (shift, scale, gate) from the condition."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale, gate = self.modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class DenoiserMLP(nn.Module):
    """(x_t [N, D], t [N], c [N, C]) -> prediction [N, D]."""

    def __init__(self, latent_dim: int, cond_dim: int, width: int, depth: int) -> None:
        super().__init__()
        self.x_in = nn.Linear(latent_dim, width)
        self.t_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.t_embed = TimestepEmbedding(width, width)
        self.c_embed = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, latent_dim)
        for layer in (self.out_modulation[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        y = self.t_embed(self.t_proj(t).to(x.dtype)) + self.c_embed(c)  # [N, W]
        h = self.x_in(x)  # [N, W]
        for block in self.blocks:
            h = block(h, y)
        shift, scale = self.out_modulation(y).chunk(2, dim=-1)
        return self.out(self.out_norm(h) * (1 + scale) + shift)


class DiffusionHead(nn.Module):
    def __init__(self, latent_dim: int, cond_dim: int, config: DiffusionHeadConfig | None = None) -> None:
        super().__init__()
        self.config = config or DiffusionHeadConfig()
        c = self.config
        self.net = DenoiserMLP(latent_dim, cond_dim, c.width, c.depth)
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=c.num_train_timesteps, beta_schedule=c.beta_schedule, prediction_type=c.prediction_type
        )

    def loss(self, target: Tensor, cond: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Denoising loss of clean latents `target` [N, D] given conditions `cond` [N, C]."""
        m = self.config.batch_mul
        x0 = target.repeat(m, 1)  # [m*N, D]
        c = cond.repeat(m, 1)  # [m*N, C]
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = torch.randint(0, self.config.num_train_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
        x_t = self.noise_scheduler.add_noise(x0, noise, t)
        goal = noise if self.config.prediction_type == "epsilon" else self.noise_scheduler.get_velocity(x0, noise, t)
        return F.mse_loss(self.net(x_t, t, c), goal)

    def sampler(self) -> DPMSolverMultistepScheduler:
        """A fresh DPM-Solver++ sampler matching the training noise schedule (samplers keep state)."""
        c = self.config
        return DPMSolverMultistepScheduler(
            num_train_timesteps=c.num_train_timesteps, beta_schedule=c.beta_schedule,
            prediction_type=c.prediction_type, algorithm_type="dpmsolver++", lambda_min_clipped=-5.1,
        )

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        uncond: Tensor | None = None,
        cfg_scale: float = 1.0,
        steps: int = 20,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """Draw one latent per condition row: cond [N, C] -> [N, D].

        `temperature` scales the starting noise (as MAR's temperature does): below 1 the deterministic
        DPM-Solver++ trajectory starts nearer the mode, trading diversity for fidelity.

        With `uncond` and cfg_scale != 1, the conditional and unconditional predictions are made in
        one batched call and mixed as uncond + s * (cond - uncond).
        """
        latent_dim = self.net.out.out_features
        sched = self.sampler()
        sched.set_timesteps(steps, device=cond.device)
        x = torch.randn(cond.shape[0], latent_dim, generator=generator, device=cond.device)
        x = x * sched.init_noise_sigma * temperature  # [N, D]
        guided = uncond is not None and cfg_scale != 1.0
        c = torch.cat([cond, uncond]) if guided else cond  # [2N or N, C]
        for t in sched.timesteps:
            x_in = torch.cat([x, x]) if guided else x
            out = self.net(x_in, t.expand(x_in.shape[0]), c)
            if guided:
                out_c, out_u = out.chunk(2)
                out = out_u + cfg_scale * (out_c - out_u)
            x = sched.step(out, t, x).prev_sample
        return x
