"""Sigma-VAE: a VAE whose posterior noise scale is drawn, not learned (LatentLM §2.3).

The encoder predicts only a mean mu. During training the latent is z = mu + sigma * eps with
sigma drawn per sample from N(0, C_sigma^2). Because sigma never collapses, the latent space keeps
its variance, which is what lets an autoregressive model feed its own samples back robustly. The
only regulariser is a small penalty on ||mu||^2.

Encoder and decoder are diffusers' VAE building blocks; images map 64x64 -> 8x8 latents, read out
in raster order as 64 tokens of `latent_dim` channels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import Tensor, nn


@dataclass
class SigmaVAEConfig:
    """Architecture and objective of an image sigma-VAE."""

    latent_dim: int = 16
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)  # one block per level; n-1 downsamplings
    layers_per_block: int = 1
    norm_num_groups: int = 32
    sigma_scale: float = 0.75  # C_sigma: sigma ~ N(0, C_sigma^2), one draw per sample
    mu_weight: float = 1e-2  # weight of mean(mu^2)
    l1_weight: float = 1.0  # reconstruction is L1 + MSE on pixels in [-1, 1]
    mse_weight: float = 1.0
    image_size: int = 64

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(self.block_out_channels)
        if not 8 <= self.latent_dim <= 32:
            raise ValueError(f"latent_dim={self.latent_dim}: use a value between 8 and 32")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"block channels {c} must be a multiple of norm_num_groups={self.norm_num_groups}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


class ImageSigmaVAE(nn.Module):
    """Image codec: [B, 3, H, W] in [-1, 1] <-> [B, N, latent_dim] with N = (H/f)*(W/f)."""

    modality = "image"

    def __init__(self, config: SigmaVAEConfig | None = None, **kwargs) -> None:
        super().__init__()
        self.config = config or SigmaVAEConfig(**kwargs)
        c = self.config
        n = len(c.block_out_channels)
        self.encoder = Encoder(
            in_channels=3, out_channels=c.latent_dim, down_block_types=("DownEncoderBlock2D",) * n,
            block_out_channels=c.block_out_channels, layers_per_block=c.layers_per_block,
            norm_num_groups=c.norm_num_groups, double_z=False,
        )
        self.decoder = Decoder(
            in_channels=c.latent_dim, out_channels=3, up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=c.block_out_channels, layers_per_block=c.layers_per_block,
            norm_num_groups=c.norm_num_groups,
        )
        # One global scale and bias that bring latents to about zero mean, unit variance for the LM;
        # measured from data after training (`set_latent_stats`) and saved with the weights.
        self.register_buffer("latent_bias", torch.zeros(()))
        self.register_buffer("latent_scale", torch.ones(()))

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def grid(self) -> int:
        return self.config.image_size // self.config.downsample

    @property
    def tokens_per_image(self) -> int:
        return self.grid * self.grid

    def config_dict(self) -> dict:
        return asdict(self.config) | {"block_out_channels": list(self.config.block_out_channels)}

    def _check_images(self, x: Tensor) -> None:
        s = self.config.image_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != (s, s):
            raise ValueError(f"expected images of shape [B, 3, {s}, {s}] in [-1, 1], got {list(x.shape)}")

    def encode(self, x: Tensor) -> Tensor:
        """Posterior means mu as tokens: [B, 3, H, W] -> [B, N, latent_dim], raster order."""
        self._check_images(x)
        mu = self.encoder(x)  # [B, C, h, w]
        return mu.flatten(2).transpose(1, 2)  # [B, h*w, C]

    def decode(self, z: Tensor) -> Tensor:
        """Tokens back to pixels: [B, N, latent_dim] -> [B, 3, H, W] in about [-1, 1]."""
        if z.ndim != 3 or z.shape[1:] != (self.tokens_per_image, self.latent_dim):
            raise ValueError(
                f"expected latents of shape [B, {self.tokens_per_image}, {self.latent_dim}], got {list(z.shape)}"
            )
        g = self.grid
        return self.decoder(z.transpose(1, 2).reshape(z.shape[0], self.latent_dim, g, g))

    def normalize(self, z: Tensor) -> Tensor:
        """Codec latents -> LM latents: (z - bias) / scale."""
        return (z - self.latent_bias) / self.latent_scale

    def denormalize(self, z: Tensor) -> Tensor:
        """LM latents -> codec latents: z * scale + bias."""
        return z * self.latent_scale + self.latent_bias

    @torch.no_grad()
    def set_latent_stats(self, images: Tensor, generator: torch.Generator | None = None) -> None:
        """Measure the global bias and scale of perturbed latents z = mu + sigma*eps over `images`."""
        z = self.perturb(self.encode(images), generator)
        self.latent_bias.fill_(z.mean().item())
        self.latent_scale.fill_(z.std().item())

    def sample_sigma(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """One noise scale per sample, sigma ~ N(0, C_sigma^2): [B, 1, 1]."""
        return torch.randn(batch, 1, 1, generator=generator, device=device) * self.config.sigma_scale

    def perturb(self, mu: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z = mu + sigma * eps, with sigma drawn per sample: [B, N, C] -> [B, N, C]."""
        sigma = self.sample_sigma(mu.shape[0], generator, mu.device)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        return mu + sigma * eps

    def loss(self, x: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Sigma-VAE objective: L1 + MSE reconstruction of the perturbed latent, plus mu_weight*mean(mu^2)."""
        c = self.config
        mu = self.encode(x)
        recon = self.decode(self.perturb(mu))
        l1 = F.l1_loss(recon, x)
        mse = F.mse_loss(recon, x)
        mu_sq = mu.pow(2).mean()
        total = c.l1_weight * l1 + c.mse_weight * mse + c.mu_weight * mu_sq
        return total, {"l1": l1.item(), "mse": mse.item(), "mu_sq": mu_sq.item()}
