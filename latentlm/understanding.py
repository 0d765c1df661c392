"""Reading pictures: captions, answers and Kosmos-2 grounding from one LatentLM.

A picture enters as its sigma-VAE means (normalised), framed by `<image>`...`</image>`, followed by
the task's prompt (`latentlm.data.tasks` defines the prompts the model was trained on); the model
writes the answer greedily. Boxes come back through Kosmos-2's location tokens.
"""
from __future__ import annotations

import torch
from torch import Tensor

from latentlm.data.tasks import CAPTION_PROMPTS, GROUNDED_CAPTION_PROMPT, final_answer, ground_prompt
from latentlm.errors import PromptError
from latentlm.grounding import parse_grounded
from latentlm.model import LatentLM
from latentlm.sequence import Text, frame
from latentlm.text_generation import DEFAULT_MAX_NEW_TOKENS, generate_text

GROUND_TOKENS = 8  # phrase grounding writes `<object><patch_index_A><patch_index_B></object>`: 4 tokens


@torch.no_grad()
def read_images(model: LatentLM, pixels: Tensor) -> Tensor:
    """Pixels [B, 3, H, W] in [-1, 1] -> normalised latent means [B, N, latent_dim]."""
    if "image" not in model.codecs:
        raise ValueError("this model has no image codec; it cannot read pictures")
    if model.config.reads is False:
        raise PromptError("this model was trained to draw only; it cannot read pictures (captions, questions, "
                          "grounding): use a model trained with the reading stages, e.g. --model "
                          "runs/shapes-tiny-5n/final (Makefile: make shapes-tiny)")
    codec = model.codecs["image"]
    return codec.normalize(codec.encode(pixels))


def complete(model: LatentLM, pixels: Tensor, prompts: list[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
             ) -> list[str]:
    """`<s> <image> z </image> prompt` -> the text the model writes after it, one per picture."""
    if pixels.shape[0] != len(prompts):
        raise ValueError(f"{pixels.shape[0]} pictures but {len(prompts)} prompts; give one prompt per picture")
    tok = model.tokenizer
    z = read_images(model, pixels)  # [B, N, D]
    prefixes = [[Text([tok.bos_id]), *frame("image", z[i], tok.token_id, target=False), Text(tok.encode(p))]
                for i, p in enumerate(prompts)]
    return [tok.decode(ids).strip() for ids in generate_text(model, prefixes, max_new_tokens)]


def caption(model: LatentLM, pixels: Tensor, grounded: bool = False, via_boxes: bool = True) -> list[str]:
    """A caption per picture; `grounded=True` gives Kosmos-2 text with a box per object phrase.

    With `via_boxes` (the default) a plain caption is the grounded caption without its tags: the model
    writes each object's box before the words that follow it, and with the boxes in its context it names
    the relation right far more often (val split, stage-4 model: two-object captions 92% this way, 66%
    from the plain caption prompt; BENCHMARKS.md). `via_boxes=False` uses the plain caption prompt."""
    if not grounded and not via_boxes:
        return complete(model, pixels, [CAPTION_PROMPTS[0]] * pixels.shape[0])
    out = complete(model, pixels, [GROUNDED_CAPTION_PROMPT] * pixels.shape[0])
    return [GROUNDED_CAPTION_PROMPT + text for text in out] if grounded else [parse_grounded(t).text for t in out]


def ask(model: LatentLM, pixels: Tensor, questions: list[str]) -> list[str]:
    """An answer per (picture, question). A model trained with boxed answers boxes the objects before a
    spatial answer (`tasks.boxed_answer`), and may state the relation it reads off them first; the answer is
    the text without those tags and that statement (`ask_with_reasons` keeps the statement)."""
    return [final_answer(a) for a in ask_with_reasons(model, pixels, questions)]


def answer_text(raw: str) -> str:
    """The answer in what a model wrote after a question: no box tags, no stated relation before it."""
    return final_answer(parse_grounded(raw).text)


def ask_with_reasons(model: LatentLM, pixels: Tensor, questions: list[str]) -> list[str]:
    """Answers as written, without box tags: 'the red circle is left of the blue square, so yes'."""
    asked = [_clean(q, "question", "what colour is the circle?") for q in questions]
    return [parse_grounded(a).text for a in complete(model, pixels, asked)]


def ground(model: LatentLM, pixels: Tensor, phrases: list[str]) -> list[str]:
    """Kosmos-2 text `<grounding><phrase> p</phrase><object>...</object>` locating each phrase."""
    prompts = [ground_prompt(_clean(p, "phrase", "the blue square")) for p in phrases]
    return [p + text for p, text in zip(prompts, complete(model, pixels, prompts, max_new_tokens=GROUND_TOKENS))]


def _clean(text: object, what: str, example: str) -> str:
    if not isinstance(text, str):
        raise PromptError(f"the {what} must be a string, not {type(text).__name__}; e.g. {example!r}")
    text = " ".join(text.split())
    if not text:
        raise PromptError(f"the {what} is empty; e.g. {example!r}")
    return text
