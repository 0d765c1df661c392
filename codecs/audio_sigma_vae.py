"""Audio sigma-VAE: 16 kHz speech <-> a short sequence of continuous latent frames (LatentLM §2.3).

The encoder and decoder are encodec's SEANet convolution stacks. The encoder's last convolution gives
the posterior mean mu, one `latent_dim` vector per `hop_length` samples; nothing predicts a variance.
In training the decoder reconstructs from z = mu + sigma * eps with sigma drawn once per sample from
N(0, C_sigma^2), and the only regulariser is a small penalty on mean(mu^2) -- the objective of the image
codec (`sigma_vae.py`), with spectral reconstruction losses: auraloss's multi-resolution STFT loss, an
L1 distance of log-mel spectrograms, and a small waveform L1.

The default (16 kHz, ratios 8*8*5*4 = hop 1280) gives 12.5 frames a second of 32 floats: 400 floats a
second, the LatentLM rate x dim budget (15 Hz x 32 at 24 kHz in the paper), in 1.6 M parameters.

Framing: a wave of T samples is zero-padded on the right to N = ceil(T / hop) whole frames; frame i
covers samples [i * hop, (i + 1) * hop). `decode` returns N * hop samples; `reconstruct` crops them to T.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import auraloss
import torch
import torch.nn.functional as F
import torchaudio
from encodec.modules.seanet import SEANetDecoder, SEANetEncoder
from torch import Tensor, nn

SEANET_NORMS = ("weight_norm", "none", "time_group_norm")


def as_waves(wav: Tensor) -> Tensor:
    """[T], [B, T] or [B, 1, T] -> float [B, T]."""
    if wav.ndim == 3 and wav.shape[1] == 1:
        wav = wav[:, 0]
    elif wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2:
        raise ValueError(f"expected mono audio of shape [T], [B, T] or [B, 1, T], got {list(wav.shape)}")
    return wav.float()


def pad_to_hop(wav: Tensor, hop: int) -> Tensor:
    """Zero-pad [B, T] on the right to a whole number of frames (at least one): [B, ceil(T/hop)*hop]."""
    n = max(1, math.ceil(wav.shape[-1] / hop))
    return F.pad(wav, (0, n * hop - wav.shape[-1]))


def build_seanet(
    dimension: int, n_filters: int, ratios: tuple[int, ...], n_residual_layers: int, lstm: int, norm: str,
    causal: bool,
) -> tuple[SEANetEncoder, SEANetDecoder]:
    """encodec's SEANet encoder/decoder pair (same `ratios` for both: the encoder reverses them), with every
    bias starting at zero.

    Why zero biases: with PyTorch's default init each of the ~15 convolutions shrinks the signal it
    passes on while adding a bias of its own, so at init the encoder's output hardly varies with its
    input (time-std 2e-4 at 12.5 Hz) and the decoder's hardly with its latent. Training then sits at the
    decoder's average output and never learns to use z (measured: mel distance flat at 1.37 for 200 steps
    on 8 clips, and at ~1.9 for 1600 steps of the real run). With zero biases both are linear in their
    input at init, and the same 8 clips reach a mel distance of 0.76 in 200 steps."""
    kwargs = dict(channels=1, dimension=dimension, n_filters=n_filters, n_residual_layers=n_residual_layers,
                  ratios=list(ratios), norm=norm, causal=causal, lstm=lstm)
    with warnings.catch_warnings():  # encodec 0.1.1 uses torch.nn.utils.weight_norm, deprecated but working
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        encoder, decoder = SEANetEncoder(**kwargs), SEANetDecoder(**kwargs)
    with torch.no_grad():
        for name, p in (*encoder.named_parameters(), *decoder.named_parameters()):
            if name.endswith("bias"):
                p.zero_()
    return encoder, decoder


def check_seanet(ratios: tuple[int, ...], n_filters: int, norm: str, sample_rate: int) -> None:
    if not ratios or any(int(r) != r or r < 1 for r in ratios):
        raise ValueError(f"ratios={list(ratios)}: use a non-empty list of positive integers")
    if n_filters < 1:
        raise ValueError(f"n_filters={n_filters}: must be positive")
    if norm not in SEANET_NORMS:
        raise ValueError(f"norm={norm!r}: use one of {list(SEANET_NORMS)}")
    if sample_rate < 1:
        raise ValueError(f"sample_rate={sample_rate}: must be positive")


class AudioReconstructionLoss(nn.Module):
    """Reconstruction losses and distances of waves [B, T]: multi-resolution STFT, log-mel L1, waveform L1.

    The STFT loss is auraloss's (spectral convergence + L1 of log magnitudes at FFT sizes 1024/2048/512).
    The mel distance is the mean absolute difference of natural-log mel magnitudes (80 HTK mel bands over
    0..sr/2, FFT 1024, hop 256, clamped at 1e-5). The module holds no saved state."""

    def __init__(self, sample_rate: int = 16_000, n_mels: int = 80, mel_fft: int = 1024, mel_hop: int = 256) -> None:
        super().__init__()
        self.mel_fft, self.mel_hop = mel_fft, mel_hop
        self.stft = auraloss.freq.MultiResolutionSTFTLoss()
        fb = torchaudio.functional.melscale_fbanks(
            mel_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate, mel_scale="htk"
        )  # [freqs, mels]
        self.register_buffer("mel_fb", fb, persistent=False)
        self.register_buffer("mel_window", torch.hann_window(mel_fft), persistent=False)

    def log_mel(self, wav: Tensor) -> Tensor:
        """[B, T] -> [B, frames, n_mels] natural-log mel magnitudes."""
        spec = torch.stft(wav, self.mel_fft, self.mel_hop, window=self.mel_window, return_complex=True)
        return torch.log((spec.abs().transpose(1, 2) @ self.mel_fb).clamp_min(1e-5))

    def mel_distance(self, x: Tensor, y: Tensor) -> Tensor:
        return (self.log_mel(x) - self.log_mel(y)).abs().mean()

    def stft_distance(self, x: Tensor, y: Tensor) -> Tensor:
        return self.stft(x[:, None], y[:, None])


class _AudioSEANetCodec(nn.Module):
    """What both audio codecs share: framing, SEANet, reconstruction losses."""

    modality = "audio"

    def _init_audio(self, c) -> None:
        self.recon_loss = AudioReconstructionLoss(c.sample_rate)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return math.prod(self.config.ratios)

    @property
    def frames_per_second(self) -> float:
        return self.config.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Latent frames of a wave of `num_samples` samples: ceil(T / hop), at least 1."""
        return max(1, math.ceil(num_samples / self.hop_length))

    def _reconstruction(self, recon: Tensor, x: Tensor) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        stft = self.recon_loss.stft_distance(recon, x)
        mel = self.recon_loss.mel_distance(recon, x)
        l1 = F.l1_loss(recon, x)
        total = c.stft_weight * stft + c.mel_weight * mel + c.l1_weight * l1
        return total, {"stft": stft.item(), "mel": mel.item(), "l1": l1.item()}


