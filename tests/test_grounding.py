"""The Kosmos-2 grounding format: box <-> patch indices, the strings, and the parser, checked against transformers.

Round trips, exactly (c = 1/32 is a cell side):
  * indices -> box -> indices is the identity for every valid pair (lower-right cell not left of or above
    the upper-left one);
  * box -> indices -> box is the identity for boxes whose corners are multiples of c, x0 < x1, y0 < y1,
    and that span a single column or a single row (the outer-edge rule); one spanning 2+ cells on both
    axes decodes to the cell centres, i.e. the box shrunk by c/2 on every side;
  * for any box, box -> indices -> box -> indices gives the same indices.

The parser agrees with transformers' `clean_text_and_extract_entities_with_bboxes` on text whose only `<`
starts a known tag, up to the differences documented in `latentlm.grounding` (applied by `_as_documented`):
phraseless objects are one Entity with phrase "" (transformers: one fake-named entity per box), a blank
phrase counts as no phrase, inverted pairs are dropped, and spans are clamped into the text. It differs on
purpose where the text holds other `<...>`: transformers deletes it, we keep it.
"""
from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentlm.data.shapes import CANVAS, phrase_of, scene_for
from latentlm.grounding import (
    DELIMITER, GRID, Entity, Grounded, box_to_patch_indices, object_string, parse_grounded, patch_indices_to_box,
    phrase_string, scale_box,
)

SETTINGS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
C = 1 / GRID  # cell side

SNOWMAN = (
    "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object> "
    "warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>."
)
SNOWMAN_PARSED = (  # transformers' documented output for SNOWMAN
    "An image of a snowman warming himself by a fire.",
    [
        ("a snowman", (12, 21), [(0.390625, 0.046875, 0.984375, 0.828125)]),
        ("a fire", (41, 47), [(0.171875, 0.015625, 0.484375, 0.890625)]),
    ],
)
SNOWMAN_BOX = SNOWMAN_PARSED[1][0][2][0]


@pytest.fixture(scope="module")
def kosmos2():
    """transformers' Kosmos-2 processing module (pure Python: no weights, no network)."""
    return pytest.importorskip("transformers.models.kosmos2.processing_kosmos2")


# --- strategies --------------------------------------------------------------------------------------

unit = st.floats(0, 1, allow_nan=False)
grid_box = st.tuples(unit, unit, unit, unit).map(lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]),
                                                            max(b[1], b[3])))
boxes = st.lists(grid_box, min_size=1, max_size=3)
# Text whose only `<` start known tags: where the two parsers are meant to agree.
plain_text = st.text(st.characters(exclude_characters="<", exclude_categories=("Cs",)), max_size=8)
phrases = plain_text.filter(str.strip)
STRAY = ["<grounding>", "<phrase>", "</phrase>", "<object>", "</object>", DELIMITER, "<patch_index_0044>",
         "<patch_index_0863>", " ", "\n", "<phrase> </phrase>", "<object><patch_index_0863><patch_index_0044></object>"]
kosmos_text = st.lists(
    st.one_of(
        plain_text,
        st.builds(phrase_string, phrases, boxes),
        boxes.map(object_string),
        phrases.map(lambda p: f"<phrase> {p}</phrase>"),  # a phrase with no object
        st.sampled_from(STRAY),
    ),
    max_size=10,
).map("".join)
FRAGMENTS = STRAY + ["<", ">", "<phrase", "</object", "<patch_index_", "<patch_index_1023>", "<patch_index_1024>",
                     "<patch_index_44>", "<patch_index_9999>", "</delimiter_of_multi_objects/", "<image>", "</s>"]
garbage = st.one_of(st.text(), st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)),
                                        max_size=16).map("".join))


@st.composite
def valid_pairs(draw, grid=GRID):
    """A (ul, lr) pair whose lower-right cell is not left of or above the upper-left one."""
    x0, x1 = sorted(draw(st.integers(0, grid - 1)) for _ in range(2))
    y0, y1 = sorted(draw(st.integers(0, grid - 1)) for _ in range(2))
    return y0 * grid + x0, y1 * grid + x1


# --- helpers -----------------------------------------------------------------------------------------

def _fake_name(box) -> str:
    ul, lr = box_to_patch_indices(box)
    return f"<patch_index_{ul}><patch_index_{lr}>"


