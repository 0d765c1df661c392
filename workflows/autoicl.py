"""Prompting strategies: direct, few-shot with given demonstrations, and Automatic In-Context Learning.

AutoICL (Yang, Ma, Wei, arXiv 2311.09263; the authors' `demo_ins.py`): before answering, the model makes
its own context. Here the demonstrations are multimodal and the model makes them itself:

- **generating** mode (no pool): the model writes N (3) scene captions with its text head
  (`write_caption`; attempt j = 1, 2, ... uses seed `step_seed(seed, j)`), draws each with its own
  text-to-image (same seed), then asks the query's task about each drawing (the same question kind,
  the same caption or grounding task) and answers it. The self-check (`icl_tasks.drawn_scene`,
  `agrees`) keeps a demonstration only when the drawing shows its caption and the answer agrees with
  that caption. A caption outside the shapes grammar or a form never trained (two like objects,
  sizes on two), or with one object for a relation question, is skipped before drawing and another
  is written (at most 3N attempts). For a drawing query the demonstrations are the (caption, drawing)
  pairs whose drawing shows its caption.
- **retrieving** mode (`Session.icl_pool(pictures)`): pool pictures in a seeded order (at most 3N
  looked at); the model labels each itself (`icl_tasks.read_scene`: its grounded caption, checked
  against its own boxes and against its plain-prompt caption), then answers the query's task about it;
  kept when the answer agrees with its own label.

Then the query is answered with the kept demonstrations in context, in the trained format
(`latentlm.in_context_prompting`). When none is kept it is answered directly, and the trace says so.
Demonstrations are cached per (mode, task) within the strategy (so within a Session), as the paper
amortises its plan over a data set; `cache=False` makes them afresh for every query.

`select="similar"` (`workflows.demo_selection`) chooses, for a question about a picture, the given
demonstrations (few-shot: the N of the query's task) or the pool pictures (retrieving: looked at from
the nearest on) whose pictures are nearest the query's, the nearest placed last, right before the
query. Retrieved labels are then cached per (pool picture, task) instead of per task.

Every answer comes with a trace (`Outcome.record`): each demonstration (picture, question, answer,
truth, kept or not and why), the final prompt, the model calls by kind and the seconds added.
"""
from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from latentlm.data.tasks import CAPTION_PROMPTS, GROUNDED_CAPTION_PROMPT
from latentlm.errors import LatentLMError
from latentlm.evaluation.scene_parser import parse_prompt
from latentlm.grounding import parse_grounded
from latentlm.images import load_image
from latentlm.vocabulary import drawing_notes
from latentlm.workflows.demo_selection import SELECTIONS, nearest, picture_features
from latentlm.workflows.icl_model import Counted, ICLModel
from latentlm.workflows.icl_tasks import (CAPTION, DRAW, UNKNOWN_QUESTION, Query, agrees, drawn_scene, example_for,
                                          fits, plain_answer, read_scene, same_scene, task_of_prompt)
from latentlm.workflows.seeds import step_seed

PROMPTINGS = ("direct", "fewshot", "autoicl")
DEFAULT_N = 3
TRIES = 3  # at most TRIES * N captions written (generating) or pool pictures looked at (retrieving)


@dataclass
class Demo:
    """One demonstration, used or not. For reading, `prompt` is the text after `</image>` and `answer`
    follows it; for drawing, `prompt` is the caption and `answer` is empty."""

    picture: Image.Image | None
    prompt: str
    answer: str = ""
    task: str | None = None
    source: str = "given"  # "given", "generated" or "retrieved"
    caption: str | None = None  # generated: the caption it was drawn from; retrieved: the model's label
    truth: str | None = None  # the answer the self-check expected
    kept: bool = True
    reason: str = ""
    seed: int | None = None
    pool_index: int | None = None  # retrieved: which pool picture

    def to_dict(self, picture: str | None) -> dict:
        out = {"picture": picture, "source": self.source, "caption": self.caption, "question": self.prompt,
               "answer": self.answer, "truth": self.truth, "kept": self.kept, "reason": self.reason, "seed": self.seed}
        return out if self.pool_index is None else {**out, "pool_index": self.pool_index}


