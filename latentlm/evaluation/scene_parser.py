"""A pixel-analysis scene parser for the shapes world (docs/design.md §5), used to score prompt adherence.

Generated pictures are read back into objects (colour, shape, size, box) by plain pixel analysis:
every pixel goes to its nearest palette colour (or to the background); each colour's connected
regions are the objects, less thin colour fringes along the rims of others; the shape follows from
whether a region narrows towards the top (triangle) and how much of its bounding box it fills
(square ~1, circle ~pi/4). The rules are loose enough for pictures decoded by a VAE: soft edges,
mild blur, pixel noise, rims tinted towards a neighbouring colour.

A prompt is read with the caption grammar of `latentlm.data.shapes`, and `check` says whether the picture
holds exactly the objects asked for, with the relation computed by `latentlm.data.shapes.relation`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from latentlm.data.shapes import PALETTE, SHAPES, SIZES, ShapeObject, relation

COLOUR_TOLERANCE = 60.0  # RGB distance within which a pixel counts as a (tint of a) palette colour
MIN_AREA = 25  # smaller regions are noise; the smallest real object (12 px triangle) covers ~72 px
TRIANGLE_TAPER = 0.6  # top-quarter width over bottom-quarter width: triangles ~0.1-0.25, others ~1
TRIANGLE_FILL = 0.7  # a tapered region fills less than this of its box (triangle ~0.5; blurred <= ~0.62)
SQUARE_FILL = 0.88  # an untapered region above this is a square (~1.0), ...
CIRCLE_FILL = 0.6  # ... above this a circle (pi/4 ~ 0.785); below, neither
FRINGE_REACH = 2  # a region mostly within this many pixels of a larger one of another colour ...
FRINGE_SHARE = 0.6  # ... (this share of its pixels) is that region's colour fringe, not an object
MAX_ASPECT = 1.5  # every shape fills a square box; a region much longer one way is none of them
SIZE_SPLIT = 19  # box side <= 19: small (12-16 px in the data); above: large (22-28 px)
RELATIONS = ("left of", "right of", "above", "below")
UNKNOWN = "unknown"

_NAMES = tuple(PALETTE)
_COLOURS = np.array([PALETTE[c] for c in _NAMES], dtype=np.float32)  # (C, 3)
_WHITE = np.array([255.0, 255.0, 255.0], dtype=np.float32)


@dataclass(frozen=True)
class ParsedObject:
    colour: str
    shape: str  # one of SHAPES, or "unknown" when the region fits none
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels; x1 and y1 exclusive
    area: int  # pixels in the region

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    def as_shape_object(self) -> ShapeObject:
        """The same object as `latentlm.data.shapes` sees it, so its relation rule applies unchanged."""
        return ShapeObject(self.shape, self.colour, self.size, self.box)


# ---- pixels -> objects ------------------------------------------------------------------------

def classify_pixels(image: Image.Image) -> np.ndarray:
    """Palette index of every pixel, or -1 for background: (H, W) int.

    A pixel is read as a tint of each palette colour c: the nearest point to it on the segment from
    white to c, at mix `alpha` (0 white, 1 pure c). It takes the colour whose segment is nearest,
    when that distance is within COLOUR_TOLERANCE and the mix is at least half colour; otherwise it
    is background (white, or off-palette noise). For pure colours this is plain nearest-colour
    matching; for the soft edges of a blurred picture it cuts at the half-way mix, which is where
    the sharp edge was, so shapes keep their true outline.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    away = _WHITE - rgb  # (H, W, 3): how far each pixel is from white
    span = _WHITE - _COLOURS  # (C, 3)
    alpha = np.clip(away @ span.T / (span * span).sum(-1), 0.0, 1.0)  # (H, W, C)
    nearest_tint = _WHITE - alpha[..., None] * span  # (H, W, C, 3)
    dist = np.linalg.norm(rgb[:, :, None, :] - nearest_tint, axis=-1)  # (H, W, C)
    best = dist.argmin(-1)  # (H, W)
    best_dist = np.take_along_axis(dist, best[..., None], -1)[..., 0]
    best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    return np.where((best_dist <= COLOUR_TOLERANCE) & (best_alpha >= 0.5), best, -1)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected regions of a boolean (H, W) mask: labels (H, W), 0 outside, 1..n inside; and n.

    Every pixel repeatedly takes the smallest label among itself and its neighbours until nothing
    changes; on a 64x64 canvas this settles in a few dozen vectorised steps.
    """
    h, w = mask.shape
    none = h * w + 1
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), none)  # (H, W)
    while True:
        p = np.pad(labels, 1, constant_values=none)  # (H+2, W+2)
        shifted = [p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        new = np.where(mask, np.minimum.reduce(shifted), none)
        if np.array_equal(new, labels):
            break
        labels = new
    roots = np.unique(labels[mask])
    dense = np.zeros(h * w + 2, dtype=np.int64)
    dense[roots] = np.arange(1, len(roots) + 1)
    return dense[labels] * mask, len(roots)


def fill_holes(region: np.ndarray) -> np.ndarray:
    """The region (h, w bool) with every hole closed: background not reachable from the border.

    Generated pictures sometimes have a few off-colour pixels inside a shape; they should not
    lower its fill ratio.
    """
    outside = np.pad(~region, 1, constant_values=True)  # (h+2, w+2)
    reached = np.zeros_like(outside)
    reached[0, :] = reached[-1, :] = reached[:, 0] = reached[:, -1] = True
    while True:  # grow the reached background 4-connected, within the background
        grown = reached.copy()
        grown[1:, :] |= reached[:-1, :]
        grown[:-1, :] |= reached[1:, :]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= outside
        if np.array_equal(grown, reached):
            break
        reached = grown
    return ~reached[1:-1, 1:-1]


def taper(region: np.ndarray) -> float:
    """Mean width of the top quarter of rows over that of the bottom quarter (h, w bool -> float).

    About 0.15 for an apex-up triangle, about 1 for circles and squares.
    """
    widths = region.sum(axis=1).astype(np.float64)  # (h,)
    q = max(1, len(widths) // 4)
    return float(widths[:q].mean() / max(widths[-q:].mean(), 1e-9))


def classify_shape(region: np.ndarray) -> str:
    """Shape of a region cropped to its tight box (h, w bool), from its taper and fill ratio.

    The taper tells the apex-up triangle from the rest even when blur eats its apex; the fill ratio
    then tells a square (~1) from a circle (~pi/4). Regions that fit no shape are "unknown".
    """
    h, w = region.shape
    if max(h, w) > MAX_ASPECT * min(h, w):
        return UNKNOWN
    fill = region.mean()
    if taper(region) <= TRIANGLE_TAPER:
        return "triangle" if fill < TRIANGLE_FILL else UNKNOWN
    if fill >= SQUARE_FILL:
        return "square"
    return "circle" if fill >= CIRCLE_FILL else UNKNOWN


def size_of(side: int) -> str:
    return "small" if side <= SIZE_SPLIT else "large"


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a boolean (H, W) mask by `radius` pixels in every direction (a square neighbourhood)."""
    h, w = mask.shape
    p = np.pad(mask, radius)  # (H+2r, W+2r)
    span = range(2 * radius + 1)
    return np.logical_or.reduce([p[dy:dy + h, dx:dx + w] for dy in span for dx in span])


