"""The shapes world follows its spec (docs/design.md §5): canvas, palette, sizes, layout, captions, grounding."""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from latentlm.data.shapes import (
    CANVAS, GRID, MARGIN, MIN_GAP, PALETTE, SHAPES, SIZES, SPLIT_SEED_SPAN, SPLITS, ShapeObject, boxes_apart,
    caption_of, patch_index_pair, render, sample_scene, scene_for, split_seed, write_split,
)

N_SCENES = 200
WHITE = (255, 255, 255)
COLOUR = "|".join(PALETTE)
SHAPE = "|".join(SHAPES)
RELATION = "left of|right of|above|below"
SINGLE_CAPTION = re.compile(rf"a (small|large) ({COLOUR}) ({SHAPE})")
PAIR_CAPTION = re.compile(rf"a ({COLOUR}) ({SHAPE}) ({RELATION}) a ({COLOUR}) ({SHAPE})")
OBJECT = r"<object><patch_index_(\d{4})><patch_index_(\d{4})></object>"
SINGLE_GROUNDING = re.compile(rf"<grounding><phrase> (a (?:small|large) \w+ \w+)</phrase>{OBJECT}")
PAIR_GROUNDING = re.compile(
    rf"<grounding><phrase> (a \w+ \w+)</phrase>{OBJECT} ({RELATION})<phrase> (a \w+ \w+)</phrase>{OBJECT}"
)


@pytest.fixture(scope="module")
def scenes():
    return [scene_for("train", i) for i in range(N_SCENES)]


@pytest.fixture(scope="module")
def pixels(scenes):
    return [np.asarray(s.render()) for s in scenes]  # each (64, 64, 3) uint8


def colour_mask(image: np.ndarray, colour: str) -> np.ndarray:
    return (image == PALETTE[colour]).all(-1)  # (H, W) bool


def box_mask(box, grow: int = 0) -> np.ndarray:
    """The pixels of a box grown by `grow` on every side, clipped to the canvas: (64, 64) bool."""
    x0, y0, x1, y1 = box
    m = np.zeros((CANVAS, CANVAS), dtype=bool)
    m[max(0, y0 - grow):y1 + grow, max(0, x0 - grow):x1 + grow] = True
    return m


