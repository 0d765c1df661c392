"""A second renderer of shapes-world scenes, written from the spec alone (docs/design.md §5).

It shares no drawing code with `latentlm.data.shapes`: plain PIL calls on a 4x canvas, downsampled
with a Lanczos filter, so edges are anti-aliased where the training renderer's are hard. Reading
pictures drawn this way checks that the model learnt the shapes, not one renderer's pixels.
"""
from __future__ import annotations

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from latentlm.data.shapes import Scene
from latentlm.images import to_tensor

SCALE = 4
SPEC_COLOURS = {  # RGB, from the spec
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (240, 200, 30), "purple": (140, 60, 180), "orange": (245, 130, 30),
}


def draw_plain(scene: Scene, size: int = 64) -> Image.Image:
    """The scene on a white `size` x `size` canvas, each shape filling its square box."""
    big = Image.new("RGB", (size * SCALE, size * SCALE), "white")
    pen = ImageDraw.Draw(big)
    for obj in scene.objects:
        left, top, right, bottom = (v * SCALE for v in obj.box)  # right and bottom exclusive
        fill = SPEC_COLOURS[obj.colour]
        if obj.shape == "square":
            pen.rectangle((left, top, right - 1, bottom - 1), fill=fill)
        elif obj.shape == "circle":
            pen.ellipse((left, top, right - 1, bottom - 1), fill=fill)
        else:  # isosceles triangle, apex up, base along the bottom of the box
            pen.polygon(((left + right) / 2, top, right, bottom, left, bottom), fill=fill)
    return big.resize((size, size), Image.LANCZOS)


def render_plain(scenes: list[Scene]) -> Tensor:
    """Scenes drawn by `draw_plain`, as a batch in [-1, 1]: [B, 3, 64, 64]."""
    return torch.stack([to_tensor(draw_plain(scene)) for scene in scenes])