def _transformers_view(g: Grounded):
    """Ours in transformers' shape: a phraseless Entity becomes one fake-named entity per box."""
    out = []
    for e in g.entities:
        out += [(e.phrase, e.span, list(e.boxes))] if e.phrase else [(_fake_name(b), e.span, [b]) for b in e.boxes]
    return g.text, out


def _as_documented(parsed):
    """transformers' output with our documented differences applied (see latentlm.grounding)."""
    text, entities = parsed
    clamp = lambda i: min(max(i, 0), len(text))  # noqa: E731
    out = []
    for name, (start, end), bxs in entities:
        bxs = [b for b in bxs if b[2] > b[0] and b[3] > b[1]]  # inverted pairs are dropped
        if not name:  # a blank phrase is no phrase
            out += [(_fake_name(b), (clamp(start), clamp(start)), [b]) for b in bxs]
        elif bxs:
            out.append((name, (clamp(start), clamp(end)), bxs))
    return text, out


def _check_invariants(g: Grounded) -> None:
    assert g.text == g.text.strip()
    for e in g.entities:
        start, end = e.span
        assert 0 <= start <= end <= len(g.text), e
        assert g.text[start:end] == e.phrase, e
        assert e.boxes
        for x0, y0, x1, y1 in e.boxes:
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, e


# --- boxes <-> patch indices -------------------------------------------------------------------------

def test_box_examples():
    assert box_to_patch_indices((0, 0, 1, 1)) == (0, GRID * GRID - 1)
    assert box_to_patch_indices(SNOWMAN_BOX) == (44, 863)
    assert box_to_patch_indices((0.5, 0.5, 0.5, 0.5)) == (16 * 33, 16 * 33)  # a point: its cell
    assert box_to_patch_indices((1, 1, 1, 1)) == (1023, 1023)  # the far edge is clamped to the grid
    assert box_to_patch_indices((0, 0, 0, 0)) == (0, 0)
    assert patch_indices_to_box(44, 863) == SNOWMAN_BOX  # cell centres
    assert patch_indices_to_box(33, 33) == (C, C, 2 * C, 2 * C)  # one cell: its edges
    assert patch_indices_to_box(33, 40) == (C, C, 9 * C, 2 * C)  # one row: outer edges
    assert patch_indices_to_box(0, 1023) == (C / 2, C / 2, 1 - C / 2, 1 - C / 2)


def test_exhaustive_on_a_small_grid():
    """Every valid pair of an 8x8 grid round-trips, and the rule matches the stated one."""
    n, c = 8, 1 / 8
    for (ux, lx), (uy, ly) in itertools.product(itertools.combinations_with_replacement(range(n), 2), repeat=2):
        ul, lr = uy * n + ux, ly * n + lx
        box = patch_indices_to_box(ul, lr, grid=n)
        assert box_to_patch_indices(box, grid=n) == (ul, lr)
        edges = ux == lx or uy == ly
        half = 0 if edges else c / 2
        assert box == (ux * c + half, uy * c + half, (lx + 1) * c - half, (ly + 1) * c - half)


@SETTINGS
@given(valid_pairs())
def test_indices_box_indices_is_exact(pair):
    assert box_to_patch_indices(patch_indices_to_box(*pair)) == pair


@SETTINGS
@given(st.integers(0, GRID - 1), st.integers(0, GRID - 1), st.integers(1, GRID), st.booleans())
def test_one_row_or_column_boxes_round_trip(x, y, length, vertical):
    """A cell-aligned box one column (or one row) wide comes back exactly: the outer-edge rule."""
    box = (x, y, x + 1, min(GRID, y + length)) if vertical else (x, y, min(GRID, x + length), y + 1)
    box = tuple(v * C for v in box)
    assert patch_indices_to_box(*box_to_patch_indices(box)) == box


@SETTINGS
@given(st.integers(0, GRID - 2), st.integers(0, GRID - 2), st.integers(2, GRID), st.integers(2, GRID))
def test_wider_boxes_come_back_as_cell_centres(x0, y0, w, h):
    """A cell-aligned box 2+ cells wide and tall comes back shrunk by half a cell on every side."""
    x1, y1 = min(GRID, x0 + w), min(GRID, y0 + h)
    box = (x0 * C, y0 * C, x1 * C, y1 * C)
    assert patch_indices_to_box(*box_to_patch_indices(box)) == (box[0] + C / 2, box[1] + C / 2, box[2] - C / 2,
                                                                box[3] - C / 2)


