"""Shifted pictures of shapes-world scenes: reading measured off the training distribution.

Each `Shift` maps a scene to the scene the picture shows (only `smaller` moves anything: its boxes
are the truth for grounding and relations) and draws it:

| shift | picture |
|---|---|
| `shapes` | the training renderer (no shift) |
| `plain` | the second, anti-aliased renderer written from the spec (`evaluation.plain_renderer`) |
| `colour` | every channel moved by +15 or -15 (the sign per channel, seeded by the scene), clipped to 0-255 |
| `jpeg30` | saved as JPEG at quality 30 and read back |
| `smaller` | every object's box 20% smaller about its centre, drawn by the training renderer |

Everything is a pure function of the scene, so every run sees the same pictures.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from latentlm.data.shapes import Scene, scene_rng, shrink
from latentlm.evaluation.plain_renderer import draw_plain
from latentlm.images import to_tensor

COLOUR_SHIFT = 15
JPEG_QUALITY = 30
SMALLER = 0.8


def smaller(scene: Scene) -> Scene:
    """The `smaller` shift's scene: every object's box scaled by SMALLER about its centre."""
    return shrink(scene, SMALLER)


def colour_shifted(picture: Image.Image, seed: int, amount: int = COLOUR_SHIFT) -> Image.Image:
    """Each RGB channel moved by +amount or -amount (signs drawn for the scene of `seed`), clipped."""
    signs = np.array(scene_rng(seed, "colour shift").choices((-1, 1), k=3))  # [3]
    a = np.asarray(picture.convert("RGB"), dtype=np.int16) + signs * amount  # [H, W, 3]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def jpeg(picture: Image.Image, quality: int = JPEG_QUALITY) -> Image.Image:
    """The picture after a JPEG round trip at `quality`."""
    buf = io.BytesIO()
    picture.convert("RGB").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


@dataclass(frozen=True)
class Shift:
    name: str
    scene: Callable[[Scene], Scene]  # the scene the picture shows (the truth)
    draw: Callable[[Scene], Image.Image]  # of that scene

    def pictures(self, scenes: list[Scene]) -> list[Image.Image]:
        return [self.draw(self.scene(s)) for s in scenes]

    def render(self, scenes: list[Scene]) -> Tensor:
        """As `data.rendered.render_scenes`: [B, 3, 64, 64] in [-1, 1]."""
        return torch.stack([to_tensor(p) for p in self.pictures(scenes)])


def _same(scene: Scene) -> Scene:
    return scene


SHIFTS: dict[str, Shift] = {s.name: s for s in (
    Shift("shapes", _same, Scene.render),
    Shift("plain", _same, draw_plain),
    Shift("colour", _same, lambda s: colour_shifted(s.render(), s.seed)),
    Shift("jpeg30", _same, lambda s: jpeg(s.render())),
    Shift("smaller", smaller, Scene.render),
)}
