"""The scene parser reads shapes-world pictures back, so that prompt adherence can be scored."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from PIL import Image, ImageFilter

from latentlm.evaluation.scene_parser import ParsedObject, Prompt, Request, adheres, check, parse_prompt, parse_scene
from latentlm.data.shapes import PALETTE, SHAPES, ShapeObject, caption_of, render, scene_for

N_SCENES = 240
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
ACROSS = {"left of": "above", "right of": "below", "above": "right of", "below": "left of"}


@pytest.fixture(scope="module")
def scenes():
    return [scene_for("test", i) for i in range(N_SCENES)]


@pytest.fixture(scope="module")
def images(scenes):
    return [s.render() for s in scenes]


def blurred(image: Image.Image) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(0.6))


def noisy(image: Image.Image, seed: int, std: float = 8.0) -> Image.Image:
    """The picture with gaussian pixel noise of `std` on every channel."""
    x = np.asarray(image, dtype=np.float32)  # (64, 64, 3)
    x = x + np.random.default_rng(seed).normal(0.0, std, x.shape)
    return Image.fromarray(np.clip(x, 0, 255).round().astype(np.uint8))


def adherence(scenes, images) -> tuple[float, list[str]]:
    verdicts = [check(image, s.caption) for s, image in zip(scenes, images)]
    failures = [f"{s.caption}: {v.reason}" for s, v in zip(scenes, verdicts) if not v.ok]
    return 1 - len(failures) / len(scenes), failures


def other(values, value):
    """The next value after `value` in `values`, cyclically: always a different one."""
    values = list(values)
    return values[(values.index(value) + 1) % len(values)]


# ---- ground truth -----------------------------------------------------------------------------

def test_ground_truth_scenes_all_adhere(scenes, images):
    rate, failures = adherence(scenes, images)
    assert rate == 1.0, failures  # measured: 240/240


def test_parse_scene_recovers_the_objects_exactly(scenes, images):
    for scene, image in zip(scenes, images):
        found = parse_scene(image)
        got = sorted((o.colour, o.shape, o.size, o.box) for o in found)
        assert got == sorted((o.colour, o.shape, o.size, o.box) for o in scene.objects), scene
        assert all(o.area >= 25 for o in found)


def test_blurred_scenes_still_adhere(scenes, images):
    rate, failures = adherence(scenes, [blurred(im) for im in images])
    assert rate >= 0.99, failures  # measured: 240/240 at GaussianBlur(0.6)


def test_noisy_scenes_still_adhere(scenes, images):
    rate, failures = adherence(scenes, [noisy(im, i) for i, im in enumerate(images)])
    assert rate >= 0.99, failures  # measured: 240/240 at std 8


def test_equivalent_prompts_adhere(scenes, images):
    for scene, image in list(zip(scenes, images))[:60]:
        objs = scene.objects
        if len(objs) == 1:
            o = objs[0]
            assert adheres(image, f"a {o.colour} {o.shape}")  # size left open
            assert adheres(image, f"A {o.size.upper()} {o.colour}  {o.shape}.")
        else:
            a, b = objs
            flipped = caption_of([b, a])  # the same picture, described from the other object
            assert adheres(image, flipped), (scene.caption, flipped)


# ---- wrong prompts ----------------------------------------------------------------------------

def wrong_prompts(scene) -> dict[str, str]:
    """Captions of the scene with one thing changed, each of which the picture must not match."""
    objs = list(scene.objects)
    first = objs[0]
    wrong = {
        "colour": caption_of([dataclasses.replace(first, colour=other(PALETTE, first.colour))] + objs[1:]),
        "shape": caption_of([dataclasses.replace(first, shape=other(SHAPES, first.shape))] + objs[1:]),
    }
    if len(objs) == 1:
        wrong["size"] = caption_of([dataclasses.replace(first, size=other(("small", "large"), first.size))])
        wrong["extra object"] = f"a {first.colour} {first.shape} above a {first.colour} {other(SHAPES, first.shape)}"
    else:
        second = objs[1]
        rel = re.search(r" (left of|right of|above|below) ", scene.caption)[1]
        wrong["opposite relation"] = scene.caption.replace(f" {rel} ", f" {OPPOSITE[rel]} ")
        wrong["crossed relation"] = scene.caption.replace(f" {rel} ", f" {ACROSS[rel]} ")
        wrong["missing object"] = f"a {first.colour} {first.shape}"
        recoloured = dataclasses.replace(second, colour=other(PALETTE, second.colour))
        wrong["second colour"] = caption_of([first, recoloured])
    return wrong


def test_wrong_prompts_are_rejected(scenes, images):
    kinds = set()
    for scene, image in list(zip(scenes, images))[:80]:
        for kind, prompt in wrong_prompts(scene).items():
            assert prompt != scene.caption
            verdict = check(image, prompt)
            assert not verdict.ok, (kind, scene.caption, prompt)
            assert verdict.reason and "found" in verdict.reason
            kinds.add(kind)
    assert kinds == {"colour", "shape", "size", "extra object", "opposite relation", "crossed relation",
                     "missing object", "second colour"}


def test_a_blank_picture_adheres_to_nothing(scenes):
    blank = Image.new("RGB", (64, 64), (255, 255, 255))
    assert parse_scene(blank) == []
    for scene in scenes[:20]:
        verdict = check(blank, scene.caption)
        assert not verdict.ok and "found nothing" in verdict.reason


# ---- robustness details -----------------------------------------------------------------------

def test_specks_are_noise_not_objects():
    image = render([ShapeObject("circle", "red", "large", (4, 4, 28, 28))])
    pixels = np.array(image)  # (64, 64, 3)
    for (x, y), colour in zip([(50, 50), (58, 8), (8, 56), (40, 30)], PALETTE.values()):
        pixels[y:y + 3, x:x + 3] = colour  # 9-pixel specks, far from the circle
    assert adheres(Image.fromarray(pixels), "a large red circle")


def test_a_tinted_rim_is_not_an_object():
    """A VAE tints the rim of a yellow square orange: still one yellow square."""
    image = render([ShapeObject("square", "yellow", "small", (20, 20, 36, 36))])
    pixels = np.array(image)
    pixels[20, 20:36] = pixels[20:36, 35] = pixels[20:36, 34] = PALETTE["orange"]  # 46 px of rim
    found = parse_scene(Image.fromarray(pixels))
    assert [(o.colour, o.shape, o.size) for o in found] == [("yellow", "square", "small")]
    assert adheres(Image.fromarray(pixels), "a yellow square")


def test_touching_objects_stay_two():
    image = render([ShapeObject("square", "blue", "large", (10, 10, 34, 34)),
                    ShapeObject("triangle", "red", "small", (34, 20, 46, 32))])
    assert adheres(image, "a blue square left of a red triangle")


def test_soft_edges_keep_the_outline():
    """A half-way mix of colour and white is where a sharp edge was: boxes survive heavy blur exactly."""
    for shape in ("square", "circle"):
        for colour in ("yellow", "green"):  # a light and a dark colour
            o = ShapeObject(shape, colour, "large", (10, 10, 34, 34))
            [found] = parse_scene(render([o]).filter(ImageFilter.GaussianBlur(1.5)))
            assert (found.colour, found.shape, found.size, found.box) == (colour, shape, "large", o.box), found


def test_relation_uses_the_shapes_rule_with_ties_horizontal():
    # Centres (8, 8) and (26, 26): |dx| == |dy|, so the relation is horizontal.
    image = render([ShapeObject("square", "red", "small", (2, 2, 14, 14)),
                    ShapeObject("circle", "blue", "small", (20, 20, 32, 32))])
    assert adheres(image, "a red square left of a blue circle")
    assert adheres(image, "a blue circle right of a red square")
    assert not adheres(image, "a red square above a blue circle")


def test_parsed_object_centre():
    o = ParsedObject("red", "circle", "small", (10, 20, 24, 34), 150)
    assert o.centre == (17.0, 27.0)
    assert o.as_shape_object().centre == o.centre


# ---- prompts ----------------------------------------------------------------------------------

def test_parse_prompt_reads_the_caption_grammar():
    assert parse_prompt("a large red circle") == Prompt((Request("red", "circle", "large"),))
    assert parse_prompt("a blue square") == Prompt((Request("blue", "square"),))
    assert parse_prompt("  An  Orange triangle. ") == Prompt((Request("orange", "triangle"),))
    assert parse_prompt("a red circle left of a blue square") == Prompt(
        (Request("red", "circle"), Request("blue", "square")), "left of")
    assert parse_prompt("a small green triangle below a large purple circle") == Prompt(
        (Request("green", "triangle", "small"), Request("purple", "circle", "large")), "below")
    for scene in (scene_for("test", i) for i in range(50)):
        parsed = parse_prompt(scene.caption)
        assert [(r.colour, r.shape) for r in parsed.objects] == [(o.colour, o.shape) for o in scene.objects]


@pytest.mark.parametrize("text", [
    "", "   ", "hello world", "a red", "a pink circle", "a red hexagon", "red circle", "the red circle",
    "a huge red circle", "a red circle near a blue square", "a red circle left of", "two red circles",
    "a red circle left of a blue square above a green triangle", "draw a red circle",
])
def test_parse_prompt_rejects_garbage(text):
    with pytest.raises(ValueError, match="not in the shapes grammar"):
        parse_prompt(text)
    with pytest.raises(ValueError):
        adheres(Image.new("RGB", (64, 64), "white"), text)