@SETTINGS
@given(grid_box)
def test_any_box_encodes_to_its_cells(box):
    ul, lr = box_to_patch_indices(box)
    assert box_to_patch_indices(patch_indices_to_box(ul, lr)) == (ul, lr)
    x0, y0, x1, y1 = box
    (uy, ux), (ly, lx) = divmod(ul, GRID), divmod(lr, GRID)
    assert ux * C <= x0 <= (ux + 1) * C and uy * C <= y0 <= (uy + 1) * C  # (x0, y0) in the ul cell
    if x1 > x0 and y1 > y0:
        assert lx * C < x1 <= (lx + 1) * C and ly * C < y1 <= (ly + 1) * C  # open far edge in the lr cell


@SETTINGS
@given(grid_box.filter(lambda b: b[2] - b[0] > 1e-9 and b[3] - b[1] > 1e-9), valid_pairs())
def test_conversions_match_transformers(kosmos2, box, pair):
    assert box_to_patch_indices(box) == kosmos2.coordinate_to_patch_index(box, GRID)
    assert patch_indices_to_box(*pair) == kosmos2.patch_index_to_coordinate(*pair, GRID)


def test_sliver_boxes_are_clamped(kosmos2):
    """Below ~1e-16 of height, rounding puts transformers' lower-right cell above the upper-left; ours clamps."""
    sliver = (0.0, 0.0, 1.0, 1e-59)
    assert kosmos2.coordinate_to_patch_index(sliver, GRID) == (0, -1)
    assert box_to_patch_indices(sliver) == (0, GRID - 1)


@pytest.mark.parametrize("pair", [(-1, 5), (0, 1024), (1.0, 5), ("3", 5), (40, 33), (33, 1)])
def test_bad_indices_raise(pair):
    with pytest.raises(ValueError, match="patch index|lower-right"):
        patch_indices_to_box(*pair)


@pytest.mark.parametrize("box", [(0, 0, 1.5, 1), (-0.1, 0, 1, 1), (0.5, 0, 0.4, 1), (0, 0.5, 1, 0.4),
                                 (0, 0, math.nan, 1), (0, 0, 1)])
def test_bad_boxes_raise(box):
    with pytest.raises(ValueError, match="normalised|inverted|a box is"):
        box_to_patch_indices(box)
    with pytest.raises(ValueError):
        scale_box(box, 64, 64)


def test_scale_box():
    assert scale_box((0.25, 0.5, 0.75, 1.0), 64, 32) == (16, 16, 48, 32)
    assert scale_box(SNOWMAN_BOX, 224, 224) == (87.5, 10.5, 220.5, 185.5)


# --- strings -----------------------------------------------------------------------------------------

def test_strings():
    fire = SNOWMAN_PARSED[1][1][2][0]
    assert object_string([SNOWMAN_BOX]) == "<object><patch_index_0044><patch_index_0863></object>"
    assert phrase_string("a snowman", [SNOWMAN_BOX]) in SNOWMAN
    assert phrase_string("  a fire ", [fire]) in SNOWMAN  # stripped, then one leading space
    assert object_string([SNOWMAN_BOX, fire]) == (
        "<object><patch_index_0044><patch_index_0863></delimiter_of_multi_objects/>"
        "<patch_index_0005><patch_index_0911></object>"
    )
    with pytest.raises(ValueError, match="at least one box"):
        object_string([])
    for bad in ("", "  ", "a <phrase> b", "x<patch_index_0001>"):
        with pytest.raises(ValueError, match="phrase"):
            phrase_string(bad, [SNOWMAN_BOX])


def test_shapes_grounding_parses_back():
    for i in range(50):
        scene = scene_for("train", i)
        g = parse_grounded(scene.grounding)
        single = len(scene.objects) == 1
        assert g.text == scene.caption
        assert [e.phrase for e in g.entities] == [phrase_of(o, single) for o in scene.objects]
        for e, o in zip(g.entities, scene.objects):
            cells = box_to_patch_indices(tuple(v / CANVAS for v in o.box))
            assert [box_to_patch_indices(b) for b in e.boxes] == [cells]


# --- the parser --------------------------------------------------------------------------------------

def test_snowman_gives_the_documented_tuple(kosmos2):
    g = parse_grounded(SNOWMAN)
    assert _transformers_view(g) == SNOWMAN_PARSED
    assert kosmos2.clean_text_and_extract_entities_with_bboxes(SNOWMAN) == SNOWMAN_PARSED
    assert g == Grounded(SNOWMAN_PARSED[0], [Entity(*e) for e in SNOWMAN_PARSED[1]])


