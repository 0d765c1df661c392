"""Descriptions of shapes-world pictures, and the rule-based edits of a conversation's follow-ups.

"now make it green", "make it bigger", "now a triangle", "make the square yellow", "swap them",
"put a blue square below it", "remove the square": each changes the last drawing's description
(`a red circle` -> `a green circle`) over the shapes-world vocabulary (`latentlm.vocabulary`), and the
planner draws the result. Common words the model lacks are mapped to its own first (`normalise`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from latentlm.errors import PromptError
from latentlm.vocabulary import COLOURS, RELATIONS, SHAPES

# Everyday words for the model's words: applied to descriptions, phrases and edits.
_SYNONYMS = (
    (r"\b(?:to|on) the left(?: side)? of\b", "left of"),
    (r"\b(?:to|on) the right(?: side)? of\b", "right of"),
    (r"\bon top of\b", "above"),
    (r"\b(?:under|underneath|beneath)\b", "below"),
    (r"\b(?:big|huge)\b", "large"),
    (r"\b(?:little|tiny)\b", "small"),
)
_SIZE_CHANGE = {"large": "large", "larger": "large", "bigger": "large", "small": "small", "smaller": "small",
                "tinier": "small"}
_RELATION = re.compile(r"\b(left of|right of|above|below)\b")
# "put the triangle on the right": where a thing goes, said without the other thing
_SIDES = {"on the left": "left of", "on the right": "right of", "at the top": "above", "at the bottom": "below"}
_SIDE = re.compile(rf"\b({'|'.join(_SIDES)})$")
_TARGET = re.compile(rf"\bthe\s+(?:({'|'.join(COLOURS)})\s+)?({'|'.join(SHAPES)}|one|object|shape)\b")


def normalise(text: str) -> str:
    """`text` with the everyday words of `_SYNONYMS` replaced by the model's ("big" -> "large")."""
    for pattern, word in _SYNONYMS:
        text = re.sub(pattern, word, text)
    return text


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str
    size: str | None = None

    def __str__(self) -> str:
        words = " ".join(w for w in (self.size, self.colour, self.shape) if w)
        return f"{article(words)} {words}"


@dataclass(frozen=True)
class Description:
    """One thing, or two with the relation of the first to the second."""

    things: tuple[Thing, ...]
    relation: str | None = None

    def __str__(self) -> str:
        if len(self.things) == 1:
            return str(self.things[0])
        return f"{self.things[0]} {self.relation} {self.things[1]}"


def parse_description(text: str) -> Description | None:
    """A description in the model's grammar (see `latentlm.vocabulary`), or None."""
    from latentlm.evaluation.scene_parser import parse_prompt

    try:
        parsed = parse_prompt(text)
    except ValueError:
        return None
    return Description(tuple(Thing(o.colour, o.shape, o.size) for o in parsed.objects), parsed.relation)


def edit(prompt: str, request: str) -> str:
    """The description `prompt` changed as `request` (lowercase, normalised) says; a `PromptError` if it cannot."""
    described = parse_description(prompt)
    if described is None:
        raise PromptError(f"the last drawing, {prompt!r}, is not a description it can change; describe the new "
                          "picture in full, e.g. 'draw a green circle'")
    changed = _structural(described, request)
    if changed is None:
        changed = _attributes(described, request)
    return str(changed)


def _structural(d: Description, request: str) -> Description | None:
    """Swapping, removing, adding or moving things; None when the request does none of these."""
    if re.search(r"^(?:swap|switch|flip)\b|\bthe other way round\b", request):
        if len(d.things) == 1:
            raise PromptError(f"{request!r}: the last drawing has one thing; there is nothing to swap")
        return Description((d.things[1], d.things[0]), d.relation)
    if re.match(r"(?:remove|delete|drop|take away|take out|without)\b", request):
        if len(d.things) == 1:
            raise PromptError(f"{request!r}: the last drawing has one thing; removing it leaves nothing to draw")
        gone = _target(d, request, needed=True)
        kept = d.things[1 - gone]
        return Description((replace(kept, size=None),))
    added = re.match(rf"(?:add|put|place|draw)\s+(?:an?\s+)(?P<thing>.+?)\s+(?P<rel>{'|'.join(RELATIONS)})\s+"
                     r"(?:it|that|this|the\s+\w+(?:\s+\w+)?)$", request)
    if added:
        if len(d.things) == 2:
            raise PromptError(f"{request!r}: the last drawing already has two things, the most the model draws")
        new = _thing(added["thing"], request)
        return Description((new, d.things[0]), added["rel"])
    relation = _RELATION.search(request) or _SIDE.search(request)
    if relation and len(d.things) == 2:
        named = [m for m in _TARGET.finditer(request) if m.start() < relation.start()]
        if named:
            first = _which(d, named[-1], request)
            return Description((d.things[first], d.things[1 - first]), _SIDES.get(relation[1], relation[1]))
        return Description(d.things, _SIDES.get(relation[1], relation[1]))
    return None


def _attributes(d: Description, request: str) -> Description:
    """A new colour, shape or size for the thing the request names (or the only thing)."""
    index = _target(d, request, needed=len(d.things) == 2)
    rest = _TARGET.sub(" ", request, count=1) if _TARGET.search(request) else request
    colours = [w for w in re.findall(r"[a-z]+", rest) if w in COLOURS]
    shapes = [w for w in re.findall(r"[a-z]+", rest) if w in SHAPES]
    sizes = [_SIZE_CHANGE[w] for w in re.findall(r"[a-z]+", rest) if w in _SIZE_CHANGE]
    if not (colours or shapes or sizes):
        raise PromptError(f"{request!r}: say what to change in {str(d)!r}: a colour ({', '.join(COLOURS)}), a shape "
                          f"({', '.join(SHAPES)}), a size (bigger, smaller) or where things are "
                          f"({', '.join(RELATIONS)})")
    thing = d.things[index]
    thing = Thing(colours[-1] if colours else thing.colour, shapes[-1] if shapes else thing.shape,
                  sizes[-1] if sizes else thing.size)
    things = list(d.things)
    things[index] = thing
    return Description(tuple(things), d.relation)


def _target(d: Description, request: str, needed: bool) -> int:
    """The index of the thing `request` names ("the circle", "the red one"); 0 for a single thing."""
    named = _TARGET.search(request)
    if named:
        return _which(d, named, request)
    if needed:
        raise PromptError(f"{request!r}: the last drawing, {str(d)!r}, has two things; say which, e.g. "
                          f"'make the {d.things[0].shape} green'")
    return 0


def _which(d: Description, named: re.Match, request: str) -> int:
    colour, noun = named[1], named[2]
    for i, t in enumerate(d.things):
        if (colour is None or t.colour == colour) and (noun not in SHAPES or t.shape == noun):
            return i
    raise PromptError(f"{request!r}: the last drawing, {str(d)!r}, has no {named[0].removeprefix('the ')}")


def _thing(text: str, request: str) -> Thing:
    words = text.split()
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    size = next((w for w in words if w in ("small", "large")), None)
    if colour is None or shape is None:
        raise PromptError(f"{request!r}: name the new thing's colour and shape, e.g. 'add a blue square below it'")
    return Thing(colour, shape, size)