@dataclass
class AudioSigmaVAEConfig:
    """Architecture and objective of an audio sigma-VAE."""

    latent_dim: int = 32
    ratios: tuple[int, ...] = (8, 8, 5, 4)  # decoder upsampling order; hop = product = 1280 -> 12.5 Hz at 16 kHz
    n_filters: int = 16  # SEANet width at the waveform; doubles after each ratio (256 at the latent)
    n_residual_layers: int = 1
    lstm: int = 0  # LSTM layers at the latent end of encoder and decoder
    norm: str = "weight_norm"
    causal: bool = False
    sample_rate: int = 16_000
    sigma_scale: float = 0.625  # C_sigma: sigma ~ N(0, C_sigma^2), one draw per sample (VibeVoice: 0.5 / 0.8)
    mu_weight: float = 1e-2  # weight of mean(mu^2)
    stft_weight: float = 1.0
    mel_weight: float = 1.0
    l1_weight: float = 0.1

    def __post_init__(self) -> None:
        self.ratios = tuple(self.ratios)
        check_seanet(self.ratios, self.n_filters, self.norm, self.sample_rate)
        if not 4 <= self.latent_dim <= 64:
            raise ValueError(f"latent_dim={self.latent_dim}: use a value between 4 and 64")
        if self.sigma_scale < 0 or self.mu_weight < 0:
            raise ValueError("sigma_scale and mu_weight must be >= 0")


