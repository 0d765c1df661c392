"""The Kosmos-2 grounding text format: boxes as patch-index tokens, and a parser for grounded text.

A grounded phrase is written `<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>`.
The image is cut into a GRID x GRID grid of cells numbered row-major (index = row * GRID + col), and a box
is the pair (cell of its upper-left corner, cell of its lower-right corner). One phrase may own several
boxes, split by `</delimiter_of_multi_objects/>`; an `<object>` may also stand without a phrase.

Boxes here are normalised `(x0, y0, x1, y1)` in [0, 1], x to the right and y down.

`parse_grounded` agrees with transformers' `clean_text_and_extract_entities_with_bboxes` on well-formed
Kosmos-2 text, with these deliberate differences:
  * only the known tags are removed: other `<...>` text (`I <3 cats`, `<image>`) stays in the clean
    text, and a phrase may contain `<`; transformers deletes every `<...>`;
  * only the 1024 vocabulary tokens `<patch_index_0000>`..`<patch_index_1023>` are locations; other
    spellings (`<patch_index_44>`, `<patch_index_2000>`) are plain text;
  * a phraseless `<object>` gives one Entity with phrase "" holding all its boxes; transformers gives
    one entity per box named `<patch_index_44><patch_index_863>`, with the same zero-width span;
  * a pair whose lower-right cell lies left of or above its upper-left cell is dropped (an entity left
    with no box is dropped too); transformers returns it as an inverted box;
  * spans always lie within the clean text: a zero-width span in stripped leading or trailing
    whitespace is clamped to its ends, and a blank phrase is "" with a zero-width span.
It never raises: a malformed or unterminated `<phrase>`/`<object>` yields no entity, its tags are removed.
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

GRID = 32  # cells per side: 32 x 32 = 1024 location tokens

Box = tuple[float, float, float, float]  # normalised x0, y0, x1, y1

GROUNDING, PHRASE, END_PHRASE = "<grounding>", "<phrase>", "</phrase>"
OBJECT, END_OBJECT, DELIMITER = "<object>", "</object>", "</delimiter_of_multi_objects/>"
_TAG = re.compile(r"<grounding>|</?phrase>|</?object>|</delimiter_of_multi_objects/>|<patch_index_([0-9]{4})>")
_LOC = "loc"  # the kind of a location piece


def location_token(index: int) -> str:
    return f"<patch_index_{index:04d}>"


def _check_box(box: Box) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"a box is (x0, y0, x1, y1), not {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
        raise ValueError(f"box {box!r} is not normalised: every coordinate must lie in [0, 1]")
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box {box!r} is inverted: need x0 <= x1 and y0 <= y1")
    return x0, y0, x1, y1


def box_to_patch_indices(box: Box, grid: int = GRID) -> tuple[int, int]:
    """(upper-left cell, lower-right cell) of a normalised box, each as row * grid + col."""
    x0, y0, x1, y1 = _check_box(box)
    ul_x, ul_y = (min(grid - 1, math.floor(v * grid)) for v in (x0, y0))
    lr_x = min(grid - 1, max(ul_x, math.ceil(x1 * grid - 1)))  # the cell holding x1, an open edge
    lr_y = min(grid - 1, max(ul_y, math.ceil(y1 * grid - 1)))
    return ul_y * grid + ul_x, lr_y * grid + lr_x


def _index(i: int, grid: int) -> int:
    try:
        i = operator.index(i)  # ints and numpy ints, not floats
    except TypeError:
        raise ValueError(f"patch index {i!r} is not an integer") from None
    if not 0 <= i < grid * grid:
        raise ValueError(f"patch index {i} is outside 0..{grid * grid - 1}")
    return i


def _cells(ul: int, lr: int, grid: int) -> tuple[int, int, int, int]:
    """(ul_x, ul_y, lr_x, lr_y) of a pair, or ValueError when it is not a box on the grid."""
    (ul_y, ul_x), (lr_y, lr_x) = divmod(_index(ul, grid), grid), divmod(_index(lr, grid), grid)
    if lr_x < ul_x or lr_y < ul_y:
        raise ValueError(f"patch indices ({ul}, {lr}): the lower-right cell is left of or above the upper-left")
    return ul_x, ul_y, lr_x, lr_y


def patch_indices_to_box(ul: int, lr: int, grid: int = GRID) -> Box:
    """The normalised box of a pair: outer cell edges when the cells share a row or column, else cell centres."""
    ul_x, ul_y, lr_x, lr_y = _cells(ul, lr, grid)
    c = 1.0 / grid  # cell side
    if ul_x == lr_x or ul_y == lr_y:
        return ul_x * c, ul_y * c, lr_x * c + c, lr_y * c + c
    return ul_x * c + c / 2, ul_y * c + c / 2, lr_x * c + c / 2, lr_y * c + c / 2


def object_string(boxes: list[Box]) -> str:
    """`<object><patch_index_..><patch_index_..>[</delimiter_of_multi_objects/>...]</object>`."""
    if not boxes:
        raise ValueError("an <object> needs at least one box")
    pairs = (box_to_patch_indices(b) for b in boxes)
    return OBJECT + DELIMITER.join(location_token(ul) + location_token(lr) for ul, lr in pairs) + END_OBJECT


def phrase_string(phrase: str, boxes: list[Box]) -> str:
    """`<phrase> a red circle</phrase>` then `object_string(boxes)`; the phrase is stripped first."""
    text = phrase.strip()
    if not text or _TAG.search(text):
        raise ValueError(f"phrase {phrase!r} must be non-blank and hold no grounding tags")
    return f"{PHRASE} {text}{END_PHRASE}{object_string(boxes)}"


def scale_box(box: Box, width: int, height: int) -> Box:
    """A normalised box in pixels of a width x height image (x by width, y by height)."""
    x0, y0, x1, y1 = _check_box(box)
    return x0 * width, y0 * height, x1 * width, y1 * height


@dataclass(frozen=True)
class Entity:
    phrase: str  # stripped; "" for an <object> without a phrase
    span: tuple[int, int]  # [start, end) in Grounded.text
    boxes: list[Box]  # normalised, one per location pair


@dataclass(frozen=True)
class Grounded:
    text: str  # the input without its tags, stripped
    entities: list[Entity]


@dataclass(frozen=True)
class _Piece:
    kind: str | None  # a tag, _LOC, or None for text
    value: str | int  # the text, or a location index
    at: int  # offset in the tag-free text


def _pieces(kosmos: str) -> list[_Piece]:
    """Split into text and known tags; a location outside the grid is text."""
    pieces, pos, at = [], 0, 0
    for m in _TAG.finditer(kosmos):
        index = int(m[1]) if m[1] else None
        if index is not None and index >= GRID * GRID:
            continue  # not a vocabulary token: stays in the surrounding text
        if m.start() > pos:
            pieces.append(_Piece(None, kosmos[pos:m.start()], at))
            at += m.start() - pos
        pieces.append(_Piece(_LOC, index, at) if index is not None else _Piece(m[0], m[0], at))
        pos = m.end()
    if pos < len(kosmos):
        pieces.append(_Piece(None, kosmos[pos:], at))
    return pieces


def _read_object(pieces: list[_Piece], kinds: list[str | None], i: int) -> tuple[list[tuple[int, int]], int] | None:
    """The location pairs of the well-formed <object> at pieces[i], and the index after it; else None."""
    if kinds[i] != OBJECT:
        return None
    pairs, j = [], i + 1
    while kinds[j:j + 2] == [_LOC, _LOC]:
        pairs.append((pieces[j].value, pieces[j + 1].value))
        j += 2
        if kinds[j:j + 1] == [END_OBJECT]:
            return pairs, j + 1
        if kinds[j:j + 1] != [DELIMITER]:
            return None
        j += 1
    return None


def _phrase_before(pieces: list[_Piece], kinds: list[str | None], i: int) -> tuple[str, tuple[int, int]]:
    """The stripped phrase closed right before pieces[i] and its span; "" and an empty span if none."""
    if i >= 3 and kinds[i - 3:i] == [PHRASE, None, END_PHRASE]:
        raw = pieces[i - 2]
        start = raw.at + len(raw.value) - len(raw.value.lstrip())
        text = raw.value.strip()
        return text, (start, start + len(text))
    return "", (pieces[i].at, pieces[i].at)


def _box_or_none(ul: int, lr: int) -> Box | None:
    try:
        return patch_indices_to_box(ul, lr)
    except ValueError:
        return None


def parse_grounded(kosmos: str) -> Grounded:
    """The clean text of Kosmos-2 output and its grounded entities; never raises (see the module doc)."""
    pieces = _pieces(kosmos)
    raw = "".join(p.value for p in pieces if p.kind is None)
    text = raw.strip()
    lead = len(raw) - len(raw.lstrip())

    def clamp(at: int) -> int:  # a raw offset, in the stripped text
        return min(max(at - lead, 0), len(text))

    kinds = [p.kind for p in pieces]
    entities, i = [], 0
    while i < len(pieces):
        found = _read_object(pieces, kinds, i)
        if found is None:
            i += 1
            continue
        pairs, i_next = found
        boxes = [b for b in (_box_or_none(ul, lr) for ul, lr in pairs) if b is not None]
        if boxes:
            phrase, (start, end) = _phrase_before(pieces, kinds, i)
            entities.append(Entity(phrase, (clamp(start), clamp(end)), boxes))
        i = i_next
    return Grounded(text, entities)
