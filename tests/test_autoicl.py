"""AutoICL and the other prompting strategies, against a scripted stand-in model (no network, no weights).

The stand-in draws a caption as a real shapes-world picture (so the self-check's scene parser reads it),
answers from a script, and logs every call, so the tests see the order, the number and the prompts of
the calls a strategy makes."""
from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from latentlm.data.shapes import ShapeObject, object_tokens, render, scene_for
from latentlm.data.tasks import CAPTION_PROMPTS, GROUNDED_CAPTION_PROMPT, QUESTION_KINDS, question
from latentlm.errors import LatentLMError
from latentlm.evaluation.scene_parser import parse_prompt
from latentlm.workflows.autoicl import Demo, Prompting, demonstration
from latentlm.workflows.icl_tasks import (CAPTION, GROUND, caption_query, draw_query, ground_query, question_kind,
                                          question_query, read_scene)
from latentlm.workflows.seeds import step_seed

SIDE = {"small": 14, "large": 24, None: 16}
PLACES = {"left of": ((6, 24), (42, 24)), "right of": ((42, 24), (6, 24)),
          "above": ((24, 6), (24, 42)), "below": ((24, 42), (24, 6))}


def objects_of(caption: str) -> tuple[ShapeObject, ...]:
    """A caption's objects at fixed places (one in the middle; two as its relation says)."""
    wanted = parse_prompt(caption)
    if len(wanted.objects) == 1:
        (o,) = wanted.objects
        side = SIDE[o.size]
        return (ShapeObject(o.shape, o.colour, o.size or "small", (20, 20, 20 + side, 20 + side)),)
    return tuple(ShapeObject(o.shape, o.colour, "small", (x, y, x + 16, y + 16))
                 for o, (x, y) in zip(wanted.objects, PLACES[wanted.relation]))


class Scripted:
    """An `ICLModel` stand-in. `captions(seed)` is what it writes; it draws a caption truthfully (or a blank
    canvas for those in `blank`); it reads its own pictures truthfully for captions and grounding, and
    answers questions from `answers` (by the caption drawn, or "query" for any other picture)."""

    def __init__(self, captions, answers=None, blank=(), wrong_plain=()):
        self.captions = captions if callable(captions) else (lambda seed, c=list(captions): c.pop(0))
        self.answers = answers or {}
        self.blank, self.wrong_plain = set(blank), set(wrong_plain)
        self.drawn: dict[int, tuple[str, tuple[ShapeObject, ...]]] = {}
        self.log: list[tuple] = []

    def picture(self, caption: str) -> Image.Image:
        objects = objects_of(caption)
        image = render(()) if caption in self.blank else render(objects)
        self.drawn[id(image)] = (caption, objects)
        return image

    def write_caption(self, seed: int) -> str:
        self.log.append(("write_caption", seed))
        return self.captions(seed)

    def draw(self, caption: str, seed: int, demos=()) -> Image.Image:
        self.log.append(("draw", caption, seed, len(demos)))
        return self.picture(caption)

    def complete(self, picture: Image.Image, prompt: str, demos=()) -> str:
        self.log.append(("complete", prompt, len(demos)))
        caption, objects = self.drawn.get(id(picture), ("query", ()))
        if prompt == GROUNDED_CAPTION_PROMPT and objects:
            from latentlm.data.shapes import grounding_of
            return grounding_of(objects).removeprefix("<grounding>")
        if prompt == CAPTION_PROMPTS[0] and objects:
            return "a yellow square" if caption in self.wrong_plain else caption
        if prompt.startswith("<grounding><phrase>") and objects:
            return object_tokens(objects[0].box)
        return self.answers.get(caption, "no idea")

    def calls(self) -> list[str]:
        return [entry[0][0].upper() for entry in self.log]  # W(rite), D(raw), C(omplete)


QUERY_PICTURE = render(scene_for("val", 0).objects)
COLOURS = ["a large red circle", "a small blue circle", "a large green circle"]


def colour_query():
    return question_query(QUERY_PICTURE, "what colour is the circle?")


def test_direct_is_one_call_with_the_query_alone():
    model = Scripted([])
    out = Prompting("direct").answer(model, colour_query(), seed=0)
    assert model.log == [("complete", "what colour is the circle?", 0)]
    assert out.demos == [] and out.info["calls"] == 1 and out.info["calls_added"] == 0


