"""Tasks for in-context prompting: what "the same task" is, its true answer, and the self-checks.

A query is one of these tasks (their keys are `latentlm.data.in_context.task_key`'s, so demonstrations
are of the kind the model was trained to see before such a query):

| task | query prompt (after `</image>`) | a demonstration's answer |
|---|---|---|
| `grounded_caption` | `<grounding> an image of` (captions go via boxes, as `understanding.caption`) | `<phrase> a red circle</phrase><object>..</object> ...` |
| `ground` | `<grounding><phrase> the blue square</phrase>` | `<object><patch_index_A><patch_index_B></object>` |
| `vqa:<kind>` | the question; its kind read from its words (`question_kind`) | the plain answer (`red`, `two`, `yes`) |
| `t2i` | (drawing) the caption before `<image>` | the picture |

Self-checks. A demonstration the model made itself is kept only when its answer agrees with what it
knows independently of that answer:
- *generating mode* (`drawn_scene`): the model drew the picture from a caption it wrote. The caption is
  the truth. The drawing must show what the caption says (read back by the pixel scene parser,
  `evaluation.scene_parser.check`, the project's prompt-adherence checker), and the true answer of the
  demonstration's question is computed from the caption's objects with the boxes found in the drawing.
- *retrieving mode* (`read_scene`): a pool picture carries no label, so the model labels it: its
  grounded caption (objects and boxes) is the label when (1) the caption's words agree with its own
  boxes (the relation it names is the one the boxes make), and (2) its caption from the plain prompt
  (`describe the picture.`) names the same scene. The demonstration's question is then answered and
  kept only if the answer agrees with that label. Two ways of reading the picture and the answer must
  agree, so one lucky misreading is not enough to become a demonstration.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from PIL import Image

from latentlm.data.shapes import Scene, ShapeObject, relation
from latentlm.data.tasks import GROUNDED_CAPTION_PROMPT, Example, ground, ground_prompt, grounded_caption, question
from latentlm.evaluation.scene_parser import check, parse_prompt, size_of
from latentlm.evaluation.understanding import (answer_is_right, box_is_right, caption_is_right, describes,
                                               grounded_caption_is_right, pixel_box)
from latentlm.grounding import parse_grounded
from latentlm.understanding import answer_text

CAPTION, GROUND, DRAW = "grounded_caption", "ground", "t2i"
UNKNOWN_QUESTION = "vqa"  # a question whose kind `question_kind` cannot tell

# Question kinds by their wording in `latentlm.data.tasks` (checked in order: relation before presence).
_KINDS = (
    ("what_is", re.compile(r"^what is (left of|right of|above|below) ")),
    ("relation", re.compile(r"^is the .+ (left of|right of|above|below) the .+")),
    ("count", re.compile(r"^how many ")),
    ("colour", re.compile(r"\b(colou?r)\b")),
    ("size", re.compile(r"(small or large|what size|how big)")),
    ("shape", re.compile(r"\bshape\b.*\?|what shape")),
    ("presence", re.compile(r"^(is there|do you see) an? ")),
)


def question_kind(question: str) -> str | None:
    """The kind of a question as `tasks.QUESTION_KINDS` names it, read from its words; None if unknown."""
    q = " ".join(question.lower().split())
    return next((kind for kind, rule in _KINDS if rule.search(q)), None)


@dataclass(frozen=True)
class Query:
    """What is asked: a task key, the prompt (text after `</image>`, or the caption to draw), the picture."""

    task: str
    prompt: str
    picture: Image.Image | None = None

    @property
    def drawing(self) -> bool:
        return self.task == DRAW


def caption_query(picture: Image.Image) -> Query:
    return Query(CAPTION, GROUNDED_CAPTION_PROMPT, picture)


def question_query(picture: Image.Image, text: str) -> Query:
    kind = question_kind(text)
    return Query(f"vqa:{kind}" if kind else UNKNOWN_QUESTION, text, picture)


def ground_query(picture: Image.Image, phrase: str) -> Query:
    return Query(GROUND, ground_prompt(phrase), picture)


def draw_query(caption: str) -> Query:
    return Query(DRAW, caption)


def task_of_prompt(prompt: str) -> str:
    """The task of a demonstration given by its prompt (few-shot prompting with the user's examples)."""
    if prompt.strip() == GROUNDED_CAPTION_PROMPT:
        return CAPTION
    if prompt.startswith("<grounding><phrase>"):
        return GROUND
    kind = question_kind(prompt)
    return f"vqa:{kind}" if kind else UNKNOWN_QUESTION


def example_for(task: str, scene: Scene, rng: random.Random) -> Example:
    """A solved example of `task` on `scene`: the prompt to ask and its true answer (as trained)."""
    if task == CAPTION:
        return grounded_caption(scene)
    if task == GROUND:
        return ground(scene, rng)
    if task.startswith("vqa:"):
        return question(scene, task.removeprefix("vqa:"), rng)
    raise ValueError(f"no examples of task {task!r}")


def fits(task: str, scene: Scene) -> bool:
    """Whether `scene` can carry an example of `task` as asked: relation questions need two objects (on
    one object `tasks.question` would ask a presence question instead)."""
    return task != "vqa:relation" or len(scene.objects) == 2


def plain_answer(task: str, raw: str) -> str:
    """A completion as a demonstration's answer: questions without the boxes (and the relation stated from
    them) that a boxed answer puts first."""
    return answer_text(raw) if task.startswith("vqa:") else raw.strip()


def agrees(task: str, example: Example, answer: str, scene: Scene) -> bool:
    """Whether the model's `answer` to `example` is right for `scene` (the demonstration's truth)."""
    if task == CAPTION:
        return grounded_caption_is_right(GROUNDED_CAPTION_PROMPT + answer, scene)
    if task == GROUND:
        truth = parse_grounded(example.prompt + example.answer).entities[0].boxes[0]
        return box_is_right(example.prompt + answer, pixel_box(truth))
    return answer_is_right(plain_answer(task, answer), example.answer)


def drawn_scene(caption: str, picture: Image.Image, seed: int = 0) -> tuple[Scene | None, str]:
    """The scene a drawing shows, when it shows what its caption says: (scene, "") or (None, why not).

    The objects are the caption's, in its order, with the sizes and boxes found in the picture."""
    try:
        wanted = parse_prompt(caption)
    except ValueError:
        return None, "the caption is not in the shapes grammar"
    verdict = check(picture, caption)
    if not verdict.ok:
        return None, f"the drawing does not show its caption ({verdict.reason})"
    found = [o.as_shape_object() for o in verdict.objects]
    if len(found) == 1:
        return Scene(seed, tuple(found)), ""
    a, b = wanted.objects
    for x, y in ((found[0], found[1]), (found[1], found[0])):
        if a.matches(x) and b.matches(y) and relation(x, y) == wanted.relation:
            return Scene(seed, (x, y)), ""
    return None, "the drawing does not show its caption"


def read_scene(kosmos: str, seed: int = 0) -> tuple[Scene | None, str]:
    """The scene the model's own grounded caption describes, when its words agree with its boxes:
    (scene, "") or (None, why not). `kosmos` is the completion after the grounded-caption prompt (or a
    whole `<grounding>` string). Sizes not named come from the box (`scene_parser.size_of`)."""
    parsed = parse_grounded(kosmos)
    objects = []
    for e in parsed.entities:
        try:
            (request,) = parse_prompt(e.phrase).objects
        except ValueError:
            return None, f"the caption's phrase {e.phrase!r} is not a shapes-world object"
        if not e.boxes:
            return None, f"the phrase {e.phrase!r} has no box"
        box = tuple(round(v) for v in pixel_box(e.boxes[0]))
        objects.append(ShapeObject(request.shape, request.colour, request.size or size_of(max(box[2] - box[0],
                                                                                           box[3] - box[1])), box))
    if len(objects) not in (1, 2):
        return None, f"the caption names {len(objects)} objects"
    try:
        if not describes(parse_prompt(parsed.text), tuple(objects)):
            return None, "the caption's words disagree with its boxes"
    except ValueError:
        return None, "the caption is not in the shapes grammar"
    return Scene(seed, tuple(objects)), ""


def same_scene(caption: str, scene: Scene) -> bool:
    """Whether a plain caption names `scene` (the second reading of a pool picture)."""
    return caption_is_right(caption, scene)
