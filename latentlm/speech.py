"""Text-to-speech by next-token diffusion: text -> audio latents (12.5 a second) -> a waveform.

The conditional stream is `<s> TEXT <audio>`, the unconditional one `<s><audio>` (classifier-free
guidance, as for pictures; both run as one batch with a KV cache). Each step the audio diffusion head
samples one latent frame with DPM-Solver++, the frame is fed back to both streams, and the text head
decides whether the span goes on: the span ends when p(`</audio>`) on the conditional stream passes
the model's `audio_stop_threshold`, or at the hard cap of `max_audio_per_token` frames per text token.

A voice prompt is a reference recording and its transcript, in the form the model was trained with
(`ModelConfig.voice_prompt_form`, `data.tts`): VALL-E's prefix, `<s> TRANSCRIPT TEXT <audio> p_1..p_K`
with the recording's latent means p, continued in that voice, or a demonstration, `<s> TRANSCRIPT <audio>
p_1..p_K </audio> TEXT <audio>`. The unconditional stream keeps the prompt's latents (`<s><audio>
p_1..p_K`, or the whole demonstration then `<audio>`), so guidance strengthens the text, not the voice.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from latentlm.audio_io import voice_recording
from latentlm.data.tts import spoken_example
from latentlm.diffusion_head import tiny_op_threads
from latentlm.errors import PromptError
from latentlm.generation import ONE_THREAD_PICTURES, _check
from latentlm.model import LatentLM
from latentlm.sequence import MODALITY_INDEX, Latent, collate

DEFAULT_SPEECH_STEPS = 10
DEFAULT_SPEECH_CFG = 2.0
DEFAULT_SPEECH_TEMPERATURE = 1.0


@dataclass
class VoicePrompt:
    """A speaker's reference: normalised latent means [K, D] and the words they say."""

    latents: Tensor
    transcript: str


def speech_codec(model: LatentLM):
    if "audio" not in model.codecs or not model.config.audio_latent_dim:
        raise PromptError("this model cannot speak: it has no audio codec and speech head; use a model trained "
                          "with the tts task")
    return model.codecs["audio"]


def voice_prompt(model: LatentLM, wav: np.ndarray | Tensor, sample_rate: int, transcript: str) -> VoicePrompt:
    """A reference recording (mono, any rate) and its transcript -> the prompt the model continues."""
    codec = speech_codec(model)
    x = voice_recording(wav, sample_rate, transcript, codec)  # [T]
    with torch.no_grad():
        mu = codec.encode(x[None])[0]  # [K, D]
    return VoicePrompt(codec.normalize(mu), transcript.strip())


def _text_ids(model: LatentLM, text: str) -> list[int]:
    if not isinstance(text, str) or not text.strip():
        raise PromptError("the text to speak is empty; give the words, e.g. 'a red circle above a blue square'")
    ids = model.tokenizer.encode(text.strip())
    limit = model.config.max_speech_tokens
    if len(ids) > limit:
        raise PromptError(f"the text is {len(ids)} tokens long; this model speaks at most {limit} at once: "
                          "split it into sentences")
    return ids


def _prefill(model: LatentLM, text_ids: list[list[int]], voice: VoicePrompt | None, guided: bool):
    """The conditional streams (and, guided, as many unconditional ones), each ending in an open audio span,
    in the voice-prompt form the model was trained with (`data.tts.spoken_example`)."""
    tok = model.tokenizer
    open_span = Latent("audio", torch.zeros(0, model.config.audio_latent_dim))
    prompt = (_text_ids(model, voice.transcript), voice.latents) if voice else None
    form = model.config.voice_prompt_form
    cond = [[*spoken_example(tok, ids, prompt, None, form), open_span] for ids in text_ids]
    uncond = [[*spoken_example(tok, [], prompt, None, form, drop=True), open_span] for _ in text_ids] if guided else []
    return collate(cond + uncond, model.config.latent_width, tok.pad_id)


def _feed(model: LatentLM, z: Tensor, guided: bool, state):
    """One backbone step on audio latents z [B, D] (to both streams when guided)."""
    z_in = torch.cat([z, z]) if guided else z
    n, width = z_in.shape[0], model.config.latent_width
    latents = torch.nn.functional.pad(z_in, (0, width - z_in.shape[1]))[:, None]  # [n, 1, width]
    ids = torch.full((n, 1), model.tokenizer.pad_id, dtype=torch.long)
    yes = torch.ones(n, 1, dtype=torch.bool)
    x = model.embed_inputs(ids, latents, yes, torch.full((n, 1), -1), torch.full((n, 1), MODALITY_INDEX["audio"]))
    return model.backbone(x, state)


@torch.no_grad()
def sample_speech_latents(
    model: LatentLM, texts: list[str], voice: VoicePrompt | None = None, steps: int = DEFAULT_SPEECH_STEPS,
    cfg_scale: float = DEFAULT_SPEECH_CFG, generator: torch.Generator | None = None,
    temperature: float = DEFAULT_SPEECH_TEMPERATURE,
) -> list[Tensor]:
    """Normalised audio latents of each text, [T_i, D] each; the model decides each T_i."""
    _check(steps, temperature)
    speech_codec(model)
    guided = cfg_scale != 1.0
    text_ids = [_text_ids(model, t) for t in texts]
    batch = _prefill(model, text_ids, voice, guided)
    b = len(texts)
    cap = [model.config.max_audio_per_token * len(ids) for ids in text_ids]
    head = model.diffusion_head("audio")
    out: list[Tensor] = []
    length = torch.full((b,), -1)  # frames of each row once it has ended
    with tiny_op_threads(b, ONE_THREAD_PICTURES), torch.inference_mode():
        h, state = model(batch)  # [2B or B, T, d]
        sampler = head.latent_sampler(b, guided, cfg_scale, steps, temperature, h.device)
        for i in range(max(cap)):
            z = sampler(h[:, -1], generator)  # [B, D]
            out.append(z)
            h, state = _feed(model, z, guided, state)
            stop = model.stop_probability(h[:b, -1]) > model.config.audio_stop_threshold  # [B]
            for r in range(b):
                if length[r] < 0 and (stop[r] or i + 1 >= cap[r]):
                    length[r] = i + 1
            if (length >= 0).all():
                break
    frames = torch.stack(out, dim=1)  # [B, N, D]
    return [frames[r, : length[r]].clone() for r in range(b)]


@torch.no_grad()
def speech_wave(codec, z: Tensor) -> np.ndarray:
    """Normalised audio latents [T, D] -> the codec's float32 wave in [-1, 1]."""
    return codec.decode(codec.denormalize(z)[None])[0].clamp(-1, 1).numpy()


@torch.no_grad()
def generate_speech(
    model: LatentLM, texts: list[str], voice: VoicePrompt | None = None, steps: int = DEFAULT_SPEECH_STEPS,
    cfg_scale: float = DEFAULT_SPEECH_CFG, seed: int = 0, temperature: float = DEFAULT_SPEECH_TEMPERATURE,
) -> list[np.ndarray]:
    """Texts -> 16 kHz mono float32 waves, deterministic for a given seed on CPU."""
    codec = speech_codec(model)
    generator = torch.Generator().manual_seed(seed)
    latents = sample_speech_latents(model, texts, voice, steps, cfg_scale, generator, temperature)
    with tiny_op_threads(len(texts), ONE_THREAD_PICTURES):
        return [speech_wave(codec, z) for z in latents]