def test_generating_writes_draws_asks_then_answers_with_the_kept_demonstrations():
    model = Scripted(COLOURS, {"a large red circle": "red", "a small blue circle": "blue",
                               "a large green circle": "green", "query": "yellow"})
    out = Prompting("autoicl").answer(model, colour_query(), seed=7)
    assert model.calls() == list("WDWDWDCCCC")
    seeds = [step_seed(7, j) for j in (1, 2, 3)]
    assert [e[1] for e in model.log if e[0] == "write_caption"] == seeds
    assert [(e[1], e[2]) for e in model.log if e[0] == "draw"] == list(zip(COLOURS, seeds))
    asked = [e for e in model.log if e[0] == "complete"]
    assert all(question_kind(e[1]) == "colour" and e[2] == 0 for e in asked[:3])  # the query's kind, no context
    assert asked[3] == ("complete", "what colour is the circle?", 3)  # the query itself, 3 in context
    assert out.output == "yellow" and [d.answer for d in out.kept] == ["red", "blue", "green"]
    assert out.info["model_calls"] == {"write_caption": 3, "draw": 3, "complete": 4}
    assert out.info["calls"] == 10 and out.info["calls_added"] == 9 and out.info["mode"] == "generating"


def test_the_self_check_keeps_only_answers_that_agree_with_the_caption():
    model = Scripted(COLOURS, {"a large red circle": "red", "a small blue circle": "purple",
                               "a large green circle": "green"})
    out = Prompting("autoicl").answer(model, colour_query(), seed=0)
    record = out.record()
    assert (record["kept"], record["dropped"]) == (2, 1)
    dropped = [d for d in record["demonstrations"] if not d["kept"]]
    assert dropped[0]["answer"] == "purple" and dropped[0]["truth"] == "blue"
    assert "disagrees" in dropped[0]["reason"]
    assert model.log[-1] == ("complete", "what colour is the circle?", 2)


def test_a_drawing_that_does_not_show_its_caption_is_dropped_unasked():
    model = Scripted(COLOURS, {c: c.split()[2] for c in COLOURS}, blank={"a small blue circle"})
    out = Prompting("autoicl").answer(model, colour_query(), seed=0)
    assert model.calls() == list("WDWDWDCCC")  # two questions, then the query
    bad = out.demos[1]
    assert not bad.kept and "does not show its caption" in bad.reason and bad.prompt == ""


def test_captions_that_cannot_make_the_demonstration_are_skipped_and_rewritten():
    captions = ["a cat on a mat", "a large red circle", "a red circle left of a blue square",
                "a green square above a red triangle", "a purple triangle right of an orange circle"]
    model = Scripted(captions, {})
    out = Prompting("autoicl").answer(model, question_query(QUERY_PICTURE, "is the red circle above the blue square?"),
                                      seed=0)
    skipped = out.info["skipped_captions"]
    assert [s["caption"] for s in skipped] == captions[:2]
    assert "shapes world" in skipped[0]["reason"] and "two" in skipped[1]["reason"]
    assert [d.caption for d in out.demos] == captions[2:]
    assert all(question_kind(d.prompt) == "relation" for d in out.demos)


def test_nothing_kept_falls_back_to_direct_and_says_so():
    model = Scripted(COLOURS, {"query": "red"})  # every demonstration answered "no idea"
    out = Prompting("autoicl").answer(model, colour_query(), seed=0)
    assert out.kept == [] and model.log[-1] == ("complete", "what colour is the circle?", 0)
    assert "answered directly" in out.info["fallback"] and out.record()["dropped"] == 3
    assert out.record()["final_prompt"] == "<s> <image>[query]</image> what colour is the circle?"


def test_demonstrations_are_cached_per_task_kind():
    answers = {c: c.split()[2] for c in COLOURS}
    model = Scripted(lambda seed: COLOURS[seed % 3], answers)
    strategy = Prompting("autoicl")
    first = strategy.answer(model, colour_query(), seed=0)
    n = len(model.log)
    second = strategy.answer(model, question_query(QUERY_PICTURE, "which color is the circle?"), seed=5)
    assert model.log[n:] == [("complete", "which color is the circle?", 3)]  # the cached three, no new work
    assert (first.info["cache"], second.info["cache"]) == ("miss", "hit") and second.info["calls_added"] == 0
    strategy.answer(model, question_query(QUERY_PICTURE, "how many objects are there?"), seed=0)
    assert len(model.log) > n + 1 + 1  # another kind: made afresh
    uncached = Prompting("autoicl", cache=False)
    for _ in range(2):
        assert uncached.answer(model, colour_query(), seed=0).info["cache"] == "off"


def _without_seconds(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("seconds")}


def test_the_same_seed_gives_the_same_run_and_another_seed_other_demonstrations():
    pool = ["a large red circle", "a small blue square", "a green triangle above a red square",
            "a large purple circle", "a small orange triangle", "a blue circle left of a yellow square"]

    def run(seed):
        model = Scripted(lambda s: pool[s % len(pool)], {c: "red" for c in pool})
        out = Prompting("autoicl").answer(model, colour_query(), seed=seed)
        return model.log, _without_seconds(out.record())

    assert run(3) == run(3)
    assert run(3)[0] != run(4)[0]
    assert json.loads(json.dumps(run(3)[1])) == run(3)[1]  # the trace is JSON


