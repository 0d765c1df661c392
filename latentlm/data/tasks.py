"""Understanding tasks drawn from shapes-world scenes: what the model reads a picture for.

Each task turns a scene into `(prompt, answer)` text that follows the picture in the sequence
`<s> <image> z_1..z_64 </image> PROMPT ANSWER </s>`. The prompts used at inference are the first
(canonical) phrasing of each task, so training and serving share one definition here. Everything is
a pure function of the scene and a `random.Random`, so a training batch is a pure function of its step.

Tasks: captions, grounded captions (Kosmos-2 `<grounding>`), phrase grounding, referring (a box in,
the phrase out) and questions of seven kinds (colour, shape, size, count, presence, relation,
"what is left of / above ...").
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from latentlm.data.shapes import (PALETTE, SHAPES, Scene, ShapeObject, grounding_of, object_tokens, phrase_of,
                                   relation)

CAPTION_PROMPTS = ("describe the picture.", "describe this picture.", "what is in the picture?",
                   "caption this picture.", "what do you see?")
# Kosmos-2's grounded-caption prompt; the answer continues it: "<phrase> a red circle</phrase><object>...".
# (A bare "<grounding>" differed from a phrase-grounding prompt by one token, and the model mixed the two.)
GROUNDED_CAPTION_PROMPT = "<grounding> an image of"
QUESTION_KINDS = ("colour", "shape", "size", "count", "presence", "relation", "what_is")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = ("zero", "one", "two")
# Where an object sits relative to the other, as a word that picks it out ("the circle on the left").
_SIDE = {"left of": "on the left", "right of": "on the right", "above": "at the top", "below": "at the bottom"}


@dataclass(frozen=True)
class Example:
    task: str  # "caption", "grounded_caption", "ground", "refer" or "vqa:<kind>"
    prompt: str  # text after </image>
    answer: str  # what the model writes, before </s>


def ground_prompt(phrase: str) -> str:
    """Kosmos-2 phrase grounding: the model continues with `<object>...</object>`."""
    return f"<grounding><phrase> {phrase.strip()}</phrase>"


def refer_prompt(box: tuple[int, int, int, int]) -> str:
    """A box (pixels of the 64x64 canvas) as location tokens; the model names the object there."""
    return f"what is at {object_tokens(box)}?"


def _other(scene: Scene, obj: ShapeObject) -> ShapeObject | None:
    rest = [o for o in scene.objects if o is not obj]
    return rest[0] if rest else None


def _side(scene: Scene, obj: ShapeObject) -> str:
    other = _other(scene, obj)
    return _SIDE[relation(obj, other)] if other else ""


def _ref_without_colour(scene: Scene, obj: ShapeObject) -> str:
    """A phrase that picks `obj` out without naming its colour (asked about)."""
    other = _other(scene, obj)
    if other is None or other.shape != obj.shape:
        return f"the {obj.shape}"
    return f"the {obj.shape} {_side(scene, obj)}"


def _ref_without_shape(scene: Scene, obj: ShapeObject, rng: random.Random) -> str:
    noun = rng.choice(("object", "shape"))
    other = _other(scene, obj)
    if other is None or other.colour != obj.colour:
        return f"the {obj.colour} {noun}"
    return f"the {noun} {_side(scene, obj)}"


def _full_ref(obj: ShapeObject) -> str:
    return f"the {obj.colour} {obj.shape}"


def _colour_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    obj = rng.choice(scene.objects)
    word = rng.choice(("colour", "color"))
    ref = _ref_without_colour(scene, obj)
    form = rng.choice((f"what {word} is {ref}?", f"what is the {word} of {ref}?", f"which {word} is {ref}?"))
    return form, obj.colour


def _shape_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    obj = rng.choice(scene.objects)
    ref = _ref_without_shape(scene, obj, rng)
    return rng.choice((f"what shape is {ref}?", f"what is the shape of {ref}?")), obj.shape


def _size_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    obj = rng.choice(scene.objects)
    ref = _full_ref(obj)
    return rng.choice((f"is {ref} small or large?", f"what size is {ref}?", f"how big is {ref}?")), obj.size


def _count_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        noun = rng.choice(("objects", "shapes"))
        tail = rng.choice(("are there?", "are in the picture?", "do you see?"))
        return f"how many {noun} {tail}", NUMBERS[len(scene.objects)]
    shape = rng.choice(SHAPES)
    n = sum(o.shape == shape for o in scene.objects)
    return f"how many {shape}s are there?", NUMBERS[n]


def _random_kind(rng: random.Random) -> tuple[str, str]:
    return rng.choice(sorted(PALETTE)), rng.choice(SHAPES)


def _presence_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        obj = rng.choice(scene.objects)
        colour, shape = obj.colour, obj.shape
    else:
        colour, shape = _random_kind(rng)
    present = any(o.colour == colour and o.shape == shape for o in scene.objects)
    form = rng.choice(("is there a {} {}?", "do you see a {} {}?", "is there a {} {} in the picture?"))
    return form.format(colour, shape), "yes" if present else "no"


def _relation_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    if len(scene.objects) == 1:
        return _presence_question(scene, rng)
    a, b = rng.sample(list(scene.objects), 2)
    truth = relation(a, b)
    asked = truth if rng.random() < 0.5 else rng.choice([r for r in RELATIONS if r != truth])
    return f"is {_full_ref(a)} {asked} {_full_ref(b)}?", "yes" if asked == truth else "no"


def _what_is_question(scene: Scene, rng: random.Random) -> tuple[str, str]:
    b = rng.choice(scene.objects)
    a = _other(scene, b)
    truth = relation(a, b) if a else None
    asked = truth if truth and rng.random() < 0.6 else rng.choice(RELATIONS)
    answer = phrase_of(a, with_size=False) if a and asked == truth else "nothing"
    return f"what is {asked} {_full_ref(b)}?", answer


_QUESTIONS = {
    "colour": _colour_question, "shape": _shape_question, "size": _size_question, "count": _count_question,
    "presence": _presence_question, "relation": _relation_question, "what_is": _what_is_question,
}


def question(scene: Scene, kind: str, rng: random.Random) -> Example:
    prompt, answer = _QUESTIONS[kind](scene, rng)
    return Example(f"vqa:{kind}", prompt, answer)


def caption(scene: Scene, rng: random.Random | None = None) -> Example:
    prompt = rng.choice(CAPTION_PROMPTS) if rng else CAPTION_PROMPTS[0]
    return Example("caption", prompt, scene.caption)


def grounded_caption(scene: Scene) -> Example:
    answer = scene.grounding.removeprefix("<grounding>")
    return Example("grounded_caption", GROUNDED_CAPTION_PROMPT, answer)


def grounding_phrases(scene: Scene, obj: ShapeObject) -> list[str]:
    """Phrases that name `obj` alone in its scene (colour and shape together are always unique)."""
    phrases = [f"the {obj.colour} {obj.shape}", f"a {obj.colour} {obj.shape}", f"the {obj.size} {obj.colour} {obj.shape}"]
    other = _other(scene, obj)
    if other is None or other.shape != obj.shape:
        phrases.append(f"the {obj.shape}")
    if other is None or other.colour != obj.colour:
        phrases.append(f"the {obj.colour} object")
    return phrases


def ground(scene: Scene, rng: random.Random) -> Example:
    obj = rng.choice(scene.objects)
    return Example("ground", ground_prompt(rng.choice(grounding_phrases(scene, obj))), object_tokens(obj.box))


def refer(scene: Scene, rng: random.Random) -> Example:
    obj = rng.choice(scene.objects)
    return Example("refer", refer_prompt(obj.box), phrase_of(obj, with_size=False))


def draw_example(scene: Scene, task: str, rng: random.Random, question_weights: dict[str, float] | None = None,
                 colour_first_keep: float = 1.0) -> Example:
    """One example of `task` ("caption", "grounded_caption", "ground", "refer", "vqa") for `scene`; a
    question's kind is drawn uniformly, or by `question_weights` (kind -> weight, 1 where not given).

    `colour_first_keep` < 1 keeps a colour question about the first object of a two-object scene (the
    caption's first) only with that probability, drawing another otherwise: answering with the first
    object's colour then pays less often (with 1, in 75% of colour questions)."""
    if task == "vqa" and colour_first_keep < 1:
        example = draw_example(scene, task, rng, question_weights)
        while (example.task == "vqa:colour" and len(scene.objects) == 2 and rng.random() >= colour_first_keep
               and _asked_object(scene, example)[0] is scene.objects[0]):
            example = question(scene, "colour", rng)
        return example
    if task == "caption":
        return caption(scene, rng)
    if task == "grounded_caption":
        return grounded_caption(scene)
    if task == "ground":
        return ground(scene, rng)
    if task == "refer":
        return refer(scene, rng)
    if task == "vqa":
        if not question_weights:
            return question(scene, rng.choice(QUESTION_KINDS), rng)
        weights = [question_weights.get(k, 1.0) for k in QUESTION_KINDS]
        return question(scene, rng.choices(QUESTION_KINDS, weights)[0], rng)
    raise ValueError(f"unknown understanding task {task!r}: use one of {', '.join(UNDERSTANDING_TASKS)}")


UNDERSTANDING_TASKS = ("caption", "grounded_caption", "ground", "refer", "vqa")


# Question kinds whose answer the model may write after boxing the objects it compares ("boxed answers"),
# and those it reasons about from boxes (boxed_answer(reasoned=True)).
BOXED_KINDS = ("relation", "what_is")
REASONED_KINDS = (*BOXED_KINDS, "colour")


def boxed_answer(scene: Scene, example: Example, reasoned: bool = False, colour: str = "box_and_name") -> str:
    """The answer of a spatial question preceded by the boxes of the scene's objects, those the question
    names first, in the order it names them: `<object>..</object><object>..</object> yes`.

    Why: with each object's box written before the words that depend on where it is, the model gets
    relations right far more often (captions: 92% of two-object scenes via boxes against 66% without,
    val, stage 4). `parse_grounded(...).text` of such an answer is the plain answer.

    `reasoned=True` also states, after the boxes, where the objects are relative to each other, in the
    question's order, before the answer: `<object>..</object><object>..</object> the green circle is
    left of the orange square, so yes`. Why: with boxes alone, the stage-5 model answered a question
    asked in the converse of its caption's order ("is green left of orange?" of "orange right of green")
    "no" with both boxes right; stating the relation of the question's first object splits the answer
    into reading it off the boxes and comparing words. `final_answer` strips the statement.

    A reasoned colour answer (`colour`): "box_and_name" boxes and names the object asked about, "grounded"
    grounds the question's own words for it, Kosmos-2 style, before the colour (`_grounded_colour`),
    "caption" writes the scene's grounded caption first (`_captioned_colour`), "caption_stated" then also
    states the colour of the object asked about in the question's words (`_stated_colour`),
    "caption_asked_first" writes it from the object asked about (`_asked_first_colour`), "caption_checked"
    checks the caption's first colour on the object asked about with a presence question (`_checked_colour`)."""
    if reasoned and example.task == "vqa:colour":
        return _COLOUR_FORMS.get(colour, _reasoned_colour)(scene, example)
    named = sorted((o for o in scene.objects if _full_ref(o) in example.prompt),
                   key=lambda o: example.prompt.index(_full_ref(o)))
    rest = [o for o in scene.objects if o not in named]
    boxes = "".join(object_tokens(o.box) for o in (*named, *rest))
    statement = _stated_relation(example, named, rest) if reasoned else ""
    return f"{boxes} {statement}{example.answer}"


def _asked_object(scene: Scene, example: Example) -> tuple[ShapeObject, str]:
    """The object a colour question asks about, and the words that name it ('the circle on the left')."""
    for o in scene.objects:
        ref = _ref_without_colour(scene, o)
        if example.prompt.endswith(ref + "?"):
            return o, ref
    raise ValueError(f"no object of the scene is named by {example.prompt!r}")


def _captioned_colour(scene: Scene, example: Example) -> str:
    """'<phrase> a red triangle</phrase><object>..</object> left of<phrase> a green circle</phrase><object>..
    </object>, so green': the grounded caption, then the colour of the object asked about. Why: boxed or
    grounded first (`_reasoned_colour`, `_grounded_colour`), the model picked the caption's first object in
    about 40% of two-object scenes, even rewriting "the circle" as "the triangle": it cannot find an
    object by its shape alone, but it names both objects in its grounded captions (97%, val); the colour
    is then looked up in its own words, and a side ("the circle on the left") in its boxes."""
    _asked_object(scene, example)  # the question names one object of the scene
    return f"{grounded_caption(scene).answer}{REASON_SEP}{example.answer}"


def _checked_colour(scene: Scene, example: Example) -> str:
    """'<grounded caption>, is there a red circle? no, so green' for "what colour is the circle?": the grounded
    caption, then a presence question pairing its first colour with the object asked about, answered, then
    the colour: the first if yes, else the other. Why: the model cannot pick the colour of an object named
    by its shape (55-73% on two-object scenes, every answer form so far), yet it answers presence
    questions with the other object's colour as the decoy 97% right (stage 5i, val): checking one colour
    turns the lookup into a question it answers, and a choice by position it can make."""
    obj, ref = _asked_object(scene, example)
    first = scene.objects[0]
    described = ref.removeprefix("the ")  # "circle", or "circle on the left" when both are circles
    verdict = "yes" if first is obj else "no"
    check = f"is there a {first.colour} {described}? {verdict}"
    return f"{grounded_caption(scene).answer}, {check}{REASON_SEP}{example.answer}"


def _asked_first_colour(scene: Scene, example: Example) -> str:
    """'<phrase> a green circle</phrase><object>..</object> right of<phrase> a red triangle</phrase>..., so
    green' for "what colour is the circle?": the grounded caption begun from the object asked about, then
    its colour, always that of the caption's first object. Why: a scene's two objects come in no order a
    picture shows, so the canonical caption's order is a coin flip to the model; after it (`_captioned_colour`,
    `_stated_colour`) the stage-5i model answered with the colour of the object at the position the
    question was most often about in training, and began its own caption from the object asked about
    in about 2 of 3 misses (val). Here position and question agree by construction."""
    obj, _ = _asked_object(scene, example)
    ordered = (obj, *(o for o in scene.objects if o is not obj))
    return f"{grounding_of(ordered).removeprefix('<grounding>')}{REASON_SEP}{example.answer}"


def _stated_colour(scene: Scene, example: Example) -> str:
    """'<grounded caption>, the circle is green, so green': the grounded caption, then the question's words
    for the object asked about with its colour. Why: after the caption alone (`_captioned_colour`) the model
    wrote the caption right and then the colour of its first object (stages 5f, 5h); looking a colour up
    next to the shape word just written ('circle is' -> the word before 'circle' in the caption) is the
    two-step copy its relation answers already do well (96%, val, stage 5h)."""
    _, ref = _asked_object(scene, example)
    return f"{grounded_caption(scene).answer}, {ref} is {example.answer}{REASON_SEP}{example.answer}"


def _grounded_colour(scene: Scene, example: Example) -> str:
    """'<phrase> the circle</phrase><object>..</object>, so green': the question's words for the object
    grounded as phrase grounding does (95% of boxes right, val, stage 5), then its colour. Why: with a bare
    box first (`_reasoned_colour`) the model boxed the caption's first object in about 40% of two-object
    scenes, the same bias as its plain answers."""
    obj, ref = _asked_object(scene, example)
    return f"<phrase> {ref}</phrase>{object_tokens(obj.box)}{REASON_SEP}{example.answer}"


def _reasoned_colour(scene: Scene, example: Example) -> str:
    """'<object>..</object> a green circle, so green': the box of the object asked about, then what is there.
    Why: the stage-5 model answered every missed colour question of a two-object scene with the colour of
    the caption's first object; boxing the object asked about first makes it name the right one."""
    obj = _asked_object(scene, example)[0]
    return f"{object_tokens(obj.box)} {phrase_of(obj, with_size=False)}{REASON_SEP}{example.answer}"


# A reasoned colour answer's forms (boxed_answer's `colour`; data.colour_answer): name -> writer.
_COLOUR_FORMS = {"box_and_name": _reasoned_colour, "grounded": _grounded_colour, "caption": _captioned_colour,
                 "caption_stated": _stated_colour, "caption_asked_first": _asked_first_colour,
                 "caption_checked": _checked_colour}


REASON_SEP = ", so "  # between a stated relation and the answer it leads to (boxed_answer(reasoned=True))


def _stated_relation(example: Example, named: list[ShapeObject], rest: list[ShapeObject]) -> str:
    """'the A is <relation> the B, so ' for a two-object spatial question ('' otherwise): A is the object
    the question asks about ("is A left of B?"; "what is left of B?": the other object, A)."""
    kind = example.task.removeprefix("vqa:")
    if kind == "relation" and len(named) == 2:
        a, b = named
    elif kind == "what_is" and len(named) == 1 and rest:
        a, b = rest[0], named[0]
    else:
        return ""
    return f"{_full_ref(a)} is {relation(a, b)} {_full_ref(b)}{REASON_SEP}"


def final_answer(text: str) -> str:
    """The answer at the end of a reasoned one ('the red circle is left of the blue square, so yes' -> 'yes')."""
    return text.rsplit(REASON_SEP, 1)[-1].strip()
