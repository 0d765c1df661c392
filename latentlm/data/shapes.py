"""The shapes world: the project's procedural data set (docs/design.md §5).

A scene is one or two flat-coloured shapes on a 64x64 white canvas, with a caption and a
Kosmos-2 grounding string. Everything is a pure function of an integer seed, so the data set is
reproducible byte for byte and the splits are told apart by their seed ranges alone.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw

from latentlm.grounding import GRID, box_to_patch_indices, object_string, phrase_string

CANVAS = 64
MARGIN = 2
MIN_GAP = 2
BACKGROUND = (255, 255, 255)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, tuple[int, int]] = {"small": (12, 16), "large": (22, 28)}  # box side, inclusive

# Splits never share a seed: each owns a disjoint range of 10**9 seeds.
SPLITS = ("train", "val", "test")
SPLIT_SEED_SPAN = 10**9


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels; x1 and y1 exclusive

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class Scene:
    seed: int
    objects: tuple[ShapeObject, ...]

    @property
    def caption(self) -> str:
        return caption_of(self.objects)

    @property
    def grounding(self) -> str:
        return grounding_of(self.objects)

    def render(self) -> Image.Image:
        return render(self.objects)

    def to_record(self) -> dict:
        return {
            "seed": self.seed,
            "caption": self.caption,
            "objects": [asdict(o) | {"box": list(o.box)} for o in self.objects],
            "grounding": self.grounding,
        }


def split_seed(split: str, index: int) -> int:
    """The seed of scene `index` of `split`; the ranges of the splits are disjoint."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if not 0 <= index < SPLIT_SEED_SPAN:
        raise ValueError(f"scene index {index} is out of range [0, {SPLIT_SEED_SPAN})")
    return SPLITS.index(split) * SPLIT_SEED_SPAN + index


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where `a` is relative to `b`: horizontal wins when |dx| >= |dy|."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = ax - bx, ay - by
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def phrase_of(obj: ShapeObject, with_size: bool) -> str:
    size = f"{obj.size} " if with_size else ""
    return f"a {size}{obj.colour} {obj.shape}"


def caption_of(objects: tuple[ShapeObject, ...] | list[ShapeObject]) -> str:
    if len(objects) == 1:
        return phrase_of(objects[0], with_size=True)
    a, b = objects
    return f"{phrase_of(a, False)} {relation(a, b)} {phrase_of(b, False)}"