def test_caption_and_grounding_demonstrations_ask_the_same_task():
    model = Scripted(COLOURS)
    out = Prompting("autoicl").answer(model, caption_query(QUERY_PICTURE), seed=0)
    asked = [e for e in model.log if e[0] == "complete"]
    assert [e[1] for e in asked] == [GROUNDED_CAPTION_PROMPT] * 4 and len(out.kept) == 3
    assert out.kept[0].answer.startswith("<phrase> a large red circle</phrase><object>")
    model = Scripted(COLOURS)
    out = Prompting("autoicl").answer(model, ground_query(QUERY_PICTURE, "the red square"), seed=0)
    asked = [e[1] for e in model.log if e[0] == "complete"]
    assert all(p.startswith("<grounding><phrase> ") and p.endswith("</phrase>") for p in asked)
    assert asked[-1] == "<grounding><phrase> the red square</phrase>" and len(out.kept) == 3
    assert out.query.task == GROUND and caption_query(QUERY_PICTURE).task == CAPTION


def test_a_drawing_query_draws_with_caption_picture_demonstrations():
    model = Scripted(COLOURS, blank={"a large green circle"})
    out = Prompting("autoicl").answer(model, draw_query("a blue square"), seed=2)
    assert model.calls() == list("WDWDWDD")
    assert model.log[-1] == ("draw", "a blue square", 2, 2)  # the query's own seed, two kept
    assert isinstance(out.output, Image.Image)
    assert out.record()["final_prompt"] == ("<s> a large red circle <image>[demo0.png]</image> "
                                            "a small blue circle <image>[demo1.png]</image> a blue square <image>")


def test_retrieving_labels_pool_pictures_itself_and_checks_them():
    model = Scripted([], {"a large red circle": "red", "a small blue circle": "blue", "a large green circle": "pink"},
                     wrong_plain={"a small blue circle"})
    pool = [model.picture(c) for c in COLOURS]
    strategy = Prompting("autoicl", n=2)
    strategy.set_pool(pool)
    out = strategy.answer(model, colour_query(), seed=0)
    assert out.info["mode"] == "retrieving" and "write_caption" not in out.info["model_calls"]
    by_caption = {d.caption: d for d in out.demos}
    assert not by_caption["a small blue circle"].kept
    assert "disagree" in by_caption["a small blue circle"].reason  # its two captions
    assert not by_caption["a large green circle"].kept and by_caption["a large green circle"].truth == "green"
    assert by_caption["a large red circle"].kept and [d.pool_index for d in out.demos] != []
    prompts = [e[1] for e in model.log if e[0] == "complete"]
    assert prompts[:2] == [GROUNDED_CAPTION_PROMPT, CAPTION_PROMPTS[0]]  # label it twice, then ask
    assert model.log[-1] == ("complete", "what colour is the circle?", 1)


def test_read_scene_needs_the_words_to_agree_with_the_boxes():
    scene = next(s for s in (scene_for("train", i) for i in range(50)) if len(s.objects) == 2)
    assert read_scene(scene.grounding)[0].caption == scene.caption
    word = _relation_word(scene)
    liar = scene.grounding.replace(f" {word}<phrase>", f" {_opposite(word)}<phrase>")
    assert liar != scene.grounding
    read, why = read_scene(liar)
    assert read is None and "disagree" in why
    assert read_scene("<grounding><phrase> a cat</phrase><object><patch_index_0000><patch_index_0100></object>")[0] \
        is None


def _relation_word(scene) -> str:
    return next(r for r in ("left of", "right of", "above", "below") if f" {r} " in scene.caption)


