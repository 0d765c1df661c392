"""Evaluation of audio codecs on held-out speech: reconstruction distances and rates.

Every codec is measured on the same utterances (the first `n` of the speech test split, whole, one at
a time) with the same metrics, so the sigma-VAE and the EnCodec tokenizer compare directly:

- `mel_distance`: mean |log mel(x_hat) - log mel(x)| (natural log, 80 HTK mel bands, FFT 1024, hop
  256, magnitudes clamped at 1e-5): `AudioReconstructionLoss.mel_distance`.
- `stft_distance`: auraloss's multi-resolution STFT loss (spectral convergence + log-magnitude L1 at
  FFT sizes 1024/2048/512).
- rates: `frames_per_second` (autoregressive steps a second of audio), `values_per_second` (floats for
  a sigma-VAE, codes for a tokenizer), `bits_per_second` (a tokenizer's n_q * log2(bins) * fps; for a
  sigma-VAE the fp16 size of its latents, 16 bits a float, for scale only) and `compression` =
  sample_rate / values_per_second (the LatentLM paper's "compression ratio").

x_hat = codec.reconstruct(x): decode(encode(x)) from the posterior means (sigma-VAE) or the codes
(tokenizer), cropped to x's length. A sigma-VAE is also measured through z = mu + sigma*eps (seeded),
the kind of latent its LM is trained on: `mel_distance_perturbed`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from latentlm.codecs.audio_sigma_vae import AudioReconstructionLoss


def speech_waves(n: int = 64, split: str = "test") -> list[Tensor]:
    """Utterances 0..n-1 of the speech `split` as float32 [T] tensors at 16 kHz (synthesised with espeak-ng)."""
    from latentlm.data.speech import speech_item

    return [torch.from_numpy(speech_item(split, i)[2]) for i in range(n)]


def codec_rates(codec: nn.Module) -> dict:
    """Frame rate, values a second, bits a second and compression ratio of an audio codec."""
    fps = codec.frames_per_second
    if hasattr(codec, "n_q"):  # a tokenizer: n_q codes of log2(bins) bits a frame
        values, bits = fps * codec.n_q, codec.bitrate
        extra = {"n_q": codec.n_q, "bins": codec.bins}
    else:  # a sigma-VAE: latent_dim floats a frame
        values, bits = codec.floats_per_second, codec.floats_per_second * 16
        extra = {"latent_dim": codec.latent_dim}
    return {"frames_per_second": fps, "values_per_second": values, "bits_per_second": bits,
            "compression": codec.sample_rate / values, "sample_rate": codec.sample_rate} | extra


@torch.no_grad()
def eval_audio_codec(
    codec: nn.Module, n: int = 64, split: str = "test", waves: Sequence[Tensor] | None = None, seed: int = 0
) -> dict:
    """Mel and MR-STFT distances of codec.reconstruct(x) vs x over `waves` (default: the first `n`
    utterances of the speech `split`), averaged over utterances, plus the codec's rates."""
    codec.eval()
    waves = speech_waves(n, split) if waves is None else list(waves)
    metric = AudioReconstructionLoss(codec.sample_rate)
    device = next(codec.parameters()).device
    metric.to(device)
    generator = torch.Generator().manual_seed(seed)
    mel, stft, mel_noisy = [], [], []
    for wav in waves:
        x = wav.float().reshape(1, -1).to(device)
        y = codec.reconstruct(x).float()
        mel.append(metric.mel_distance(y, x).item())
        stft.append(metric.stft_distance(y, x).item())
        if hasattr(codec, "perturb"):
            z = codec.perturb(codec.encode(x), generator)
            y_noisy = codec.decode(z)[:, : x.shape[-1]].float()
            mel_noisy.append(metric.mel_distance(y_noisy, x).item())
    out = {
        "mel_distance": sum(mel) / len(mel), "stft_distance": sum(stft) / len(stft),
        "mel_distance_max": max(mel), "n": len(waves), "split": split,
        "seconds": sum(w.numel() for w in waves) / codec.sample_rate,
    }
    if mel_noisy:
        out["mel_distance_perturbed"] = sum(mel_noisy) / len(mel_noisy)
    return out | codec_rates(codec)


@torch.no_grad()
def round_trip_intelligibility(codec: nn.Module, n: int = 60, split: str = "test") -> dict:
    """Shapes sentences among the first `n` items of `split`, recognised exactly under the shapes grammar
    (pocketsphinx), from the originals and from codec.reconstruct of them."""
    from latentlm.data.speech import speech_item, speech_text
    from latentlm.evaluation.speech_metrics import Recognizer

    heard = Recognizer(grammar=True)
    codec.eval()
    ok, ok_round = [], []
    for i in range(n):
        text, source = speech_text(split, i)
        if source != "shapes":
            continue
        wav = torch.from_numpy(speech_item(split, i)[2])
        ok.append(heard(wav.numpy()) == text)
        ok_round.append(heard(codec.reconstruct(wav[None])[0].clamp(-1, 1).numpy()) == text)
    return {"n_shapes": len(ok), "grammar_exact_original": sum(ok) / len(ok),
            "grammar_exact_round_trip": sum(ok_round) / len(ok_round)}


def compare_audio_codecs(codecs: Mapping[str, nn.Module], n: int = 64, split: str = "test") -> dict[str, dict]:
    """`eval_audio_codec` of each named codec on the same synthesised utterances."""
    waves = speech_waves(n, split)
    return {name: eval_audio_codec(codec, n, split, waves=waves) for name, codec in codecs.items()}


def format_comparison(results: Mapping[str, dict]) -> str:
    """A small table of `compare_audio_codecs` results."""
    rows = ["codec | AR steps/s | values/s | bits/s | compression | mel dist | MR-STFT dist"]
    for name, r in results.items():
        rows.append(
            f"{name} | {r['frames_per_second']:g} | {r['values_per_second']:g} | {r['bits_per_second']:g} | "
            f"{r['compression']:.0f} | {r['mel_distance']:.3f} | {r['stft_distance']:.3f}"
        )
    return "\n".join(rows)


__all__ = ["codec_rates", "compare_audio_codecs", "eval_audio_codec", "format_comparison", "round_trip_intelligibility",
           "speech_waves"]
