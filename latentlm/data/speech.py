"""The speech data set: espeak-ng speaking shapes-world captions and general short sentences.

Item `index` of a split is a pure function of (split, index): its text (half shapes captions, half
sentences of `latentlm.data.sentences`), its voice (one of VOICES, held-out ones included) and, on
one machine, its waveform: 16 kHz mono float32, loudness-normalised. The test split speaks only
held-out texts (`sentences.is_held_out`): unseen general sentences and unseen caption
combinations. Synthesis needs the `speech` extra; importing this module does not.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentlm.data.sentences import first_accepted, sentence_for
from latentlm.data.shapes import sample_scene, split_seed

SAMPLE_RATE = 16_000
# Loudness: gated RMS (BS.1770's gating without its K-weighting), set to this level in dBFS.
TARGET_DBFS = -23.0
FRAME_S = 0.02  # gating frames: 20 ms
SILENCE_GATE_DB = -50.0  # frames this far below the loudest frame are silence
RELATIVE_GATE_DB = -10.0  # ... and so are frames 10 dB below the mean of the other frames
PEAK_LIMIT = 0.99  # a louder peak scales the whole utterance down (rare: speech peaks ~17 dB over RMS)
SHAPES_SHARE = 0.5  # share of the items that speak a shapes caption


@dataclass(frozen=True)
class Voice:
    """One speaker: an espeak-ng voice (language+variant) at a fixed speed (words a minute) and pitch (0-100)."""

    name: str
    espeak: str
    speed: int
    pitch: int
    gender: str
    held_out: bool = False  # kept out of the training voice-prompt pool (for voice-prompt evaluation)


VOICES: tuple[Voice, ...] = (
    Voice("amy", "en-us+f1", 165, 55, "female"),
    Voice("ben", "en-us+m1", 150, 45, "male"),
    Voice("cara", "en+f3", 185, 60, "female"),
    Voice("dev", "en+m3", 135, 40, "male"),
    Voice("eli", "en-us+f2", 145, 65, "female"),
    Voice("finn", "en-us+m4", 175, 35, "male"),
    Voice("gwen", "en+f4", 160, 50, "female", held_out=True),
    Voice("hugo", "en-us+m6", 155, 45, "male", held_out=True),
)
VOICE_BY_NAME = {v.name: v for v in VOICES}


def training_voices() -> tuple[Voice, ...]:
    """The voice-prompt pool of training: every voice that is not held out."""
    return tuple(v for v in VOICES if not v.held_out)


def speech_text(split: str, index: int) -> tuple[str, str]:
    """(text, source) of item `index`: a shapes caption ("shapes") or a general sentence ("general")."""
    rng = random.Random(split_seed(split, index))
    if rng.random() < SHAPES_SHARE:
        return first_accepted(split, index, lambda seed: sample_scene(seed).caption), "shapes"
    return sentence_for(split, index), "general"


def speech_voice(split: str, index: int) -> Voice:
    """The voice of item `index`, drawn uniformly from all of VOICES."""
    rng = random.Random(split_seed(split, index))
    rng.random()  # the draw of speech_text
    return rng.choice(VOICES)


def gated_rms_db(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Loudness in dBFS: RMS over the 20 ms frames that pass a silence gate and a relative gate.

    Both gates are relative to the signal itself, so scaling `wav` by g moves this by exactly
    20 log10 g: one gain hits the target."""
    frame = max(1, int(FRAME_S * sample_rate))
    n = len(wav) // frame
    if n == 0:
        return float("-inf")
    power = (wav[: n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(axis=1)
    if power.max() <= 0:
        return float("-inf")
    power = power[power > power.max() * 10 ** (SILENCE_GATE_DB / 10)]
    power = power[power > power.mean() * 10 ** (RELATIVE_GATE_DB / 10)]
    return float(10 * np.log10(power.mean()))


def normalize_loudness(wav: np.ndarray, sample_rate: int = SAMPLE_RATE, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Scale `wav` so that its gated RMS is `target_dbfs`; peaks stay under PEAK_LIMIT. Silence stays silent."""
    level = gated_rms_db(wav, sample_rate)
    if not np.isfinite(level):
        return wav.astype(np.float32)
    gain = 10 ** ((target_dbfs - level) / 20)
    peak = float(np.abs(wav).max()) * gain
    if peak > PEAK_LIMIT:
        gain *= PEAK_LIMIT / peak
    return (wav * gain).astype(np.float32)


def speak(text: str, voice: Voice) -> np.ndarray:
    """`text` in `voice`: espeak-ng at 22050 Hz, resampled to 16 kHz, loudness-normalised."""
    import torch
    import torchaudio.functional as AF

    from latentlm.data.espeak import synthesize

    wav, rate = synthesize(text, voice.espeak, voice.speed, voice.pitch)
    wav16 = AF.resample(torch.from_numpy(wav), rate, SAMPLE_RATE).numpy()
    return normalize_loudness(wav16)


def speech_item(split: str, index: int) -> tuple[str, Voice, np.ndarray]:
    """(text, voice, 16 kHz waveform) of item `index` of `split`."""
    text, _ = speech_text(split, index)
    voice = speech_voice(split, index)
    return text, voice, speak(text, voice)


def _write_wav(path: Path, wav: np.ndarray) -> None:
    """16-bit PCM WAV, written to a temporary name and renamed, so no reader sees half a file."""
    import soundfile as sf

    tmp = path.with_name(path.name + ".tmp")
    sf.write(tmp, wav, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def write_speech_split(out_dir: str | os.PathLike, n: int, split: str = "train", start: int = 0) -> Path:
    """Write items [start, start + n) of `split` as WAVs plus `manifest.jsonl` (text, voice, duration,
    file, split, index, source, sample_rate) into `out_dir`; returns the manifest. The manifest is
    written to a temporary file and renamed, so it only ever lists complete WAVs."""
    from tqdm import tqdm

    from latentlm.data.espeak import require

    require()  # a missing library fails here, before any file is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    tmp = manifest.with_suffix(".jsonl.tmp")
    try:
        with open(tmp, "w") as f:
            for i in tqdm(range(start, start + n), desc=f"speech {split}", unit="utt"):
                f.write(json.dumps(_write_item(out, split, i)) + "\n")
        os.replace(tmp, manifest)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


def _write_item(out: Path, split: str, index: int) -> dict:
    """Synthesise item `index`, write its WAV into `out` and return its manifest record."""
    text, source = speech_text(split, index)
    voice = speech_voice(split, index)
    wav = speak(text, voice)
    name = f"{split}_{index:07d}.wav"
    _write_wav(out / name, wav)
    return {"file": name, "split": split, "index": index, "text": text, "voice": voice.name,
            "duration": round(len(wav) / SAMPLE_RATE, 4), "source": source, "sample_rate": SAMPLE_RATE}