def demonstration(item: Any) -> Demo:
    """A given demonstration: a `Demo`, `(picture, prompt, answer)` for reading or `(picture, caption)` for
    drawing (a picture: a PIL image, a file path or an array), or a dict with those keys."""
    if isinstance(item, Demo):
        return item
    if isinstance(item, dict):
        item = (item.get("image", item.get("picture")), item.get("prompt", item.get("caption")), *(
            [item["answer"]] if "answer" in item else []))
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3) or not all(isinstance(t, str) for t in item[1:]):
        raise LatentLMError("a demonstration is (picture, prompt, answer) for reading, e.g. ('s.png', "
                            "'what colour is the circle?', 'red'), or (picture, caption) for drawing")
    picture = load_image(item[0])
    if len(item) == 2:
        return Demo(picture, " ".join(item[1].split()), task=DRAW)
    prompt, answer = item[1].strip(), item[2].strip()
    return Demo(picture, prompt, answer, task=task_of_prompt(prompt))


@dataclass
class Outcome:
    """An answer (the completion after the prompt, or the picture drawn) and how it was made."""

    output: str | Image.Image
    query: Query
    prompting: str
    demos: list[Demo] = field(default_factory=list)  # every demonstration looked at, kept or not
    info: dict = field(default_factory=dict)  # mode, cache, fallback, calls, seconds, ...

    @property
    def kept(self) -> list[Demo]:
        return [d for d in self.demos if d.kept]

    def pictures(self, prefix: str) -> dict[str, Image.Image]:
        """The demonstrations' pictures by the file names the record gives them: `{prefix}demo{j}.png`."""
        return {f"{prefix}demo{j}.png": d.picture for j, d in enumerate(self.demos) if d.picture is not None}

    def record(self, prefix: str = "") -> dict:
        """The trace as JSON-able values, pictures by their file names (see `pictures`)."""
        names = [f"{prefix}demo{j}.png" if d.picture is not None else None for j, d in enumerate(self.demos)]
        shown = {id(d): n for d, n in zip(self.demos, names)}
        return {"prompting": self.prompting, "task": self.query.task, **self.info,
                "demonstrations": [d.to_dict(n) for d, n in zip(self.demos, names)],
                "kept": len(self.kept), "dropped": len(self.demos) - len(self.kept),
                "final_prompt": final_prompt(self.query, [(d, shown[id(d)]) for d in self.kept])}


def final_prompt(query: Query, demos: list[tuple[Demo, str | None]]) -> str:
    """The sequence the model answered, as text: pictures as `<image>[file]</image>`."""
    if query.drawing:
        shots = "".join(f"{d.prompt} <image>[{name}]</image> " for d, name in demos)
        return f"<s> {shots}{query.prompt} <image>"
    shots = "".join(f"<image>[{name}]</image> {d.prompt} {d.answer} " for d, name in demos)
    return f"<s> {shots}<image>[query]</image> {query.prompt}"


