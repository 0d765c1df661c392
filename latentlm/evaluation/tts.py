"""`latentlm eval tts`: text-to-speech on held-out sentences, against espeak-ng's own rendering.

Items are the first `n` of a speech split (`test` to report: unseen texts; `val` for choices). Each
item is spoken by the model with a voice prompt of its own speaker (another utterance of that voice,
from the val split, with its transcript, never the item's own words), so the reference is espeak-ng's
rendering of the same text in the same voice. Reported (`speech_metrics` says how each is measured):

- intelligibility: shapes sentences recognised exactly under the shapes grammar, for ours and for the
  reference audio (the bar is relative to the reference's rate); word error rate with the general
  language model over all items;
- MCD-DTW (dB) against the reference; the duration ratio ours / reference;
- voice match: median F0 within 10% of the reference's, on the held-out voices (never prompts in training);
- real-time factor (generation + decoding seconds / seconds of audio, batch 1), and per second of audio:
  autoregressive steps, diffusion-head calls (ours), NAR passes (the baseline) and network calls (their sum).

Both kinds of model are measured the same way (`load_tts_model` picks by the checkpoint's config): our
LatentLM (latent frames, each sampled by `steps` diffusion-head calls; `cfg_scale`) and the codec-token
baseline `CodecLM` (one AR step per codec frame, then n_q - 1 NAR passes per utterance; `temperature`, `top_k`).
"""
from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
from tqdm.auto import tqdm

from latentlm.codec_lm import CodecLM
from latentlm.codec_lm_speech import DEFAULT_TOP_K, code_prompt, generate_codec_speech
from latentlm.data.speech import VOICE_BY_NAME, speak, speech_item, speech_text, speech_voice
from latentlm.evaluation.speech_metrics import Recognizer, mcd_dtw, median_f0, word_error_rate
from latentlm.speech import (
    DEFAULT_SPEECH_CFG, DEFAULT_SPEECH_STEPS, DEFAULT_SPEECH_TEMPERATURE, generate_speech, voice_prompt,
)

PROMPT_MAX_SECONDS = 4.0


def prompt_recording(voice: str, not_text: str = "") -> tuple[str, np.ndarray]:
    """(transcript, wave) of the first val utterance of `voice` at most PROMPT_MAX_SECONDS long whose words are
    not `not_text` (the sentence to be spoken: a prompt that says it already would give the answer away, and
    training never prompts with the target's own words)."""
    for text, wav in _short_val_utterances(voice):
        if text != not_text:
            return text, wav
    raise RuntimeError(f"no short val utterance of voice {voice!r} other than {not_text!r}")


@lru_cache(maxsize=None)
def _short_val_utterances(voice: str, count: int = 2) -> tuple[tuple[str, np.ndarray], ...]:
    """The first `count` val utterances of `voice` (distinct texts) at most PROMPT_MAX_SECONDS long."""
    found: list[tuple[str, np.ndarray]] = []
    for i in range(10_000):
        if speech_voice("val", i).name == voice:
            text, _ = speech_text("val", i)
            if all(text != t for t, _ in found):
                wav = speak(text, VOICE_BY_NAME[voice])
                if len(wav) <= PROMPT_MAX_SECONDS * 16_000:
                    found.append((text, wav))
                    if len(found) == count:
                        break
    return tuple(found)


def load_tts_model(name_or_path, verify: bool = True):
    """A LatentLM or, when its config says `kind: codec_lm`, the codec-token baseline."""
    from latentlm.checkpoint import read_config, resolve_checkpoint
    from latentlm.model import LatentLM

    directory = resolve_checkpoint(name_or_path)
    if read_config(directory, verify).get("kind") == "codec_lm":
        return CodecLM.from_pretrained(directory, verify=verify)
    return LatentLM.from_pretrained(directory, verify=verify)


def _speak(model, text: str, prompt_text: str, prompt_wav: np.ndarray, seed: int, steps: int, cfg_scale: float,
           temperature: float, top_k: int | None) -> tuple[np.ndarray, dict]:
    """One utterance in the prompt's voice: (wave, network calls besides the AR steps)."""
    if isinstance(model, CodecLM):
        prompt = code_prompt(model, prompt_wav, 16_000, prompt_text)
        wav = generate_codec_speech(model, [text], prompt, temperature, top_k, seed)[0]
        return wav, {"head_calls": 0, "nar_passes": model.config.n_q - 1}
    prompt = voice_prompt(model, prompt_wav, 16_000, prompt_text)
    wav = generate_speech(model, [text], prompt, steps, cfg_scale, seed, temperature)[0]
    frames = len(wav) // model.codecs["audio"].hop_length
    return wav, {"head_calls": steps * frames, "nar_passes": 0}  # guided streams share each head call


