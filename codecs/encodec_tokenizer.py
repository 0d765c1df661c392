"""EnCodec-style speech tokenizer, trained from scratch: 16 kHz speech <-> n_q codebooks of 1024 codes.

The codec-token baseline of the TTS comparison (VALL-E style). It is built from the `encodec` package's
model classes -- SEANet encoder/decoder and `ResidualVectorQuantizer` -- and trained by us at 16 kHz,
50 frames a second (ratios 8*5*4*2 = hop 320). No pretrained weights are fetched or needed.

Residual quantizer in training (encodec issue #25): encodec's `ResidualVectorQuantization.forward`
subtracts each layer's straight-through output from the residual, so the residual seen by layers 2..n_q
carries no gradient to the encoder and their commitment losses are dead. `_quantize_train` therefore runs
the same `VectorQuantization` layers itself: each layer's output is detached before it is subtracted,
so every layer's commitment loss ||residual_i - sg(q_i)||^2 reaches the encoder, and one straight-through
estimator is applied to the sum of the layers' outputs. Calling the layers in training mode keeps
encodec's codebook updates: k-means initialisation on the first batch and exponential-moving-average
codebooks (`decay`). The penalty (mean of the layers' commitment losses, encodec's convention) is added
to the loss with `penalty_weight`.

Dead codes: encodec 0.1.1's own expiry (`threshold_ema_dead_code`) writes new vectors into `embed` and
then, in the same call, overwrites all of `embed` with embed_avg / cluster_size, so it never takes
effect; and codes that k-means left empty (a small batch has fewer frames than codes) get
embed_avg / ~1e-5: vectors far from any data, never used again, and beyond fp16's range (a
half-precision save then decodes to NaN). So the package's expiry is switched off and
`_reseed_dead_codes` does it consistently: a code unused for `dead_code_steps` training steps (age
counted in the `code_age` buffer, saved with the weights), and at once any code k-means left empty,
gets a random frame of the current batch's residual as its vector, its EMA sum and a cluster size of 1.

Normalised latent: the encoder's output is standardised by a `BatchNorm1d` without affine parameters
before the quantizer (batch statistics in training, running ones in eval). Without it the tokenizer
collapsed here to one code per codebook from the second step on (codebook-1 perplexity 1.0), with or
without re-seeding and after 30-50 quantizer-free warm-up steps: the encoder's output hardly depends on
its input (speech at -23 dBFS shrinks through a dozen fresh layers until the biases dominate: frames
differed by ~0.05 % of their norm even after 30 steps), and each optimiser step moves the biases, i.e.
the whole frame cloud, by ~100 times its width, which no EMA codebook can follow. Standardising removes the drift and
gives the frames unit spread. Optionally the quantizer is also bypassed for the first
`quantizer_warmup` training batches (the decoder reconstructs from the continuous latent, penalty 0,
codebooks untouched); k-means then initialises on the first batch after it. `train_batches` (a buffer
saved with the weights, so a resumed run continues the count) counts the training-mode loss calls.

`restore_scale` undoes the standardisation after the quantizer: the decoder gets the quantized latent at
the encoder's own scale and offset (the batch's statistics in training, the running ones in eval), i.e.
the encoder's output plus the quantization error in its units. The quantizer still works on unit-spread
frames. This lets the tokenizer start from a trained audio sigma-VAE of the same SEANet (`load_seanet`),
whose decoder knows the encoder's unstandardised latent: trained from scratch, this tokenizer's objective
learnt far more slowly than the sigma-VAE's on the same SEANet (training mel distance 1.34 against 0.90
after 1500 steps; BENCHMARKS, "Speech codecs").

Small-data settings: a batch of 4 x 1.5 s crops holds ~300 frames for 1024 codes (~0.3 uses per code
per batch), so the defaults use a faster EMA (`decay` 0.95 instead of 0.99, which tracks the quickly
moving encoder of a short run) and re-seed codes unused for 20 steps (~6000 frames).

Framing is the audio sigma-VAE's: T samples -> N = ceil(T / hop) frames (zero-padded on the right);
decoding N frames gives N * hop samples.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from encodec.quantization import ResidualVectorQuantizer
from torch import Tensor, nn

from latentlm.codecs.audio_sigma_vae import _AudioSEANetCodec, as_waves, build_seanet, check_seanet, pad_to_hop


@dataclass
class EncodecTokenizerConfig:
    """Architecture and objective of the EnCodec tokenizer."""

    ratios: tuple[int, ...] = (8, 5, 4, 2)  # hop 320 -> 50 Hz at 16 kHz
    n_filters: int = 16
    dimension: int = 64  # width of the latent that the RVQ quantizes
    n_residual_layers: int = 1
    lstm: int = 0
    norm: str = "weight_norm"
    causal: bool = False
    sample_rate: int = 16_000
    n_q: int = 8  # codebooks
    bins: int = 1024  # codes per codebook
    decay: float = 0.95  # codebook EMA
    kmeans_init: bool = True
    kmeans_iters: int = 10
    dead_code_steps: int = 20  # a code unused for this many training steps is re-seeded from the batch (0: never)
    quantizer_warmup: int = 0  # training batches that bypass the quantizer before k-means initialises it
    penalty_weight: float = 1.0  # weight of the commitment penalty
    restore_scale: bool = False  # the decoder gets the quantized latent at the encoder's scale (see the module doc)
    stft_weight: float = 1.0
    mel_weight: float = 1.0
    l1_weight: float = 0.1

    def __post_init__(self) -> None:
        self.ratios = tuple(self.ratios)
        check_seanet(self.ratios, self.n_filters, self.norm, self.sample_rate)
        if self.n_q < 1 or self.bins < 2 or self.dimension < 1:
            raise ValueError(
                f"n_q={self.n_q}, bins={self.bins}, dimension={self.dimension}: n_q and dimension >= 1, bins >= 2"
            )
        if not 0 <= self.decay < 1:
            raise ValueError(f"decay={self.decay}: use a value in [0, 1)")
        if min(self.kmeans_iters, self.dead_code_steps, self.quantizer_warmup, self.penalty_weight) < 0:
            raise ValueError("kmeans_iters, dead_code_steps, quantizer_warmup and penalty_weight must be >= 0")


class EncodecTokenizer(_AudioSEANetCodec):
    """Speech codec: waves at `sample_rate` <-> integer codes [n_q, N] in [0, bins), N = ceil(T / hop)."""

    def __init__(self, config: EncodecTokenizerConfig | None = None, **kwargs) -> None:
        super().__init__()
        self.config = c = config or EncodecTokenizerConfig(**kwargs)
        self.encoder, self.decoder = build_seanet(
            c.dimension, c.n_filters, c.ratios, c.n_residual_layers, c.lstm, c.norm, c.causal
        )
        self.quantizer = ResidualVectorQuantizer(
            dimension=c.dimension, n_q=c.n_q, bins=c.bins, decay=c.decay, kmeans_init=c.kmeans_init,
            kmeans_iters=c.kmeans_iters, threshold_ema_dead_code=0,  # see _reseed_dead_codes
        )
        self.latent_norm = nn.BatchNorm1d(c.dimension, affine=False)  # see the module docstring
        self.register_buffer("code_age", torch.zeros(c.n_q, c.bins))  # training steps since each code's last use
        self.register_buffer("train_batches", torch.zeros((), dtype=torch.long))  # training-mode loss calls
        self._init_audio(c)

    @property
    def n_q(self) -> int:
        return self.config.n_q

    @property
    def bins(self) -> int:
        return self.config.bins

    @property
    def tokens_per_second(self) -> float:
        return self.frames_per_second * self.n_q

    @property
    def bitrate(self) -> float:
        """Bits a second at all n_q codebooks."""
        return self.tokens_per_second * math.log2(self.bins)

    def config_dict(self) -> dict:
        return asdict(self.config) | {"ratios": list(self.config.ratios)}

    def _check_n_q(self, n_q: int | None) -> int:
        n_q = self.n_q if n_q is None else n_q
        if not 1 <= n_q <= self.n_q:
            raise ValueError(f"n_q={n_q}: this tokenizer has codebooks 1..{self.n_q}")
        return n_q

    def embed(self, wav: Tensor) -> Tensor:
        """The unquantized, standardised encoder output: [B, T] -> [B, dimension, N]."""
        return self.latent_norm(self._encode_raw(wav))

    def _encode_raw(self, wav: Tensor) -> Tensor:
        return self.encoder(pad_to_hop(as_waves(wav), self.hop_length)[:, None])  # [B, D, N]

    def _spread(self, raw: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The standardisation's (mean, std) per channel, [1, D, 1] each: of `raw` [B, D, N] in training (as the
        BatchNorm computes them), the running ones otherwise."""
        norm = self.latent_norm
        if self.training and raw is not None:
            mean, var = raw.mean((0, 2)), raw.var((0, 2), unbiased=False)
        else:
            mean, var = norm.running_mean, norm.running_var
        return mean[None, :, None], (var + norm.eps).sqrt()[None, :, None]

    def _decoder_input(self, quantized: Tensor, raw: Tensor | None = None) -> Tensor:
        """What the decoder reads from the quantized standardised latent [B, D, N]: itself, or with
        `restore_scale` back at the encoder's scale."""
        if not self.config.restore_scale:
            return quantized
        mean, std = self._spread(raw)
        return quantized * std + mean

    def encode_batch(self, wav: Tensor, n_q: int | None = None) -> Tensor:
        """Codes of a batch: [B, T] or [B, 1, T] -> int64 [B, n_q, N], values in [0, bins)."""
        codes = self.quantizer.vq.encode(self.embed(wav), n_q=self._check_n_q(n_q))  # [n_q, B, N]
        return codes.transpose(0, 1)

    def encode(self, wav: Tensor, n_q: int | None = None) -> Tensor:
        """Codes of one wave: [T], [1, T] or [1, 1, T] -> int64 [n_q, N]. Batches: `encode_batch`."""
        x = as_waves(wav)
        if x.shape[0] != 1:
            raise ValueError(f"encode takes one wave ([T] or [1, T]), got a batch of {x.shape[0]}: use encode_batch")
        return self.encode_batch(x, n_q)[0]

    def decode(self, codes: Tensor) -> Tensor:
        """Codes back to audio: [n_q', N] -> [N * hop], or [B, n_q', N] -> [B, N * hop] (n_q' <= n_q codebooks,
        the first ones)."""
        single = codes.ndim == 2
        c = codes[None] if single else codes
        if c.ndim != 3 or c.shape[2] < 1:
            raise ValueError(f"expected codes of shape [n_q, N] or [B, n_q, N], got {list(codes.shape)}")
        self._check_n_q(c.shape[1])
        if c.dtype.is_floating_point or c.min() < 0 or c.max() >= self.bins:
            raise ValueError(f"codes must be integers in [0, {self.bins})")
        wav = self.decoder(self._decoder_input(self.quantizer.decode(c.transpose(0, 1).long())))[:, 0]
        return wav[0] if single else wav

    def reconstruct(self, wav: Tensor, n_q: int | None = None) -> Tensor:
        """decode(encode(wav)) cropped to the input length: [B, T] -> [B, T]."""
        x = as_waves(wav)
        return self.decode(self.encode_batch(x, n_q))[:, : x.shape[-1]]

    def load_seanet(self, vae: nn.Module) -> None:
        """Take the encoder and decoder of a trained audio sigma-VAE with the same SEANet (ratios, widths,
        latent width = `dimension`); needs `restore_scale`, as that decoder reads unstandardised latents."""
        c, v = self.config, vae.config
        if not c.restore_scale:
            raise ValueError("starting from a sigma-VAE needs codec.restore_scale: true (its decoder reads the "
                             "encoder's unstandardised latent)")
        fields = ("ratios", "n_filters", "n_residual_layers", "lstm", "norm", "causal", "sample_rate")
        differ = [f"{f} {getattr(v, f)} vs {getattr(c, f)}" for f in fields if getattr(v, f) != getattr(c, f)]
        if v.latent_dim != c.dimension:
            differ.append(f"latent_dim {v.latent_dim} vs dimension {c.dimension}")
        if differ:
            raise ValueError(f"the sigma-VAE's SEANet differs from this tokenizer's: {', '.join(differ)}")
        self.encoder.load_state_dict(vae.encoder.state_dict())
        self.decoder.load_state_dict(vae.decoder.state_dict())

    def _quantize_train(self, emb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training-mode RVQ over [B, D, N]: (straight-through quantized [B, D, N], codes [n_q, B, N],
        commitment losses [n_q]).

        Runs encodec's layers (k-means init, EMA codebooks) plus our dead-code re-seeding, with every layer's commitment
        loss reaching the encoder (see the module docstring, encodec issue #25)."""
        residual, total = emb, torch.zeros_like(emb)
        codes, commits = [], []
        for i, layer in enumerate(self.quantizer.vq.layers):
            q, idx, commit = layer(residual)  # q: codebook vectors; commit: mse(sg(q), residual)
            self._reseed_dead_codes(i, idx, residual)
            q = q.detach()
            residual = residual - q
            total = total + q
            codes.append(idx)
            commits.append(commit.reshape(()))
        quantized = emb + (total - emb).detach()  # straight-through to the encoder output
        return quantized, torch.stack(codes), torch.stack(commits)

    @torch.no_grad()
    def _reseed_dead_codes(self, i: int, idx: Tensor, residual: Tensor) -> None:
        """Age codebook i's codes by one step (0 for those in `idx`); give those unused for dead_code_steps,
        and those k-means left empty (cluster size 0: their EMA vector is embed_avg / ~1e-5, beyond fp16's
        range), a random frame of `residual` [B, D, N], keeping embed, embed_avg and cluster_size consistent."""
        steps = self.config.dead_code_steps
        book = self.quantizer.vq.layers[i]._codebook
        age = self.code_age[i]
        age += 1
        age[idx.flatten()] = 0
        dead = book.cluster_size < 1e-3
        if steps:
            dead |= age >= steps
        dead = dead.nonzero().flatten()
        if len(dead):
            frames = residual.detach().transpose(1, 2).reshape(-1, residual.shape[1])
            picked = frames[torch.randint(len(frames), (len(dead),), device=frames.device)]
            book.embed[dead] = picked
            book.embed_avg[dead] = picked
            book.cluster_size[dead] = 1.0
            age[dead] = 0

    def loss(self, wav: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Reconstruction (MR-STFT + log-mel L1 + small waveform L1) + penalty_weight * commitment penalty.

        In training mode the codebooks update (EMA) as a side effect; in eval mode the codes come from the
        frozen codebooks and the penalty is their commitment distance."""
        x = as_waves(wav)
        raw = self._encode_raw(x)  # [B, D, N]
        emb = self.latent_norm(raw)
        if self.training:
            self.train_batches += 1
        if self.training and self.train_batches <= self.config.quantizer_warmup:
            quantized, codes, penalty = emb, None, emb.new_zeros(())  # quantizer bypassed (warm-up)
        elif self.training:
            quantized, codes, commits = self._quantize_train(emb)
            penalty = commits.mean()  # encodec's QuantizedResult.penalty: the mean over codebooks
        else:
            codes = self.quantizer.vq.encode(emb)
            quantized = self.quantizer.decode(codes)
            penalty = torch.nn.functional.mse_loss(quantized, emb)
        decoder_in = quantized
        if self.config.restore_scale:  # the encoder's output plus the quantization error, in its units
            decoder_in = raw + (self._decoder_input(quantized, raw) - raw).detach()
        recon = self.decoder(decoder_in)[:, 0, : x.shape[-1]]
        total, logs = self._reconstruction(recon, x)
        perplexity = 0.0  # effective number of codes in use in codebook 1 (0 while the quantizer warms up)
        if codes is not None:
            p = torch.bincount(codes[0].flatten(), minlength=self.bins).float()
            p /= p.sum()
            perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum()).item()
        logs |= {"penalty": penalty.item(), "perplexity_q1": perplexity}
        return total + self.config.penalty_weight * penalty, logs