class Prompting:
    """A prompting strategy and its demonstration cache (one per Session)."""

    def __init__(self, mode: str = "direct", demonstrations: Iterable[Any] | None = None, n: int = DEFAULT_N,
                 cache: bool = True, select: str = "fixed"):
        if mode not in PROMPTINGS:
            raise LatentLMError(f"prompting={mode!r}: use one of {', '.join(PROMPTINGS)}")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 8:
            raise LatentLMError(f"icl_n={n!r}: use an integer from 1 to 8 (the model saw up to 3 demonstrations)")
        if not isinstance(cache, bool):
            raise LatentLMError(f"icl_cache={cache!r}: use True or False")
        if select not in SELECTIONS:
            raise LatentLMError(f"icl_select={select!r}: use one of {', '.join(SELECTIONS)}")
        given = [demonstration(d) for d in demonstrations or ()]
        if mode == "fewshot" and not given:
            raise LatentLMError("prompting='fewshot' needs demonstrations=[(picture, prompt, answer), ...]")
        if given and mode != "fewshot":
            raise LatentLMError(f"demonstrations are for prompting='fewshot', not {mode!r}")
        self.mode, self.given, self.n, self.cache, self.select = mode, given, n, cache, select
        self._given_features = [picture_features(d.picture) if d.picture is not None else None
                                for d in given] if select == "similar" else []
        self.pool: list[Image.Image] = []
        self._pool_features: list = []
        self._cache: dict[tuple[str, str], list[Demo]] = {}
        self._labels: dict[tuple[int, str], Demo] = {}  # select="similar": retrieved demos by (pool index, task)

    def set_pool(self, pictures: Sequence[Image.Image]) -> None:
        """Unlabelled pictures for retrieving mode (empty: generating mode); clears the cache."""
        self.pool = list(pictures)
        self._pool_features = [picture_features(p) for p in self.pool] if self.select == "similar" else []
        self._cache.clear()
        self._labels.clear()

    def answer(self, model: ICLModel, query: Query, seed: int) -> Outcome:
        """Answer `query` with this strategy; deterministic for a seed (given a deterministic model)."""
        counted = Counted(model)
        start = time.perf_counter()
        outcome = Outcome(None, query, self.mode, info={"seed": seed})
        if self.mode == "fewshot":
            outcome.demos = self._given_for(query, outcome.info)
            if not outcome.demos:
                outcome.info["note"] = f"no given demonstration is of this task ({query.task}); answered directly"
        elif self.mode == "autoicl":
            outcome.demos = self._auto(counted, query, seed, outcome.info)
        added = time.perf_counter() - start
        kept = outcome.kept
        if self.mode == "autoicl" and not kept and "note" not in outcome.info:
            outcome.info["fallback"] = "no demonstration survived the self-check: answered directly"
        before = counted.total
        if query.drawing:
            outcome.output = counted.draw(query.prompt, seed, kept)
        else:
            outcome.output = counted.complete(query.picture, query.prompt, kept)
        outcome.info.update(model_calls=dict(counted.calls), calls=counted.total, calls_added=before,
                            seconds_added=round(added, 4),
                            seconds_answer=round(time.perf_counter() - start - added, 4))
        return outcome

    def _near(self, query: Query) -> bool:
        """Whether demonstrations are chosen by the query's picture (a question about a picture)."""
        return self.select == "similar" and query.picture is not None

    def _given_for(self, query: Query, info: dict) -> list[Demo]:
        """The given demonstrations of the query's task: all of them, or the N nearest (nearest last)."""
        index = [i for i, d in enumerate(self.given) if d.task == query.task]
        if not self._near(query):
            return [self.given[i] for i in index]
        info["select"] = "similar"
        order = nearest(query.picture, [self._given_features[i] for i in index], self.n)
        return [self.given[index[j]] for j in reversed(order)]

    def _auto(self, model: Counted, query: Query, seed: int, info: dict) -> list[Demo]:
        mode = "retrieving" if self.pool else "generating"
        info.update(mode=mode, n=self.n)
        if query.task == UNKNOWN_QUESTION:
            info["note"] = "the question's kind is not one the model was trained on: answered directly"
            return []
        if self.pool and self._near(query):
            info["select"] = "similar"
            labels = self._labels if self.cache else {}
            info["labels_cached"] = len(labels)
            order = nearest(query.picture, self._pool_features)
            demos = retrieve(model, query.task, self.n, seed, self.pool, info, order=order, labels=labels)
            return demos[::-1]  # the nearest last, right before the query
        key = (mode, query.task)
        if self.cache and key in self._cache:
            info["cache"] = "hit"
            return self._cache[key]
        info["cache"] = "miss" if self.cache else "off"
        make = retrieve if self.pool else generate
        demos = make(model, query.task, self.n, seed, self.pool, info)
        if self.cache:
            self._cache[key] = demos
        return demos


def generate(model: ICLModel, task: str, n: int, seed: int, pool: Sequence[Image.Image], info: dict) -> list[Demo]:
    """Generating mode: N captions of the model's own, drawn, asked about and answered (see the module doc)."""
    drawn, skipped = [], []
    for j in range(TRIES * n):
        if len(drawn) == n:
            break
        s = step_seed(seed, j + 1)
        caption = model.write_caption(s)
        why = _unusable(task, caption)
        if why:
            skipped.append({"caption": caption, "seed": s, "reason": why})
            continue
        drawn.append((caption, model.draw(caption, s), s))
    info["skipped_captions"] = skipped
    return [_check_drawing(model, task, caption, picture, s) for caption, picture, s in drawn]