def colour_regions(classes: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The connected regions of each palette colour: (colour index, mask (H, W) bool), any size."""
    regions = []
    for index in range(len(_NAMES)):
        labels, n = label_components(classes == index)
        regions += [(index, labels == k) for k in range(1, n + 1)]
    return regions


def drop_fringes(regions: list[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray]]:
    """The regions less the colour fringes of others.

    A VAE can tint the rim of a shape towards a neighbouring palette colour (a yellow square with
    an orange edge). Such a rim is a region lying mostly (FRINGE_SHARE of its pixels) within
    FRINGE_REACH pixels of a larger region of another colour; it is no object of its own. A real
    object touching another borders it along one side only, so it stays. Fringes are dropped, not
    merged into their host, so that a fringe between two shapes cannot stretch either of them.
    """
    areas = [int(mask.sum()) for _, mask in regions]
    hosts = [(c, dilate(m, FRINGE_REACH), a) for (c, m), a in zip(regions, areas) if a >= MIN_AREA]
    return [
        (colour, mask) for (colour, mask), area in zip(regions, areas)
        if not any(c != colour and a > area and (mask & reach).sum() >= FRINGE_SHARE * area
                   for c, reach, a in hosts)
    ]


def parse_scene(image: Image.Image) -> list[ParsedObject]:
    """Every object in the picture, ordered by position (top to bottom, then left to right)."""
    objects = []
    for index, mask in drop_fringes(colour_regions(classify_pixels(image))):
        area = int(mask.sum())
        if area < MIN_AREA:
            continue
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        region = fill_holes(mask[y0:y1, x0:x1])  # (h, w)
        shape = classify_shape(region)
        objects.append(ParsedObject(_NAMES[index], shape, size_of(max(x1 - x0, y1 - y0)), (x0, y0, x1, y1), area))
    return sorted(objects, key=lambda o: (o.box[1], o.box[0]))


# ---- prompts ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """One object a prompt asks for; size None when the prompt does not name one."""

    colour: str
    shape: str
    size: str | None = None

    def matches(self, obj: ParsedObject) -> bool:
        return (obj.colour == self.colour and obj.shape == self.shape
                and (self.size is None or obj.size == self.size))

    def __str__(self) -> str:
        return " ".join(w for w in ("a", self.size, self.colour, self.shape) if w)


@dataclass(frozen=True)
class Prompt:
    """A parsed prompt: one object, or two with the relation of the first to the second."""

    objects: tuple[Request, ...]
    relation: str | None = None


_PHRASE = (rf"an? (?:(?P<size{{i}}>{'|'.join(SIZES)}) )?(?P<colour{{i}}>{'|'.join(PALETTE)}) "
           rf"(?P<shape{{i}}>{'|'.join(SHAPES)})")
_SINGLE = re.compile(_PHRASE.format(i=0))
_PAIR = re.compile(rf"{_PHRASE.format(i=0)} (?P<relation>{'|'.join(RELATIONS)}) {_PHRASE.format(i=1)}")


def parse_prompt(text: str) -> Prompt:
    """Read a prompt of the caption grammar of `latentlm.data.shapes`.

    `a [small|large] <colour> <shape>`, or `a <colour> <shape> <relation> a <colour> <shape>` (a size
    may be named there too); "an" for "a", case, repeated spaces and a final full stop are ignored.
    Anything else raises ValueError, so that a malformed prompt is never scored as a failure.
    """
    words = " ".join(text.lower().strip().rstrip(".").split())
    if m := _SINGLE.fullmatch(words):
        return Prompt((Request(m["colour0"], m["shape0"], m["size0"]),))
    if m := _PAIR.fullmatch(words):
        a = Request(m["colour0"], m["shape0"], m["size0"])
        b = Request(m["colour1"], m["shape1"], m["size1"])
        return Prompt((a, b), m["relation"])
    raise ValueError(
        f"prompt {text!r} is not in the shapes grammar: expected 'a [small|large] <colour> <shape>' or "
        f"'a <colour> <shape> <{'|'.join(RELATIONS)}> a <colour> <shape>', with colours "
        f"{', '.join(PALETTE)} and shapes {', '.join(SHAPES)}"
    )


# ---- adherence --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    objects: tuple[ParsedObject, ...] = ()


def _describe(objects: list[ParsedObject]) -> str:
    return ", ".join(f"{o.size} {o.colour} {o.shape} at {o.box}" for o in objects) or "nothing"


def check(image: Image.Image, prompt: str) -> Verdict:
    """Whether the picture holds exactly the objects asked for, with their sizes and relation."""
    wanted = parse_prompt(prompt)
    found = parse_scene(image)
    seen = f"found {_describe(found)}"
    if len(found) != len(wanted.objects):
        return Verdict(False, f"asked for {len(wanted.objects)} object(s), {seen}", tuple(found))
    if len(found) == 1:
        ok = wanted.objects[0].matches(found[0])
        why = "matches" if ok else f"asked for {wanted.objects[0]}, {seen}"
        return Verdict(ok, why, tuple(found))
    a, b = wanted.objects
    pairs = ((found[0], found[1]), (found[1], found[0]))
    matched = [(x, y) for x, y in pairs if a.matches(x) and b.matches(y)]
    if not matched:
        return Verdict(False, f"asked for {a} and {b}, {seen}", tuple(found))
    for x, y in matched:
        if relation(x.as_shape_object(), y.as_shape_object()) == wanted.relation:
            return Verdict(True, "matches", tuple(found))
    x, y = matched[0]
    got = relation(x.as_shape_object(), y.as_shape_object())
    return Verdict(False, f"asked for {a} {wanted.relation} {b}, but it is {got} ({seen})", tuple(found))


def adheres(image: Image.Image, prompt: str) -> bool:
    """True when the picture holds exactly what the prompt asks for (see `check`)."""
    return check(image, prompt).ok
