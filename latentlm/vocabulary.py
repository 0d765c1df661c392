"""What the shipped models were trained to read, and notes on text outside it.

Text-to-image was trained only on the captions of the shapes world (`latentlm.data.shapes`):
`a [small|large] <colour> <shape>` for one object and `a <colour> <shape> <relation> a <colour> <shape>`
for two (two objects always differ in colour or shape, and carry no size). The reading tasks were
trained on the prompts of `latentlm.data.tasks`. A prompt outside them still runs, but the model
guesses: "a cat sitting on a mat" draws a square, "a green square and a yellow circle" one object.
These functions say so, naming the words (or the form) the model never saw, so that the Session can
warn, or refuse under `strict=True`.
"""
from __future__ import annotations

import random
import re
from functools import cache

from latentlm.data.shapes import PALETTE, SHAPES, SIZES

COLOURS = tuple(PALETTE)
SIZE_WORDS = tuple(SIZES)
RELATIONS = ("left of", "right of", "above", "below")
# "an" is read as "a" (the training captions say "a orange"; the model draws both alike).
DRAWING_WORDS = frozenset({"a", "an", *COLOURS, *SHAPES, *SIZE_WORDS, "left", "right", "of", "above", "below"})
DRAWING_FORMS = "'a [small|large] <colour> <shape>' or 'a <colour> <shape> <relation> a <colour> <shape>'"
KNOWN = (f"colours {', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; sizes {' and '.join(SIZE_WORDS)} "
         f"(one object only); relations {', '.join(RELATIONS)}")
GROUNDING_WORDS = frozenset({"the", "a", "an", "object", *COLOURS, *SHAPES, *SIZE_WORDS})

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_TAG = re.compile(r"<[^>]*>")


def words(text: str) -> list[str]:
    """The lowercase words of `text` (punctuation and Kosmos-2 tags left out)."""
    return _WORD.findall(_TAG.sub(" ", text.lower()))


def _quoted(items: list[str]) -> str:
    return ", ".join(repr(w) for w in items)


def _unknown(text: str, known: frozenset[str]) -> list[str]:
    return [w for w in dict.fromkeys(words(text)) if w not in known]


@cache
def reading_words() -> frozenset[str]:
    """Every word of the reading prompts the model was trained on, gathered from `latentlm.data.tasks`.

    The question generators are drawn over enough scenes and random choices to produce every phrasing
    they have (a test checks that more draws add no word), so this follows tasks.py when it changes."""
    from latentlm.data import tasks
    from latentlm.data.shapes import scene_for

    found = {w for p in (*tasks.CAPTION_PROMPTS, tasks.GROUNDED_CAPTION_PROMPT) for w in words(p)}
    rng = random.Random(0)
    for i in range(300):
        scene = scene_for("train", i)
        for kind in tasks.QUESTION_KINDS:
            found.update(words(tasks.question(scene, kind, rng).prompt))
        for obj in scene.objects:
            found.update(w for p in tasks.grounding_phrases(scene, obj) for w in words(p))
    return frozenset(found)


def drawing_notes(prompt: str) -> list[str]:
    """Why the shipped model may not draw `prompt` as asked: unknown words, or a form it never saw. [] if none."""
    from latentlm.evaluation.scene_parser import parse_prompt

    unknown = _unknown(prompt, DRAWING_WORDS)
    shown = " ".join(prompt.split())
    try:
        parsed = parse_prompt(prompt)
    except ValueError:
        parsed = None
    if parsed is None:
        if "and" in unknown and sum(w in SHAPES for w in words(prompt)) >= 2:
            return [f"{shown!r} joins two objects with 'and', a form the model was not trained on (it draws one of "
                    "them); say where one is, e.g. 'a green square left of a yellow circle'"]
        said = f"has words the model never saw in training ({_quoted(unknown)})" if unknown else \
            "is not a form the model was trained on"
        return [f"{shown!r} {said}; it draws only {DRAWING_FORMS}, with {KNOWN}"]
    if len(parsed.objects) == 2:
        a, b = parsed.objects
        if a.size or b.size:
            return [f"{shown!r}: sizes were trained with one object only; with two, leave them out "
                    "('a red circle above a blue square')"]
        if (a.colour, a.shape) == (b.colour, b.shape):
            return [f"{shown!r}: two objects of the same colour and shape were never in training; "
                    "make them differ in colour or shape"]
    return []


def question_notes(question: str) -> list[str]:
    """Words of `question` that no training question had, as a note; [] if none."""
    unknown = _unknown(question, reading_words())
    if not unknown:
        return []
    return [f"the question {' '.join(question.split())!r} has words the model never saw in training "
            f"({_quoted(unknown)}); it was trained on questions like 'what colour is the circle?', 'how many "
            "shapes are there?', 'is there a blue square?', 'what is left of the red circle?'"]


def phrase_notes(phrase: str) -> list[str]:
    """Words of a phrase to find that no training phrase had, as a note; [] if none."""
    unknown = _unknown(phrase, GROUNDING_WORDS)
    if not unknown:
        return []
    return [f"the phrase {' '.join(phrase.split())!r} has words the model never saw in training "
            f"({_quoted(unknown)}); it finds phrases like 'the blue square', 'the circle', 'the red object'"]
