"""Measures of generated speech against a reference rendering of the same text and voice.

- `Recognizer`: pocketsphinx's en-us acoustic model (never trained on our audio), either under a
  grammar of the shapes language (JSGF: exact match of a caption) or with its general language model
  (word error rate).
- `mcd_dtw`: mel-cepstral distortion in dB after dynamic time warping: 24 mel cepstra (c1..c24 of the
  log-POWER mel spectrum, SPTK's `sp2mc` convention, which the usual MCD figures use; c0 = the energy
  left out), frames aligned by DTW, MCD = 10 / ln 10 * sqrt(2 * sum_k (c_k - c'_k)^2) averaged over the
  aligned path. On this scale (measured, espeak-ng val sentences): the sigma-VAE's round trip ~4 dB,
  another espeak-ng voice saying the same words ~8-9 dB, other words in the same voice ~10-12 dB, noise
  ~13 dB. (Cepstra of the log-magnitude spectrum are half as large, and so is every MCD on them.)
- `median_f0`: the median pitch over voiced frames (normalised autocorrelation, 60-400 Hz, 40 ms frames;
  a frame is voiced when it is louder than 5% of the utterance's loudest frame).
- `word_error_rate`: Levenshtein distance of word lists / reference length.
"""
from __future__ import annotations

import math
import tempfile
from functools import lru_cache

import numpy as np
import torch
import torchaudio

from latentlm.data.shapes import SHAPES, SIZES

SAMPLE_RATE = 16_000
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
RELATIONS = ("left of", "right of", "above", "below")


def shapes_grammar() -> str:
    """The shapes captions as a JSGF grammar: 'a [size] colour shape' or 'a colour shape relation a colour shape'."""
    return (
        "#JSGF V1.0;\ngrammar shapes;\n"
        "public <caption> = a [<size>] <colour> <shape> | a <colour> <shape> <relation> a <colour> <shape>;\n"
        f"<size> = {' | '.join(SIZES)};\n<colour> = {' | '.join(COLOURS)};\n"
        f"<shape> = {' | '.join(SHAPES)};\n<relation> = {' | '.join(RELATIONS)};\n"
    )


class Recognizer:
    """pocketsphinx, with the shapes grammar (`grammar=True`) or its general en-us language model."""

    def __init__(self, grammar: bool) -> None:
        from pocketsphinx import Decoder

        if grammar:
            with tempfile.NamedTemporaryFile("w", suffix=".gram", delete=False) as f:
                f.write(shapes_grammar())
            self.decoder = Decoder(samprate=SAMPLE_RATE, jsgf=f.name, loglevel="FATAL")
        else:
            self.decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def __call__(self, wav: np.ndarray) -> str:
        """16 kHz float wave -> the recognised words (lower case, '' when nothing)."""
        pcm = (np.clip(np.asarray(wav, dtype=np.float32), -1, 1) * 32767).astype(np.int16).tobytes()
        d = self.decoder
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return " ".join(hyp.hypstr.lower().split()) if hyp is not None else ""


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = reference.lower().replace("?", "").split(), hypothesis.lower().split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


@lru_cache(maxsize=1)
def _mel() -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=1024, hop_length=160, n_mels=40, power=2.0)


def mel_cepstra(wav: np.ndarray, order: int = 24) -> np.ndarray:
    """[T] -> [frames, order] mel cepstra c1..c_order (10 ms hop): the real cepstrum of the mel-warped
    log-power spectrum, c_k = 1/N sum_n log P_n cos(pi k (n + 1/2) / N) over N = 40 mel bands of power
    P (FFT 1024; floored 80 dB under the utterance's loudest band), as SPTK's sp2mc takes log |H|^2."""
    x = np.asarray(wav, dtype=np.float32)
    x = np.pad(x, (0, max(0, 1024 - len(x))))  # a (degenerate) wave shorter than one FFT window
    power = _mel()(torch.from_numpy(x))  # [40, frames]
    log_power = power.clamp_min(power.max() * 1e-8 + 1e-24).log()
    n = log_power.shape[0]
    k = torch.arange(n, dtype=torch.float64)
    dct = torch.cos(math.pi / n * (k[:, None] + 0.5) * k[None, :]) / n  # [bands, coeffs]
    c = log_power.double().T @ dct  # [frames, bands]
    return c[:, 1: order + 1].numpy()


def mcd_dtw(wav: np.ndarray, reference: np.ndarray) -> float:
    """Mel-cepstral distortion (dB) of `wav` against `reference` after DTW alignment."""
    a, b = mel_cepstra(wav), mel_cepstra(reference)
    diff_sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)  # [N, M]
    total, length = _dtw_on(diff_sq)
    return 10 / math.log(10) * total / max(1, length)


def _dtw_on(diff_sq: np.ndarray) -> tuple[float, int]:
    """DTW on frame distances sqrt(2 * diff_sq): (summed distance along the path, path length)."""
    dist = np.sqrt(2 * diff_sq)
    n, m = dist.shape
    cost = np.full((n + 1, m + 1), np.inf)
    length = np.zeros((n + 1, m + 1), dtype=np.int64)
    cost[0, 0] = 0.0
    for i in range(1, n + 1):  # utterances are ~300 frames of 10 ms: plain loops are fast enough
        for j in range(1, m + 1):
            c = (cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1])
            k = 0 if c[0] <= c[1] and c[0] <= c[2] else (1 if c[1] <= c[2] else 2)
            pi, pj = ((i - 1, j - 1), (i - 1, j), (i, j - 1))[k]
            cost[i, j] = dist[i - 1, j - 1] + c[k]
            length[i, j] = length[pi, pj] + 1
    return float(cost[n, m]), int(length[n, m])


def frame_f0(wav: np.ndarray, frame: int = 640, hop: int = 320, f_low: float = 60.0, f_high: float = 400.0):
    """Per-frame pitch (Hz) by normalised autocorrelation, and each frame's energy: ([F], [F]).

    The pitch period is the SHORTEST lag whose normalised autocorrelation reaches 90% of the frame's
    best, which avoids the octave-down errors of taking the best lag itself (2T correlates as well as T)."""
    x = np.asarray(wav, dtype=np.float64)
    n = 1 + max(0, len(x) - frame) // hop
    frames = np.stack([x[i * hop: i * hop + frame] for i in range(n)]) if len(x) >= frame else x[None, :frame]
    frames = frames - frames.mean(axis=1, keepdims=True)
    lags = np.arange(int(SAMPLE_RATE / f_high), int(SAMPLE_RATE / f_low) + 1)
    spec = np.fft.rfft(frames, 2 * frame)
    ac = np.fft.irfft(spec * spec.conj(), 2 * frame)[:, : frame]  # [F, frame]
    nccf = ac[:, lags] / np.maximum(ac[:, :1], 1e-12) * frame / (frame - lags)  # [F, lags], unbiased
    best = nccf.max(axis=1, keepdims=True)
    first = np.argmax(nccf >= 0.9 * best, axis=1)
    peak = np.array([i + int(np.argmax(row[i: i + max(2, lags[i] // 4)])) for i, row in zip(first, nccf)])
    return SAMPLE_RATE / lags[peak], (frames ** 2).mean(axis=1)  # the local peak right after that lag


def median_f0(wav: np.ndarray) -> float:
    """Median pitch (Hz) over the voiced frames of a 16 kHz wave (louder than 5% of the loudest frame);
    nan when none is voiced."""
    f0, energy = frame_f0(wav)
    voiced = f0[energy > 0.05 * energy.max()] if energy.max() > 0 else f0[:0]
    return float(np.median(voiced)) if len(voiced) else float("nan")