def _opposite(relation: str) -> str:
    return {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[relation]


def test_fewshot_uses_the_given_demonstrations_of_the_query_task():
    given = [(QUERY_PICTURE, "what colour is the square?", "red"), {"image": QUERY_PICTURE, "prompt":
             "how many shapes are there?", "answer": "two"}, (QUERY_PICTURE, "a red circle")]
    strategy = Prompting("fewshot", given)
    model = Scripted([])
    out = strategy.answer(model, colour_query(), seed=0)
    assert model.log == [("complete", "what colour is the circle?", 1)] and out.kept[0].answer == "red"
    out = strategy.answer(model, draw_query("a blue square"), seed=0)
    assert model.log[-1] == ("draw", "a blue square", 0, 1)
    out = strategy.answer(model, ground_query(QUERY_PICTURE, "the circle"), seed=0)
    assert model.log[-1][2] == 0 and "no given demonstration" in out.info["note"]


def test_similar_fewshot_takes_the_n_nearest_given_demonstrations_nearest_last():
    from latentlm.workflows.demo_selection import nearest, picture_features

    pictures = [render(scene_for("train", i).objects) for i in range(12)] + [QUERY_PICTURE.copy()]
    given = [(p, "what colour is the circle?", f"answer {i}") for i, p in enumerate(pictures)]
    order = nearest(QUERY_PICTURE, [picture_features(p) for p in pictures])
    assert order[0] == 12 and sorted(order) == list(range(13))  # its own copy first; every index once
    model = Scripted([])
    out = Prompting("fewshot", given, n=3, select="similar").answer(model, colour_query(), seed=0)
    assert [d.answer for d in out.kept] == [f"answer {i}" for i in reversed(order[:3])]
    assert model.log == [("complete", "what colour is the circle?", 3)] and out.info["select"] == "similar"
    fixed = Prompting("fewshot", given, n=3).answer(Scripted([]), colour_query(), seed=0)
    assert len(fixed.kept) == 13  # a fixed prompt: every given demonstration of the task


def test_similar_retrieving_looks_at_the_nearest_pool_pictures_and_labels_each_once():
    model = Scripted([], {c: c.split()[2] for c in COLOURS})
    pool = [model.picture(c) for c in COLOURS]
    strategy = Prompting("autoicl", n=1, select="similar")
    strategy.set_pool(pool)
    query = question_query(pool[2].copy(), "what colour is the circle?")  # a copy: nearest is pool[2]
    out = strategy.answer(model, query, seed=0)
    assert [d.pool_index for d in out.kept] == [2] and out.info["select"] == "similar"
    labelled = len(model.log)
    again = strategy.answer(model, query, seed=0)
    assert [d.pool_index for d in again.kept] == [2]
    assert len(model.log) == labelled + 1  # the label is cached per (picture, task): only the answer is new


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "auto"}, "use one of direct, fewshot, autoicl"),
    ({"mode": "fewshot"}, "needs demonstrations"),
    ({"mode": "direct", "demonstrations": [(QUERY_PICTURE, "a red circle")]}, "are for prompting='fewshot'"),
    ({"mode": "autoicl", "n": 0}, "icl_n=0"),
    ({"mode": "autoicl", "select": "nearest"}, "icl_select='nearest': use one of fixed, similar"),
    ({"mode": "fewshot", "demonstrations": [(QUERY_PICTURE,)]}, "a demonstration is"),
    ({"mode": "fewshot", "demonstrations": [("missing.png", "a red circle")]}, "does not exist"),
])
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(LatentLMError, match=message):
        Prompting(**kwargs)


def test_every_trained_question_is_read_as_its_kind():
    rng = random.Random(0)
    for i in range(300):
        scene = scene_for("train", i)
        for kind in QUESTION_KINDS:
            q = question(scene, kind, rng)
            want = "presence" if kind == "relation" and len(scene.objects) == 1 else kind
            assert question_kind(q.prompt) == want, q.prompt
    assert question_kind("what is the meaning of life?") is None


def test_a_demo_given_as_a_demo_is_kept_as_is():
    demo = Demo(QUERY_PICTURE, "what shape is the red object?", "circle")
    assert demonstration(demo) is demo


# ---- the benchmark's shifted pictures ------------------------------------------------------------------------
def test_shifted_pictures():
    import numpy as np

    from latentlm.evaluation.scene_parser import parse_scene
    from latentlm.evaluation.shifts import SHIFTS, smaller

    scene = scene_for("val", 6)
    small = smaller(scene)
    for a, b in zip(scene.objects, small.objects):
        side, new = a.box[2] - a.box[0], b.box[2] - b.box[0]
        assert new == round(0.8 * side) and abs(sum(a.centre) - sum(b.centre)) <= 1
    assert [o.box for o in parse_scene(SHIFTS["smaller"].draw(small))] == sorted(
        (o.box for o in small.objects), key=lambda b: (b[1], b[0]))
    base = np.asarray(scene.render(), dtype=int)
    moved = np.asarray(SHIFTS["colour"].draw(scene), dtype=int) - base
    inside = (base >= 15) & (base <= 240)
    assert set(np.unique(np.abs(moved[inside]))) == {15}  # +-15 wherever nothing clips
    assert SHIFTS["colour"].draw(scene).tobytes() == SHIFTS["colour"].draw(scene).tobytes()
    jpeg = np.asarray(SHIFTS["jpeg30"].draw(scene), dtype=int)
    assert jpeg.shape == base.shape and 0 < np.abs(jpeg - base).mean() < 20
    assert SHIFTS["plain"].render([scene]).shape == (1, 3, 64, 64)
