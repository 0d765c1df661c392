"""In-context sequences for the training mixture (Kosmos-1-style interleaving), so that the model can use
demonstrations put before a query (AutoICL, few-shot prompting):

    <s> <image> mu_1 </image> Q_1 A_1  <image> mu_2 </image> Q_2 A_2  <image> mu </image> Q A </s>
    <s> caption_1 <image> mu_1 </image>  caption_2 <image> mu_2 </image>  caption <image> z </image> </s>

Each demonstration is the query's task on another scene: the same question kind for questions, a
caption and its picture for text-to-image. Demonstration pictures are read (their latent means, no
diffusion loss); their text is learnt like any text. Such sequences are several pictures long, so they
come as whole batches of fewer sequences (`ICLConfig`), which keeps a step's cost near an ordinary one.
"""
from __future__ import annotations

import random

from pydantic import BaseModel, Field, field_validator
from torch import Tensor

from latentlm.data.shapes import Scene
from latentlm.data.tasks import QUESTION_KINDS, draw_example, question
from latentlm.sequence import Segment, Text, frame


class ICLConfig(BaseModel):
    every: int = Field(0, ge=0)  # every `every`-th training step is an in-context batch (0: never)
    demos: tuple[int, int] = (1, 3)  # demonstrations per sequence, drawn uniformly in [min, max]
    batch_divisor: int = Field(4, ge=1)  # an in-context batch holds batch_size // batch_divisor sequences
    # The share of in-context sequences whose pictures all show their objects scaled by one factor drawn
    # from `shrink_range` (above 1: enlarged), sizes still named as they were (data.shapes.rescale). Why:
    # read alone, a shrunk large object looks small (5 of 9 caption misses of the stage-5h model on the
    # "smaller" pictures, val); in a sequence sharing a scale, the demonstrations show what "large" looks
    # like there, so context pays. A range on both sides of 1 makes a size that only context can settle.
    shrink: float = Field(0.0, ge=0, le=1)
    shrink_range: tuple[float, float] = (0.7, 0.9)

    @field_validator("demos")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 8:
            raise ValueError(f"demos={list(v)}: need 1 <= min <= max <= 8")
        return v

    @field_validator("shrink_range")
    @classmethod
    def _factors(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.3 <= v[0] <= v[1] <= 1.5:
            raise ValueError(f"shrink_range={list(v)}: need 0.3 <= min <= max <= 1.5")
        return v


def task_key(task: str, example_task: str | None) -> str:
    """What "the same task" means for a demonstration: the question kind for questions ("vqa:colour")."""
    return example_task if example_task and example_task.startswith("vqa:") else task


def demonstration(key: str, scene: Scene, means: Tensor, tok, rng: random.Random) -> list[Segment]:
    """One solved example of task `key` on `scene` (its picture's normalised means [N, D]), no <s>/</s>."""
    if key == "t2i":
        return [Text(tok.encode(scene.caption)), *frame("image", means, tok.token_id, target=False)]
    if key.startswith("vqa:"):
        kind = key.split(":", 1)[1]
        example = question(scene, kind if kind in QUESTION_KINDS else rng.choice(QUESTION_KINDS), rng)
    else:
        example = draw_example(scene, key, rng)
    return [*frame("image", means, tok.token_id, target=False), Text(tok.encode(example.prompt) + tok.encode(example.answer))]
