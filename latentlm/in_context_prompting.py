"""Prompting with demonstrations in context: the inference side of the in-context training sequences.

The sequences are exactly those `latentlm.data.in_context` trains on (Kosmos-1 interleaving):

    reading:        <s> <image> mu_1 </image> Q_1 A_1  <image> mu_2 </image> Q_2 A_2  <image> mu </image> Q  -> A
    text-to-image:  <s> caption_1 <image> mu_1 </image>  caption_2 <image> mu_2 </image>  caption <image>  -> z

A demonstration (`Shot`) is a picture with its text: for reading, the prompt after `</image>` and its
answer (plain, as trained: no boxes before a spatial answer); for drawing, the caption it shows. Its
picture enters as its normalised sigma-VAE means, read (no diffusion target), as in training. With
no shots, `complete_in_context` is `understanding.complete` and `draw_in_context` is
`generation.generate_images`, token for token.

`sample_caption` lets the model write a scene description of its own: it samples the text that
follows `<s>` in its text-to-image sequences (`<s> caption <image>`), stopping at `<image>`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from latentlm.generation import generate_images
from latentlm.model import LatentLM
from latentlm.sampling_defaults import DEFAULT_CFG, DEFAULT_STEPS, DEFAULT_TEMPERATURE
from latentlm.sequence import Segment, Sequence, Text, frame
from latentlm.text_generation import DEFAULT_MAX_NEW_TOKENS, generate_text, sample_text
from latentlm.tokenizer import ADDED_TOKENS, GROUNDING_TOKENS, PATCH_TOKENS, SPAN_TOKENS
from latentlm.understanding import read_images

CAPTION_TOKENS = 32  # a shapes caption is ~10 tokens; a sampled caption is cut here


@dataclass(frozen=True)
class Shot:
    """One demonstration: `pixels` [3, H, W] in [-1, 1] at the model's resolution, and its text.

    Reading: `prompt` is the text after `</image>`, `answer` what follows it. Drawing: `prompt` is the
    caption before `<image>`; `answer` is unused."""

    pixels: Tensor
    prompt: str
    answer: str = ""


def shot_segments(model: LatentLM, shot: Shot, means: Tensor, drawing: bool) -> list[Segment]:
    """A demonstration as segments, no `<s>`: `<image> mu </image> prompt answer` (reading) or
    `caption <image> mu </image>` (drawing). `means` [N, D] are its picture's normalised means; the
    prompt and answer are encoded apart, as `data.in_context.demonstration` does."""
    tok = model.tokenizer
    picture = frame("image", means, tok.token_id, target=False)
    if drawing:
        return [Text(tok.encode(shot.prompt)), *picture]
    return [*picture, Text(tok.encode(shot.prompt) + tok.encode(shot.answer))]


def context(model: LatentLM, shots: list[Shot], drawing: bool) -> list[Segment]:
    """The demonstrations in order, their pictures read in one batch."""
    if not shots:
        return []
    means = read_images(model, torch.stack([s.pixels for s in shots]))  # [K, N, D]
    return [seg for shot, m in zip(shots, means) for seg in shot_segments(model, shot, m, drawing)]


def complete_in_context(model: LatentLM, pixels: Tensor, prompts: list[str], shots: list[list[Shot]],
                        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> list[str]:
    """`<s> demos <image> z </image> prompt` -> the text the model writes after it (greedy), per picture.

    pixels [B, 3, H, W] in [-1, 1]; one prompt and one list of shots (maybe empty) per picture. An answer
    ends at `</s>` or where another demonstration would begin (`<image>`): after a few demonstrations the
    model may go on to write one more (measured on the stage-5h model: AutoICL captions 29% right, each
    with a made-up demonstration after the caption, against 99% direct)."""
    if not pixels.shape[0] == len(prompts) == len(shots):
        raise ValueError(f"{pixels.shape[0]} pictures, {len(prompts)} prompts and {len(shots)} shot lists; "
                         "give one of each per picture")
    tok = model.tokenizer
    z = read_images(model, pixels)  # [B, N, D]
    prefixes: list[Sequence] = [
        [Text([tok.bos_id]), *context(model, s, drawing=False), *frame("image", z[i], tok.token_id, target=False),
         Text(tok.encode(p))]
        for i, (p, s) in enumerate(zip(prompts, shots))]
    ids = generate_text(model, prefixes, max_new_tokens, stop=(tok.token_id("<image>"),))
    return [tok.decode(row).strip() for row in ids]


def draw_in_context(model: LatentLM, prompts: list[str], shots: list[list[Shot]], steps: int = DEFAULT_STEPS,
                    cfg_scale: float = DEFAULT_CFG, seed: int = 0, temperature: float = DEFAULT_TEMPERATURE,
                    ) -> list[Image.Image]:
    """`<s> caption_1 <image> mu_1 </image> ... prompt <image>` -> a picture per prompt (seeded, as
    `generate_images`; guidance's unconditional stream keeps the demonstrations)."""
    if len(prompts) != len(shots):
        raise ValueError(f"{len(prompts)} prompts but {len(shots)} shot lists; give one list per prompt")
    contexts = [context(model, s, drawing=True) for s in shots]
    return generate_images(model, prompts, steps=steps, cfg_scale=cfg_scale, seed=seed, temperature=temperature,
                           contexts=contexts)


def sample_caption(model: LatentLM, seed: int, temperature: float = 1.0, max_new_tokens: int = CAPTION_TOKENS) -> str:
    """A scene description the model writes itself: text sampled after `<s>` up to `<image>`, seeded.

    Special tokens (span markers, grounding and location tokens) are never drawn: a caption is words."""
    tok = model.tokenizer
    banned = [tok.pad_id, tok.bos_id, tok.sp.unk_id()]
    for piece in (*SPAN_TOKENS, *GROUNDING_TOKENS, *PATCH_TOKENS, *ADDED_TOKENS):
        i = tok.sp.PieceToId(piece)
        if i != tok.sp.unk_id() and piece != "<image>":
            banned.append(i)
    banned += range(tok.vocab_size, model.config.vocab_size)  # rows the tokenizer has no piece for
    generator = torch.Generator().manual_seed(seed)
    ids = sample_text(model, [Text([tok.bos_id])], generator, temperature, max_new_tokens,
                      stop=(tok.token_id("<image>"),), banned=tuple(banned))
    return " ".join(tok.decode(ids).split())
