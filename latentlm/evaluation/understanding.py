"""Evaluation of reading pictures: captions, questions, phrase grounding and grounded captions.

Scenes come from a held-out split (`test` for reported figures, `val` for choices), never from
training. Each item is a pure function of (split, index), so every run scores the same items.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

import torch
from tqdm.auto import tqdm

from latentlm.data.rendered import render_scenes
from latentlm.data.shapes import CANVAS, Scene, ShapeObject, relation, scene_for, scene_rng
from latentlm.data.tasks import QUESTION_KINDS, Example, grounding_phrases, question
from latentlm.evaluation.scene_parser import Prompt, parse_prompt
from latentlm.grounding import parse_grounded
from latentlm.model import LatentLM
from latentlm.understanding import ask, caption, ground

IOU_BAR = 0.5


def scenes(split: str, n: int, start: int = 0) -> list[Scene]:
    return [scene_for(split, i) for i in range(start, start + n)]


def _batches(items: list, size: int, desc: str, progress: bool) -> Iterator[list]:
    for start in tqdm(range(0, len(items), size), desc=desc, disable=not progress, leave=False):
        yield items[start:start + size]


def describes(prompt: Prompt, objects: tuple[ShapeObject, ...]) -> bool:
    """Whether a parsed caption names exactly these objects (size where stated) and their relation."""
    if len(prompt.objects) != len(objects):
        return False
    if len(objects) == 1:
        return prompt.objects[0].matches(objects[0])
    a, b = prompt.objects
    return any(a.matches(x) and b.matches(y) and relation(x, y) == prompt.relation
               for x, y in (objects, objects[::-1]))


def caption_is_right(text: str, scene: Scene) -> bool:
    try:
        return describes(parse_prompt(text), scene.objects)
    except ValueError:  # not in the caption grammar
        return False


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def pixel_box(box: tuple[float, ...]) -> tuple[float, ...]:
    """A normalised box on the shapes canvas, in pixels."""
    return tuple(v * CANVAS for v in box)


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


@torch.no_grad()
def eval_caption(model: LatentLM, n: int = 200, split: str = "test", batch_size: int = 50,
                 progress: bool = True, render: Callable = render_scenes, via_boxes: bool = True) -> dict:
    """Share of captions that name every object's colour and shape (size where stated) and the relation.

    `via_boxes`: as `understanding.caption` (the default route, or the plain caption prompt)."""
    items = scenes(split, n)
    ok: dict[str, list[bool]] = defaultdict(list)
    failures = []
    for chunk in _batches(items, batch_size, "eval caption", progress):
        texts = caption(model, render(chunk), via_boxes=via_boxes)
        for scene, text in zip(chunk, texts):
            kind = "single" if len(scene.objects) == 1 else "pair"
            ok[kind].append(caption_is_right(text, scene))
            if not ok[kind][-1]:
                failures.append({"truth": scene.caption, "got": text})
    return {"single": _rate(ok["single"]), "pair": _rate(ok["pair"]), "n_single": len(ok["single"]),
            "n_pair": len(ok["pair"]), "split": split, "failures": failures[:10]}


@torch.no_grad()
def eval_vqa(model: LatentLM, n: int = 420, split: str = "test", batch_size: int = 50, progress: bool = True,
             render: Callable = render_scenes) -> dict:
    """Exact-match accuracy per question kind, kinds taking turns over the scenes."""
    items = vqa_items(scenes(split, n))
    ok: dict[str, list[bool]] = defaultdict(list)
    failures = []
    for chunk in _batches(items, batch_size, "eval vqa", progress):
        answers = ask(model, render([s for s, _ in chunk]), [q.prompt for _, q in chunk])
        for (scene, q), got in zip(chunk, answers):
            ok[q.task].append(answer_is_right(got, q.answer))
            if not ok[q.task][-1]:
                failures.append({"question": q.prompt, "truth": q.answer, "got": got, "scene": scene.caption})
    per_kind = {k.removeprefix("vqa:"): _rate(v) for k, v in sorted(ok.items())}
    return {"accuracy": _rate([f for v in ok.values() for f in v]), "per_kind": per_kind, "min_kind": min(per_kind.values()),
            "n": n, "split": split, "failures": failures[:10]}


@torch.no_grad()
def eval_ground(model: LatentLM, n: int = 200, split: str = "test", batch_size: int = 50, progress: bool = True,
                render: Callable = render_scenes) -> dict:
    """Phrase grounding accuracy at IoU >= 0.5, and grounded captions with every object boxed right."""
    items = ground_items(scenes(split, n))
    phrase_ok, caption_ok, failures = [], [], []
    for chunk in _batches(items, batch_size, "eval ground", progress):
        pixels = render([s for s, _, _ in chunk])
        located = ground(model, pixels, [p for _, _, p in chunk])
        described = caption(model, pixels, grounded=True)
        for (scene, obj, phrase), text, grounded in zip(chunk, located, described):
            phrase_ok.append(box_is_right(text, obj.box))
            caption_ok.append(grounded_caption_is_right(grounded, scene))
            if not phrase_ok[-1]:
                failures.append({"phrase": phrase, "truth": list(obj.box), "got": text})
    return {"phrase_grounding": _rate(phrase_ok), "grounded_caption": _rate(caption_ok), "n": n,
            "iou_bar": IOU_BAR, "split": split, "failures": failures[:10]}


def vqa_items(items: list[Scene]) -> list[tuple[Scene, Example]]:
    """The question set: scene i with a question of kind i mod 7 (the kinds take turns)."""
    return [(s, question(s, QUESTION_KINDS[i % len(QUESTION_KINDS)], scene_rng(s.seed, "question")))
            for i, s in enumerate(items)]


def ground_items(items: list[Scene]) -> list[tuple[Scene, ShapeObject, str]]:
    """The phrase-grounding set: (scene, the object to find, a phrase naming it alone)."""
    out = []
    for s in items:
        rng = scene_rng(s.seed, "ground")
        obj = rng.choice(s.objects)
        out.append((s, obj, rng.choice(grounding_phrases(s, obj))))
    return out


def answer_is_right(got: str, truth: str) -> bool:
    """Exact match, case, surrounding space and a final full stop aside."""
    return got.strip().rstrip(".").lower() == truth


def box_is_right(kosmos: str, box: tuple[float, ...]) -> bool:
    """Whether the first box of a Kosmos-2 string overlaps `box` (pixels of the canvas) at IoU >= 0.5."""
    boxes = [pixel_box(b) for e in parse_grounded(kosmos).entities for b in e.boxes]
    return bool(boxes) and iou(boxes[0], box) >= IOU_BAR


def grounded_caption_is_right(kosmos: str, scene: Scene) -> bool:
    """Every object named by a phrase (colour and shape; size where stated) whose box has IoU >= 0.5."""
    entities = parse_grounded(kosmos).entities
    if len(entities) != len(scene.objects):
        return False
    for obj in scene.objects:
        if not any(_names(e.phrase, obj) and e.boxes and iou(pixel_box(e.boxes[0]), obj.box) >= IOU_BAR
                   for e in entities):
            return False
    return True


def _names(phrase: str, obj: ShapeObject) -> bool:
    try:
        parsed = parse_prompt(phrase)
    except ValueError:
        return False
    return len(parsed.objects) == 1 and parsed.objects[0].matches(obj)