def _normalised(box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    return tuple(v / CANVAS for v in box)  # pixels (x1, y1 exclusive) -> [0, 1]


def patch_index_pair(box: tuple[int, int, int, int]) -> tuple[int, int]:
    """Kosmos-2 bins of a pixel box on the 32x32 grid: (top-left, bottom-right) as row*32+col."""
    return box_to_patch_indices(_normalised(box))


def object_tokens(box: tuple[int, int, int, int]) -> str:
    return object_string([_normalised(box)])


def grounding_of(objects: tuple[ShapeObject, ...] | list[ShapeObject]) -> str:
    """Kosmos-2 text: `<grounding><phrase> a red circle</phrase><object>...</object> ...`."""
    if len(objects) == 1:
        o = objects[0]
        return f"<grounding>{phrase_string(phrase_of(o, True), [_normalised(o.box)])}"
    a, b = objects
    return (
        f"<grounding>{phrase_string(phrase_of(a, False), [_normalised(a.box)])} {relation(a, b)}"
        f"{phrase_string(phrase_of(b, False), [_normalised(b.box)])}"
    )


def draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject) -> None:
    """Draw one shape filling its square box exactly, without anti-aliasing."""
    x0, y0, x1, y1 = obj.box
    colour = PALETTE[obj.colour]
    if obj.shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
    elif obj.shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
    elif obj.shape == "triangle":
        apex = ((x0 + x1 - 1) / 2, y0)
        draw.polygon([apex, (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=colour)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}: use one of {', '.join(SHAPES)}")


def render(objects: tuple[ShapeObject, ...] | list[ShapeObject]) -> Image.Image:
    image = Image.new("RGB", (CANVAS, CANVAS), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_object(draw, obj)
    return image


def shrink(scene: Scene, factor: float) -> Scene:
    """The scene with each object's square box scaled by `factor` about its centre (whole pixels). Sizes
    keep their words: a shrunk large object is still "large", as in a picture taken from further away.
    (A factor above 1 enlarges; `rescale` checks that the result still fits.)"""
    objects = []
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        side = max(1, round((x1 - x0) * factor))
        left, top = round((x0 + x1 - side) / 2), round((y0 + y1 - side) / 2)
        objects.append(replace(obj, box=(left, top, left + side, top + side)))
    return Scene(scene.seed, tuple(objects))


def rescale(scene: Scene, factor: float) -> Scene | None:
    """The scene seen from further away (factor < 1) or nearer (> 1), sizes keeping their words; None where
    an enlarged object would leave the canvas's margin or come within MIN_GAP of the other one."""
    scaled = shrink(scene, factor)
    inside = all(MARGIN <= v <= CANVAS - MARGIN for o in scaled.objects for v in o.box)
    apart = len(scaled.objects) < 2 or boxes_apart(scaled.objects[0].box, scaled.objects[1].box)
    return scaled if factor <= 1 or (inside and apart) else None


def boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = MIN_GAP) -> bool:
    """True when the boxes are separated by at least `gap` pixels along some axis."""
    gap_x = max(b[0] - a[2], a[0] - b[2])
    gap_y = max(b[1] - a[3], a[1] - b[3])
    return max(gap_x, gap_y) >= gap


def _random_object(rng: random.Random, shape: str, colour: str, size: str) -> ShapeObject:
    lo, hi = SIZES[size]
    side = rng.randint(lo, hi)
    x0 = rng.randint(MARGIN, CANVAS - MARGIN - side)
    y0 = rng.randint(MARGIN, CANVAS - MARGIN - side)
    return ShapeObject(shape, colour, size, (x0, y0, x0 + side, y0 + side))


def sample_scene(seed: int, n_objects: int | None = None) -> Scene:
    """The scene of `seed`: one or two objects, placed by rejection sampling."""
    rng = random.Random(seed)
    n = n_objects if n_objects is not None else rng.choice((1, 2))
    if n not in (1, 2):
        raise ValueError(f"a scene holds one or two objects, not {n}")
    while True:
        kinds = [(rng.choice(SHAPES), rng.choice(sorted(PALETTE)), rng.choice(sorted(SIZES))) for _ in range(n)]
        if n == 2 and kinds[0][:2] == kinds[1][:2]:
            continue  # two objects differ in colour or shape
        objects = [_random_object(rng, *k) for k in kinds]
        if n == 1 or boxes_apart(objects[0].box, objects[1].box):
            return Scene(seed, tuple(objects))


def scene_rng(seed: int, purpose: str) -> random.Random:
    """A random stream for `purpose` ("question", "ground", ...) about the scene of `seed`, independent of
    the stream that drew the scene. `random.Random(seed)` would replay that stream: its first choice is the
    object count, so a question drawn from it asked about the second object of every two-object scene."""
    return random.Random(f"{purpose}:{seed}")


def scene_for(split: str, index: int) -> Scene:
    return sample_scene(split_seed(split, index))


def write_split(out_dir: str | os.PathLike, n: int, split: str = "train", start: int = 0) -> Path:
    """Write `n` PNGs and `manifest.jsonl` (one record a line) into `out_dir`; returns the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    tmp = manifest.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        for i in range(start, start + n):
            scene = scene_for(split, i)
            name = f"{split}_{i:07d}.png"
            scene.render().save(out / name)
            f.write(json.dumps({"file": name, "split": split, "index": i} | scene.to_record()) + "\n")
    os.replace(tmp, manifest)
    return manifest
