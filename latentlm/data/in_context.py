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

    @field_validator("demos")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 8:
            raise ValueError(f"demos={list(v)}: need 1 <= min <= max <= 8")
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
