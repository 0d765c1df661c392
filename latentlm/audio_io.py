"""Reading and writing sound files: mono float32 waves and their sample rate.

`load_audio` takes a file path (WAV, FLAC, OGG: whatever libsndfile reads) or a `(wave, rate)` pair and
gives a mono float32 wave; stereo is averaged. `save_audio` writes 16-bit PCM WAV (or FLAC) atomically;
`wav_bytes` is the same WAV in memory. `Sound` is a generated wave with its rate (what a workflow step
passes on: it is a `(wave, rate)` pair, so it serves wherever a recording is taken).
A missing, unreadable, empty or non-finite input is a `LatentLMError` naming it.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from latentlm.atomic_write import atomic_write
from latentlm.errors import LatentLMError

AUDIO_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
AudioInput = "str | os.PathLike | tuple[np.ndarray, int]"


class Sound(NamedTuple):
    """A mono float32 wave [T] and its sample rate."""

    wave: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.wave) / self.sample_rate


def wav_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
    """`wave` (float, clipped to [-1, 1]) as a 16-bit PCM WAV file's bytes."""
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, np.clip(np.asarray(wave, dtype=np.float32), -1, 1), sample_rate, format="WAV",
                    subtype="PCM_16")
    return buf.getvalue()


def load_audio(source) -> tuple[np.ndarray, int]:
    """A sound file path or a (wave, sample_rate) pair -> (mono float32 wave [T], sample_rate)."""
    if isinstance(source, (str, os.PathLike)):
        wav, rate = _read(Path(source))
        name = str(source)
    elif isinstance(source, tuple) and len(source) == 2:
        wav, rate = np.asarray(source[0]), source[1]
        name = "the audio array"
    else:
        raise LatentLMError(f"audio must be a file path or a (wave, sample_rate) pair, not {type(source).__name__}")
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise LatentLMError(f"{name}: the sample rate must be a positive integer, got {rate!r}")
    if wav.ndim == 2:
        wav = wav.mean(axis=1)  # [T, channels] -> mono
    if wav.ndim != 1 or wav.size == 0:
        raise LatentLMError(f"{name}: expected a mono wave [T] or [T, channels] with samples, got shape {list(wav.shape)}")
    if not np.issubdtype(wav.dtype, np.number) or not np.isfinite(wav).all():
        raise LatentLMError(f"{name}: the samples must be finite numbers")
    return wav.astype(np.float32), int(rate)


def _read(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    if not path.is_file():
        raise LatentLMError(f"no such sound file: {path}")
    try:
        wav, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise LatentLMError(f"{path} is not a sound file we can read ({e}); use WAV or FLAC") from None
    return wav, rate


def check_audio_path(path: str | os.PathLike, option: str = "--out") -> Path:
    path = Path(path).expanduser()
    if path.suffix.lower() not in AUDIO_FORMATS:
        raise LatentLMError(f"{option} {path}: unknown sound format {path.suffix or '(no suffix)'!r}; "
                            f"use one of {', '.join(AUDIO_FORMATS)}")
    return path


def save_audio(wav: np.ndarray, sample_rate: int, out: str | os.PathLike) -> Path:
    """Write `wav` (float in [-1, 1]) as 16-bit PCM in the format the suffix names, atomically."""
    import soundfile

    out = check_audio_path(out)
    data = np.clip(np.asarray(wav, dtype=np.float32), -1, 1)
    atomic_write(out, lambda f: soundfile.write(f, data, sample_rate, subtype="PCM_16",
                                                format=AUDIO_FORMATS[out.suffix.lower()]))
    return out


def voice_recording(wav, sample_rate: int, transcript: object, codec):
    """A speaker's reference recording for a voice prompt, checked (mono, at least one codec frame long, with
    the words said in it) and resampled to `codec`'s rate: float32 [T]. A `PromptError` names what is wrong."""
    import torch
    import torchaudio.functional as AF

    from latentlm.errors import PromptError

    if not isinstance(transcript, str) or not transcript.strip():
        raise PromptError("a voice prompt needs the words said in it: pass voice_text (CLI: --voice-text)")
    x = torch.as_tensor(np.asarray(wav, dtype=np.float32))
    if x.ndim != 1 or x.numel() < codec.hop_length:
        raise PromptError(f"the voice recording must be mono and at least {codec.hop_length / codec.sample_rate:.2f} "
                          f"s long, got shape {list(x.shape)}")
    return AF.resample(x, sample_rate, codec.sample_rate) if sample_rate != codec.sample_rate else x