def expected_relation(a: ShapeObject, b: ShapeObject) -> str:
    """The relation rule of the spec, written out again from the boxes."""
    ax, ay = (a.box[0] + a.box[2]) / 2, (a.box[1] + a.box[3]) / 2
    bx, by = (b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2
    if abs(ax - bx) >= abs(ay - by):
        return "left of" if ax < bx else "right of"
    return "above" if ay < by else "below"


def test_canvas_is_64x64_rgb_on_white(scenes):
    for scene in scenes[:20]:
        image = scene.render()
        assert image.size == (64, 64) and image.mode == "RGB"
        assert image.getpixel((0, 0)) == WHITE and image.getpixel((63, 63)) == WHITE  # inside the margin
    assert np.asarray(render([])).min() == 255


def test_every_non_white_pixel_is_an_object_colour(scenes, pixels):
    for scene, image in zip(scenes, pixels):
        colours = {tuple(int(v) for v in c) for c in np.unique(image.reshape(-1, 3), axis=0)}
        assert colours == {WHITE} | {PALETTE[o.colour] for o in scene.objects}, scene


def test_boxes_are_square_sized_and_inside_the_margin(scenes):
    for scene in scenes:
        for o in scene.objects:
            x0, y0, x1, y1 = o.box
            lo, hi = SIZES[o.size]
            assert x1 - x0 == y1 - y0, o
            assert lo <= x1 - x0 <= hi, o
            assert x0 >= MARGIN and y0 >= MARGIN and x1 <= CANVAS - MARGIN and y1 <= CANVAS - MARGIN, o
            assert o.shape in SHAPES and o.colour in PALETTE


def test_two_objects_are_apart_and_differ(scenes):
    pairs = [s for s in scenes if len(s.objects) == 2]
    for scene in pairs:
        a, b = scene.objects
        assert boxes_apart(a.box, b.box)
        # Independently: `a` grown by MIN_GAP - 1 pixels still misses `b` entirely, so at least
        # MIN_GAP empty rows or columns lie between them.
        assert not (box_mask(a.box, MIN_GAP - 1) & box_mask(b.box)).any(), scene
        assert (a.colour, a.shape) != (b.colour, b.shape), scene
    assert boxes_apart((2, 2, 10, 10), (12, 2, 20, 10)) and not boxes_apart((2, 2, 10, 10), (11, 2, 20, 10))


def test_each_shape_fills_its_box_exactly(scenes, pixels):
    for scene, image in zip(scenes, pixels):
        for o in scene.objects:
            # Within the box grown by one pixel (never reaching the other object, 2+ px away).
            mask = colour_mask(image, o.colour) & box_mask(o.box, 1)
            ys, xs = np.nonzero(mask)
            assert (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) == o.box, (scene, o)
            x0, y0, x1, y1 = o.box
            inside = mask[y0:y1, x0:x1]  # (side, side)
            fill = inside.mean()
            if o.shape == "square":
                assert inside.all()
            elif o.shape == "circle":
                assert 0.70 <= fill <= 0.86, (o, fill)  # pi/4 ~ 0.785
            else:  # isosceles, apex up: a full base row, a point at the top
                assert 0.42 <= fill <= 0.62, (o, fill)
                assert inside[-1].all() and inside[0].sum() <= 2, o
                widths = inside.sum(axis=1)
                assert (np.diff(widths) >= 0).all(), o  # widens downwards
                for row in inside:  # symmetric about the vertical axis, to a pixel of rasterisation
                    xs = np.nonzero(row)[0]
                    assert len(xs) and abs(int(xs[0]) - (len(row) - 1 - int(xs[-1]))) <= 1, o


def test_captions_follow_the_grammar_and_the_relation_rule(scenes):
    for scene in scenes:
        objs = scene.objects
        if len(objs) == 1:
            m = SINGLE_CAPTION.fullmatch(scene.caption)
            assert m, scene.caption
            assert m.groups() == (objs[0].size, objs[0].colour, objs[0].shape)
        else:
            m = PAIR_CAPTION.fullmatch(scene.caption)
            assert m, scene.caption
            a, b = objs
            assert m.groups() == (a.colour, a.shape, expected_relation(a, b), b.colour, b.shape)


def test_relation_ties_go_horizontal():
    a = ShapeObject("square", "red", "small", (2, 2, 14, 14))
    b = ShapeObject("circle", "blue", "small", (20, 20, 32, 32))
    assert expected_relation(a, b) == "left of"
    assert caption_of([a, b]) == "a red square left of a blue circle"
    assert caption_of([b, a]) == "a blue circle right of a red square"


def decode(index: str) -> tuple[int, int]:
    """A Kosmos-2 patch index as (column, row) on the 32x32 grid."""
    return int(index) % GRID, int(index) // GRID


def test_grounding_strings_locate_the_boxes(scenes):
    bin_px = CANVAS // GRID  # 2 pixels a bin
    for scene in scenes:
        objs = scene.objects
        if len(objs) == 1:
            m = SINGLE_GROUNDING.fullmatch(scene.grounding)
            assert m, scene.grounding
            assert m[1] == scene.caption
            corners = [(m[2], m[3])]
        else:
            m = PAIR_GROUNDING.fullmatch(scene.grounding)
            assert m, scene.grounding
            assert f"{m[1]} {m[4]} {m[5]}" == scene.caption
            corners = [(m[2], m[3]), (m[6], m[7])]
        for o, (tl, br) in zip(objs, corners):
            x0, y0, x1, y1 = o.box
            assert decode(tl) == (x0 // bin_px, y0 // bin_px), (o, tl)
            assert decode(br) == ((x1 - 1) // bin_px, (y1 - 1) // bin_px), (o, br)


def test_patch_index_pair_at_the_edges():
    assert patch_index_pair((0, 0, 64, 64)) == (0, GRID * GRID - 1)
    assert patch_index_pair((2, 2, 3, 3)) == (33, 33)
    assert patch_index_pair((2, 2, 4, 4)) == (33, 33)
    assert patch_index_pair((2, 2, 5, 5)) == (33, 66)


def test_scenes_are_deterministic():
    for i in (0, 1, 17, 123):
        a, b = scene_for("train", i), scene_for("train", i)
        assert a == b and a.to_record() == b.to_record()
        assert a.render().tobytes() == b.render().tobytes()
        pngs = []
        for scene in (a, b):
            buf = io.BytesIO()
            scene.render().save(buf, format="PNG")
            pngs.append(buf.getvalue())
        assert pngs[0] == pngs[1]
    assert len({scene_for("train", i).objects for i in range(20)}) == 20  # other seeds, other scenes


def test_splits_never_share_a_seed():
    ranges = [(split_seed(s, 0), split_seed(s, SPLIT_SEED_SPAN - 1)) for s in SPLITS]
    for i, (lo, hi) in enumerate(ranges):
        assert hi - lo == SPLIT_SEED_SPAN - 1
        for lo2, hi2 in ranges[i + 1:]:
            assert hi < lo2 or hi2 < lo
    seeds = [{split_seed(s, i) for i in range(1000)} for s in SPLITS]
    assert not (seeds[0] & seeds[1]) and not (seeds[0] & seeds[2]) and not (seeds[1] & seeds[2])
    assert scene_for("val", 5) == sample_scene(split_seed("val", 5))
    with pytest.raises(ValueError, match="unknown split"):
        split_seed("dev", 0)
    with pytest.raises(ValueError, match="out of range"):
        split_seed("train", SPLIT_SEED_SPAN)
    with pytest.raises(ValueError, match="out of range"):
        split_seed("train", -1)
    with pytest.raises(ValueError):
        sample_scene(0, n_objects=3)


def test_write_split(tmp_path):
    manifest = write_split(tmp_path / "val", n=5, split="val", start=3)
    assert manifest == tmp_path / "val" / "manifest.jsonl"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(records) == 5
    assert sorted(p.name for p in (tmp_path / "val").glob("*.png")) == sorted(r["file"] for r in records)
    assert not list((tmp_path / "val").glob("*.tmp"))
    for i, record in zip(range(3, 8), records):
        assert {"file", "caption", "objects", "grounding"} <= record.keys()
        scene = scene_for("val", i)
        assert record["caption"] == scene.caption and record["grounding"] == scene.grounding
        assert [tuple(o["box"]) for o in record["objects"]] == [o.box for o in scene.objects]
        assert [o["colour"] for o in record["objects"]] == [o.colour for o in scene.objects]
        with Image.open(tmp_path / "val" / record["file"]) as image:
            assert image.size == (64, 64) and image.mode == "RGB"
            assert image.tobytes() == scene.render().tobytes()


def test_both_scene_kinds_occur(scenes):
    counts = {n: sum(len(s.objects) == n for s in scenes) for n in (1, 2)}
    assert counts[1] + counts[2] == N_SCENES
    assert counts[1] >= N_SCENES // 4 and counts[2] >= N_SCENES // 4, counts
    sizes = {o.size for s in scenes for o in s.objects}
    shapes = {o.shape for s in scenes for o in s.objects}
    colours = {o.colour for s in scenes for o in s.objects}
    assert sizes == set(SIZES) and shapes == set(SHAPES) and colours == set(PALETTE)