def eval_tts(model, n: int = 40, split: str = "test", steps: int = DEFAULT_SPEECH_STEPS,
             cfg_scale: float = DEFAULT_SPEECH_CFG, temperature: float = DEFAULT_SPEECH_TEMPERATURE, seed: int = 0,
             progress: bool = True, top_k: int | None = DEFAULT_TOP_K) -> dict:
    """`model`: a LatentLM (steps, cfg_scale, temperature) or a CodecLM (temperature, top_k)."""
    grammar, general = Recognizer(grammar=True), Recognizer(grammar=False)
    rows = []
    for i in tqdm(range(n), desc="eval tts", disable=not progress):
        text, voice, ref = speech_item(split, i)
        prompt_text, prompt_wav = prompt_recording(voice.name, not_text=text)
        start = time.perf_counter()
        wav, calls = _speak(model, text, prompt_text, prompt_wav, seed + i, steps, cfg_scale, temperature, top_k)
        seconds = time.perf_counter() - start
        row = {"text": text, "voice": voice.name, "held_out_voice": voice.held_out, "seconds": seconds,
               "audio_seconds": len(wav) / 16_000, "frames": len(wav) // model.codecs["audio"].hop_length, **calls,
               "duration_ratio": len(wav) / len(ref), "mcd": mcd_dtw(wav, ref),
               "wer": word_error_rate(text, general(wav)), "wer_reference": word_error_rate(text, general(ref)),
               "f0": median_f0(wav), "f0_reference": median_f0(ref)}
        if speech_text(split, i)[1] == "shapes":
            row["heard"], row["heard_reference"] = grammar(wav), grammar(ref)
        rows.append(row)
    return summarise(rows) | {"model": "codec_lm" if isinstance(model, CodecLM) else "latentlm"}


def summarise(rows: list[dict]) -> dict:
    shapes = [r for r in rows if "heard" in r]
    held = [r for r in rows if r["held_out_voice"] and np.isfinite(r["f0"]) and np.isfinite(r["f0_reference"])]
    audio = sum(r["audio_seconds"] for r in rows)
    exact = np.mean([r["heard"] == r["text"] for r in shapes]) if shapes else float("nan")
    exact_ref = np.mean([r["heard_reference"] == r["text"] for r in shapes]) if shapes else float("nan")
    return {
        "n": len(rows), "n_shapes": len(shapes),
        "grammar_exact": float(exact), "grammar_exact_reference": float(exact_ref),
        "intelligibility_vs_reference": float(exact / exact_ref) if exact_ref else float("nan"),
        "wer": float(np.mean([r["wer"] for r in rows])), "wer_reference": float(np.mean([r["wer_reference"] for r in rows])),
        "mcd_db": float(np.mean([r["mcd"] for r in rows])),
        "duration_within_20pct": float(np.mean([abs(r["duration_ratio"] - 1) <= 0.2 for r in rows])),
        "duration_ratio_median": float(np.median([r["duration_ratio"] for r in rows])),
        "f0_within_10pct_held_out": float(np.mean([abs(r["f0"] / r["f0_reference"] - 1) <= 0.1 for r in held]))
        if held else float("nan"),
        "n_held_out_voice": len(held),
        "real_time_factor": sum(r["seconds"] for r in rows) / audio,
        "ar_steps_per_second": sum(r["frames"] for r in rows) / audio,
        "head_calls_per_second": sum(r["head_calls"] for r in rows) / audio,
        "nar_passes_per_second": sum(r["nar_passes"] for r in rows) / audio,
        "network_calls_per_second": sum(r["frames"] + r["head_calls"] + r["nar_passes"] for r in rows) / audio,
        "failures": [{k: r[k] for k in ("text", "voice", "heard", "duration_ratio")} for r in shapes
                     if r["heard"] != r["text"]][:10],
    }