def _unusable(task: str, caption: str) -> str:
    """Why a written caption cannot make a demonstration of `task` ("" if it can): outside the shapes
    grammar, a form never trained (`vocabulary.drawing_notes`: two like objects, sizes on two), or one
    object where a relation question needs two."""
    try:
        objects = parse_prompt(caption).objects
    except ValueError:
        return "not a caption of the shapes world"
    notes = drawing_notes(caption)
    if notes:
        return notes[0]
    if task == "vqa:relation" and len(objects) < 2:
        return "one object: a relation question needs two"
    return ""


def _check_drawing(model: ICLModel, task: str, caption: str, picture: Image.Image, s: int) -> Demo:
    """Ask the task about the model's own drawing and keep it when the answer agrees with the caption."""
    scene, why = drawn_scene(caption, picture, s)
    if task == DRAW:
        return Demo(picture, caption, task=task, source="generated", caption=caption, kept=scene is not None,
                    reason=why or "the drawing shows its caption", seed=s)
    if scene is None:
        return Demo(picture, "", task=task, source="generated", caption=caption, kept=False, reason=why, seed=s)
    example = example_for(task, scene, random.Random(s))
    raw = model.complete(picture, example.prompt, [])
    ok = agrees(task, example, raw, scene)
    return Demo(picture, example.prompt, plain_answer(task, raw), task=task, source="generated", caption=caption,
                truth=example.answer, kept=ok, reason="the answer agrees with the caption" if ok else
                "the answer disagrees with the caption", seed=s)


def retrieve(model: ICLModel, task: str, n: int, seed: int, pool: Sequence[Image.Image], info: dict,
             order: Sequence[int] | None = None, labels: dict[tuple[int, str], Demo] | None = None) -> list[Demo]:
    """Retrieving mode: pool pictures, labelled by the model itself, kept when its readings agree.

    Pictures are looked at in a seeded order, or in `order`. With `labels`, a (picture, task) labelled
    once is taken from there (its seed follows the picture, not its place in the order)."""
    if order is None:
        order = list(range(len(pool)))
        random.Random(seed).shuffle(order)
    demos: list[Demo] = []
    for j, index in enumerate(order[:TRIES * n]):
        if sum(d.kept for d in demos) == n:
            break
        if labels is None:
            demo = _label(model, task, pool[index], step_seed(seed, j + 1))
        elif (index, task) in labels:
            demo = labels[(index, task)]
        else:
            demo = labels[(index, task)] = _label(model, task, pool[index], step_seed(seed, index + 1))
        demo.pool_index = index
        demos.append(demo)
    info["pool"] = len(pool)
    return demos


def _label(model: ICLModel, task: str, picture: Image.Image, s: int) -> Demo:
    """One pool picture: the model's grounded caption is its label if its plain caption agrees; then the
    task is asked and kept if the answer agrees with the label."""
    grounded = model.complete(picture, GROUNDED_CAPTION_PROMPT, [])
    scene, why = read_scene(grounded, s)  # the completion alone: its text is the caption (as `caption` reads it)
    label = parse_grounded(grounded).text
    if scene is not None and not same_scene(model.complete(picture, CAPTION_PROMPTS[0], []), scene):
        scene, why = None, "its grounded and plain captions disagree"
    dropped = Demo(picture, "", task=task, source="retrieved", caption=label, kept=False, reason=why, seed=s)
    if scene is None:
        return dropped
    agreed = "its two captions agree"
    if task == DRAW:
        return Demo(picture, label, task=task, source="retrieved", caption=label, reason=agreed, seed=s)
    if task == CAPTION:
        return Demo(picture, GROUNDED_CAPTION_PROMPT, grounded, task=task, source="retrieved", caption=label,
                    reason=agreed, seed=s)
    if not fits(task, scene):
        dropped.reason = "one object: a relation question needs two"
        return dropped
    example = example_for(task, scene, random.Random(s))
    raw = model.complete(picture, example.prompt, [])
    ok = agrees(task, example, raw, scene)
    return Demo(picture, example.prompt, plain_answer(task, raw), task=task, source="retrieved", caption=label,
                truth=example.answer, kept=ok, seed=s, reason=f"{agreed}; the answer " + (
                    "agrees with them" if ok else "disagrees with them"))
