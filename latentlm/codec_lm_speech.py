"""Text-to-speech with the codec-token baseline (`latentlm.codec_lm.CodecLM`): text -> codes -> a waveform.

1. AR: the prefill `<s> [PROMPT-TEXT] TEXT <audio> [p_1..p_K]`, then one code of codebook 1 per step
   (a KV cache), sampled at `temperature` from the `top_k` most likely (END excluded at the first step,
   so an utterance has at least one frame). A row ends when it samples END, or at the hard cap of
   `max_audio_per_token` frames per text token.
2. NAR: codebooks 2..n_q, each one pass over every frame, greedy (argmax).
3. The EnCodec tokenizer decodes all n_q codebooks.

Per utterance that is T autoregressive steps (50 a second) and n_q - 1 NAR passes. Seeded sampling is
deterministic on CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from latentlm.audio_io import voice_recording
from latentlm.codec_lm import CodecLM, Utterance
from latentlm.diffusion_head import tiny_op_threads
from latentlm.errors import PromptError
from latentlm.generation import ONE_THREAD_PICTURES

DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_K = 50


@dataclass
class CodePrompt:
    """A speaker's reference: its codes [n_q, K] and the words said in it."""

    codes: Tensor
    transcript: str


def code_prompt(model: CodecLM, wav: np.ndarray | Tensor, sample_rate: int, transcript: str) -> CodePrompt:
    """A reference recording (mono, any rate) and its transcript -> the prompt the baseline continues."""
    codec = model.codec
    x = voice_recording(wav, sample_rate, transcript, codec)  # [T]
    with torch.no_grad():
        codes = codec.encode(x[None], n_q=model.config.n_q)  # [n_q, K]
    return CodePrompt(codes, transcript.strip())


def text_ids(model: CodecLM, text: str) -> list[int]:
    if not isinstance(text, str) or not text.strip():
        raise PromptError("the text to speak is empty; give the words, e.g. 'a red circle above a blue square'")
    ids = model.tokenizer.encode(text.strip())
    if len(ids) > model.config.max_speech_tokens:
        raise PromptError(f"the text is {len(ids)} tokens long; this model speaks at most "
                          f"{model.config.max_speech_tokens} at once: split it into sentences")
    return ids


def sample_next(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> Tensor:
    """One id per row from logits [B, V]: softmax(logits / temperature) over the `top_k` largest -> [B]."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def sample_first_codebook(model: CodecLM, rows: list[Utterance], temperature: float, top_k: int | None,
                          generator: torch.Generator | None) -> list[Tensor]:
    """AR decoding of codebook 1 for each row (prefilled from its text and prompt): [T_i] long each."""
    end = model.config.end_id
    caps = [model.config.max_audio_per_token * len(u.text) for u in rows]
    x, valid, _ = model.ar_inputs(rows)
    h, state = model.ar_backbone(x, None, valid=valid)  # [B, L, d]
    logits = model.ar_head(h[:, -1])  # [B, bins + 1]
    logits[:, end] = float("-inf")  # at least one frame
    out, length = [], [-1] * len(rows)
    for i in range(max(caps)):
        code = sample_next(logits, temperature, top_k, generator)  # [B]
        out.append(code)
        for r in range(len(rows)):
            if length[r] < 0 and code[r] == end:
                length[r] = i
            elif length[r] < 0 and i + 1 >= caps[r]:
                length[r] = i + 1
        if min(length) >= 0:
            break
        h, state = model.ar_backbone(model.ar_code(code)[:, None], state)  # [B, 1, d]
        logits = model.ar_head(h[:, -1])
    codes = torch.stack(out, dim=1)  # [B, steps]
    return [codes[r, : length[r]].clone() for r in range(len(rows))]


def fill_codebooks(model: CodecLM, rows: list[Utterance]) -> list[Tensor]:
    """NAR: codebooks 2..n_q of each row from its codebook 1 (`rows[i].codes` [1, T_i]), greedily -> [n_q, T_i]."""
    for k in range(1, model.config.n_q):
        logits = model.nar_logits(rows, [k] * len(rows))  # [T_i, bins] each
        for u, lg in zip(rows, logits):
            u.codes = torch.cat([u.codes, lg.argmax(-1).to(u.codes.device)[None]])
    return [u.codes for u in rows]


@torch.no_grad()
def sample_codes(model: CodecLM, texts: list[str], voice: CodePrompt | None = None,
                 temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = DEFAULT_TOP_K,
                 generator: torch.Generator | None = None) -> list[Tensor]:
    """Codes [n_q, T_i] of each text; the AR decides each T_i."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: use a positive temperature (1 = the model's own distribution)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k}: use at least 1 (1 = greedy), or None for all codes")
    prompt_text = text_ids(model, voice.transcript) if voice else []
    rows = [Utterance(text_ids(model, t), torch.zeros(1, 0, dtype=torch.long), prompt_text,
                      voice.codes if voice else None) for t in texts]
    with tiny_op_threads(len(rows), ONE_THREAD_PICTURES), torch.inference_mode():
        first = sample_first_codebook(model, rows, temperature, top_k, generator)
        for u, c in zip(rows, first):
            u.codes = c[None]  # [1, T]
        return fill_codebooks(model, rows)


@torch.no_grad()
def generate_codec_speech(model: CodecLM, texts: list[str], voice: CodePrompt | None = None,
                          temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = DEFAULT_TOP_K,
                          seed: int = 0) -> list[np.ndarray]:
    """Texts -> 16 kHz mono float32 waves, deterministic for a given seed on CPU."""
    generator = torch.Generator().manual_seed(seed)
    codes = sample_codes(model, texts, voice, temperature, top_k, generator)
    with tiny_op_threads(len(texts), ONE_THREAD_PICTURES), torch.inference_mode():
        return [model.codec.decode(c).clamp(-1, 1).cpu().numpy() for c in codes]