class AudioSigmaVAE(_AudioSEANetCodec):
    """Audio codec: waves [B, T] at `sample_rate` <-> latents [B, N, latent_dim], N = ceil(T / hop_length)."""

    def __init__(self, config: AudioSigmaVAEConfig | None = None, **kwargs) -> None:
        super().__init__()
        self.config = c = config or AudioSigmaVAEConfig(**kwargs)
        self.encoder, self.decoder = build_seanet(
            c.latent_dim, c.n_filters, c.ratios, c.n_residual_layers, c.lstm, c.norm, c.causal
        )
        self._init_audio(c)
        # One global scale and bias that bring latents to about zero mean, unit variance for the LM;
        # measured from data after training (`set_latent_stats`) and saved with the weights.
        self.register_buffer("latent_bias", torch.zeros(()))
        self.register_buffer("latent_scale", torch.ones(()))

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def floats_per_second(self) -> float:
        return self.frames_per_second * self.latent_dim

    def config_dict(self) -> dict:
        return asdict(self.config) | {"ratios": list(self.config.ratios)}

    def encode(self, wav: Tensor) -> Tensor:
        """Posterior means mu, one per frame: [B, T] or [B, 1, T] -> [B, ceil(T/hop), latent_dim]."""
        x = pad_to_hop(as_waves(wav), self.hop_length)
        return self.encoder(x[:, None]).transpose(1, 2)

    def decode(self, z: Tensor) -> Tensor:
        """Latent frames back to audio: [B, N, latent_dim] -> [B, N * hop_length]."""
        if z.ndim != 3 or z.shape[-1] != self.latent_dim or z.shape[1] < 1:
            raise ValueError(f"expected latents of shape [B, N, {self.latent_dim}], got {list(z.shape)}")
        return self.decoder(z.transpose(1, 2))[:, 0]

    def reconstruct(self, wav: Tensor) -> Tensor:
        """decode(encode(wav)) from the means, cropped to the input length: [B, T] -> [B, T]."""
        x = as_waves(wav)
        return self.decode(self.encode(x))[:, : x.shape[-1]]

    def normalize(self, z: Tensor) -> Tensor:
        """Codec latents -> LM latents: (z - bias) / scale."""
        return (z - self.latent_bias) / self.latent_scale

    def denormalize(self, z: Tensor) -> Tensor:
        """LM latents -> codec latents: z * scale + bias."""
        return z * self.latent_scale + self.latent_bias

    @torch.no_grad()
    def set_latent_stats(self, waves: Tensor | list[Tensor], generator: torch.Generator | None = None) -> None:
        """Measure the global bias and scale of perturbed latents z = mu + sigma*eps over `waves`.

        `waves` is a batch [B, T] or a list of waves [T] of any lengths (each encoded alone, so no
        padding frames enter the statistics beyond each wave's last partial frame)."""
        batches = [as_waves(w) for w in waves] if isinstance(waves, (list, tuple)) else [as_waves(waves)]
        z = torch.cat([self.perturb(self.encode(w), generator).flatten() for w in batches])
        self.latent_bias.fill_(z.mean().item())
        self.latent_scale.fill_(z.std().item())

    def sample_sigma(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """One noise scale per sample, sigma ~ N(0, C_sigma^2): [B, 1, 1]."""
        gen_device = generator.device if generator is not None else device
        s = torch.randn(batch, 1, 1, generator=generator, device=gen_device) * self.config.sigma_scale
        return s.to(device)

    def perturb(self, mu: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z = mu + sigma * eps, with sigma drawn per sample: [B, N, C] -> [B, N, C]."""
        sigma = self.sample_sigma(mu.shape[0], generator, mu.device)
        gen_device = generator.device if generator is not None else mu.device
        eps = torch.randn(mu.shape, generator=generator, device=gen_device).to(mu.device)
        return mu + sigma * eps

    def loss(self, wav: Tensor, noise_fraction: float = 1.0) -> tuple[Tensor, dict[str, float]]:
        """Sigma-VAE objective on waves [B, T]: reconstruct from z = mu + sigma*eps (MR-STFT + log-mel L1 +
        small waveform L1), plus mu_weight * mean(mu^2).

        `noise_fraction` scales sigma (a warm-up from 0 to 1): at full noise from the first step, the
        untrained encoder's small mu drowns (sigma ~ 0.6 against an RMS of ~0.3), the decoder learns to
        ignore z and the encoder never learns to speak up (measured: mel distance flat at ~2 for 750 steps)."""
        x = as_waves(wav)
        mu = self.encode(x)
        z = mu + noise_fraction * (self.perturb(mu) - mu)
        recon = self.decode(z)[:, : x.shape[-1]]
        total, logs = self._reconstruction(recon, x)
        mu_sq = mu.pow(2).mean()
        return total + self.config.mu_weight * mu_sq, logs | {"mu_sq": mu_sq.item()}