def test_several_boxes_and_a_phraseless_object(kosmos2):
    fire = SNOWMAN_PARSED[1][1][2][0]
    both = phrase_string("two things", [SNOWMAN_BOX, fire])
    text = f"<grounding> look:{both} and {object_string([fire, SNOWMAN_BOX])}!"
    g = parse_grounded(text)
    assert g == Grounded("look: two things and !", [
        Entity("two things", (6, 16), [SNOWMAN_BOX, fire]),
        Entity("", (21, 21), [fire, SNOWMAN_BOX]),  # transformers: one entity per box
    ])
    assert _transformers_view(g) == kosmos2.clean_text_and_extract_entities_with_bboxes(text)
    assert _transformers_view(g)[1][1][0] == "<patch_index_5><patch_index_911>"


@SETTINGS
@given(kosmos_text)
def test_parser_agrees_with_transformers(kosmos2, text):
    g = parse_grounded(text)
    _check_invariants(g)
    assert _transformers_view(g) == _as_documented(kosmos2.clean_text_and_extract_entities_with_bboxes(text))


@SETTINGS
@given(plain_text, st.lists(st.tuples(phrases, boxes, plain_text), max_size=4))
def test_built_strings_parse_back(prefix, parts):
    text = "<grounding>" + prefix + "".join(phrase_string(p, b) + tail for p, b, tail in parts)
    g = parse_grounded(text)
    _check_invariants(g)
    assert [e.phrase for e in g.entities] == [p.strip() for p, _, _ in parts]
    assert [e.boxes for e in g.entities] == [[patch_indices_to_box(*box_to_patch_indices(b)) for b in bs]
                                             for _, bs, _ in parts]


def test_literal_angle_brackets_are_text(kosmos2):
    obj = object_string([SNOWMAN_BOX])
    text = f"I <3 cats<phrase> a cat</phrase>{obj}"
    assert parse_grounded(text) == Grounded("I <3 cats a cat", [Entity("a cat", (10, 15), [SNOWMAN_BOX])])
    # Deliberately different: transformers deletes `<3 cats<phrase>` as if it were a tag.
    assert kosmos2.clean_text_and_extract_entities_with_bboxes(text) == ("I  a cat", [("a cat", (3, 8), [SNOWMAN_BOX])])
    g = parse_grounded(f"<image> a <b> c<phrase> x <y> z</phrase>{obj} <patch_index_44> <patch_index_1024>")
    assert g == Grounded("<image> a <b> c x <y> z <patch_index_44> <patch_index_1024>",
                         [Entity("x <y> z", (16, 23), [SNOWMAN_BOX])])


@pytest.mark.parametrize("text, expected", [
    ("<grounding> a<phrase> red circle</phrase><object><patch_index_0044>", Grounded("a red circle", [])),
    ("<phrase> a cat<object><patch_index_0044><patch_index_0863></object>",
     Grounded("a cat", [Entity("", (5, 5), [SNOWMAN_BOX])])),
    ("<object><patch_index_0044><patch_index_0863>", Grounded("", [])),
    ("<phrase> x</phrase> <object><patch_index_0044><patch_index_0863></object>",  # not adjacent: no phrase
     Grounded("x", [Entity("", (1, 1), [SNOWMAN_BOX])])),
    ("<phrase> x</phrase><object><patch_index_0863><patch_index_0044></object>", Grounded("x", [])),  # inverted
    ("<phrase> x</phrase><object><patch_index_0863><patch_index_0044></delimiter_of_multi_objects/>"
     "<patch_index_0044><patch_index_0863></object>", Grounded("x", [Entity("x", (0, 1), [SNOWMAN_BOX])])),
    ("<phrase> x</phrase><object><patch_index_0044><patch_index_0863></delimiter_of_multi_objects/></object>",
     Grounded("x", [])),
    ("<phrase>   </phrase><object><patch_index_0044><patch_index_0863></object> y",
     Grounded("y", [Entity("", (0, 0), [SNOWMAN_BOX])])),  # blank phrase, span clamped into the text
    ("", Grounded("", [])),
])
def test_malformed_input(kosmos2, text, expected):
    g = parse_grounded(text)
    assert g == expected
    assert _transformers_view(g) == _as_documented(kosmos2.clean_text_and_extract_entities_with_bboxes(text))


@SETTINGS
@given(garbage)
def test_never_raises_on_garbage(text):
    _check_invariants(parse_grounded(text))
