"""The narrow interface in-context prompting talks to the model through, and its LatentLM implementation.

Three calls cover every strategy (`workflows/autoicl.py`):

- `write_caption(seed)`: a scene description the model writes itself (sampled text after `<s>`);
- `draw(caption, seed, demos)`: a picture of it, with drawing demonstrations in context;
- `complete(picture, prompt, demos)`: the text the model writes after `<image> picture </image> prompt`,
  with reading demonstrations in context.

Tests pass a scripted stand-in with these methods; `Counted` wraps either to count calls and time.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from PIL import Image

from latentlm.in_context_prompting import Shot, complete_in_context, draw_in_context, sample_caption
from latentlm.model import LatentLM
from latentlm.text_generation import DEFAULT_MAX_NEW_TOKENS
from latentlm.understanding import GROUND_TOKENS
from latentlm.workflows.ground import model_pixels


class Demonstration(Protocol):
    picture: Image.Image
    prompt: str
    answer: str


class ICLModel(Protocol):
    def write_caption(self, seed: int) -> str: ...

    def draw(self, caption: str, seed: int, demos: Sequence[Demonstration] = ()) -> Image.Image: ...

    def complete(self, picture: Image.Image, prompt: str, demos: Sequence[Demonstration] = ()) -> str: ...


class LatentLMForICL:
    """`ICLModel` over a LatentLM, with the Session's sampling settings for drawing."""

    def __init__(self, model: LatentLM, steps: int, cfg_scale: float, temperature: float,
                 caption_temperature: float = 1.0):
        self.model, self.steps, self.cfg_scale, self.temperature = model, steps, cfg_scale, temperature
        self.caption_temperature = caption_temperature

    def _shot(self, demo: Demonstration) -> Shot:
        return Shot(model_pixels(self.model, demo.picture)[0], demo.prompt, demo.answer)  # pixels [3, S, S]

    def write_caption(self, seed: int) -> str:
        return sample_caption(self.model, seed, self.caption_temperature)

    def draw(self, caption: str, seed: int, demos: Sequence[Demonstration] = ()) -> Image.Image:
        shots = [self._shot(d) for d in demos]
        return draw_in_context(self.model, [caption], [shots], self.steps, self.cfg_scale, seed, self.temperature)[0]

    def complete(self, picture: Image.Image, prompt: str, demos: Sequence[Demonstration] = ()) -> str:
        limit = GROUND_TOKENS if prompt.startswith("<grounding><phrase>") else DEFAULT_MAX_NEW_TOKENS
        shots = [self._shot(d) for d in demos]
        return complete_in_context(self.model, model_pixels(self.model, picture), [prompt], [shots], limit)[0]


class Counted:
    """An `ICLModel` that counts its calls by method and the seconds they take."""

    def __init__(self, model: ICLModel):
        self.model = model
        self.calls: Counter[str] = Counter()
        self.seconds = 0.0

    def _timed(self, name: str, *args):
        start = time.perf_counter()
        try:
            return getattr(self.model, name)(*args)
        finally:
            self.calls[name] += 1
            self.seconds += time.perf_counter() - start

    def write_caption(self, seed: int) -> str:
        return self._timed("write_caption", seed)

    def draw(self, caption: str, seed: int, demos: Sequence[Demonstration] = ()) -> Image.Image:
        return self._timed("draw", caption, seed, list(demos))

    def complete(self, picture: Image.Image, prompt: str, demos: Sequence[Demonstration] = ()) -> str:
        return self._timed("complete", picture, prompt, list(demos))

    @property
    def total(self) -> int:
        return sum(self.calls.values())
