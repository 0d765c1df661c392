"""In-context training sequences: demonstrations of the query's task before it (Kosmos-1 interleaving)."""
from __future__ import annotations

import random

import pytest
import torch

from latentlm.config_io import load_yaml_config
from latentlm.data.in_context import ICLConfig, demonstration, task_key
from latentlm.data.shapes import scene_for
from latentlm.sequence import Latent, Text
from latentlm.tokenizer import TextTokenizer
from latentlm.training.lm import LatentLMTask, LMTrainConfig


@pytest.fixture(scope="module")
def task(tmp_path_factory, tiny_tokenizer_path, tiny_codec_dir):
    path = tmp_path_factory.mktemp("icl") / "lm.yaml"
    path.write_text(f"""
tokenizer: {tiny_tokenizer_path}
codec: {tiny_codec_dir}
backbone: {{d_model: 32, n_layers: 1, n_heads: 4}}
head: {{width: 32, depth: 1}}
data: {{n_train: 64, tasks: {{t2i: 0.5, vqa: 0.3, ground: 0.2}}, icl: {{every: 3, demos: [2, 2], batch_divisor: 4}}}}
train: {{steps: 1, batch_size: 16, seed: 0}}
""")
    return LatentLMTask(load_yaml_config(path, LMTrainConfig), path.parent)


def spans(batch, row):
    """Image spans of one row as (length, generated?) pairs."""
    out, run, target = [], 0, False
    for is_lat, tgt in zip(batch.is_latent[row].tolist(), batch.latent_target[row].tolist()):
        if is_lat:
            run, target = run + 1, tgt
        elif run:
            out.append((run, target))
            run = 0
    return out


def test_every_third_step_is_an_in_context_batch_of_fewer_longer_sequences(task):
    plain, icl = task.batch(0, 16), task.batch(2, 16)
    assert plain.ids.shape[0] == 16 and icl.ids.shape[0] == 4
    for row in range(4):
        s = spans(icl, row)
        assert len(s) == 3 and all(n == 64 for n, _ in s)
        assert not s[0][1] and not s[1][1]  # demonstrations are read, never generated
    assert torch.equal(task.batch(2, 16).ids, icl.ids)  # a pure function of the step


def test_a_demonstration_solves_the_same_task_on_another_scene(tiny_tokenizer_path):
    tok = TextTokenizer(tiny_tokenizer_path)
    scene, means = scene_for("train", 3), torch.zeros(64, 8)
    shown = demonstration("t2i", scene, means, tok, random.Random(0))
    assert shown[0].ids == tok.encode(scene.caption) and isinstance(shown[2], Latent) and not shown[2].target
    asked = demonstration("vqa:count", scene, means, tok, random.Random(0))
    assert isinstance(asked[-1], Text) and "how many" in tok.decode(asked[-1].ids)
    assert task_key("vqa", "vqa:colour") == "vqa:colour" and task_key("ground", "ground") == "ground"


def test_icl_config_is_checked():
    with pytest.raises(ValueError, match="demos"):
        ICLConfig(demos=(0, 2))
    with pytest.raises(ValueError, match="shrink_range"):
        ICLConfig(shrink=0.5, shrink_range=(0.9, 0.7))


def test_shrunk_in_context_sequences_share_one_scale_and_keep_the_size_words(task):
    from latentlm.data.rendered import render_scenes
    from latentlm.data.shapes import shrink

    picks = [3, 7, 11]
    scenes, mu = task._pictures(picks, random.Random(0))  # data.icl.shrink is 0: the cached means
    assert scenes == [task.scenes[j] for j in picks] and torch.equal(mu, task.mu[picks])
    task.config.data.icl.shrink, task.config.data.icl.shrink_range = 1.0, (0.5, 0.5)
    try:
        scenes, mu = task._pictures(picks, random.Random(0))
    finally:
        task.config.data.icl.shrink = 0.0
    for small, whole in zip(scenes, (task.scenes[j] for j in picks)):
        for a, b in zip(small.objects, whole.objects):
            assert a.size == b.size and a.box[2] - a.box[0] == round(0.5 * (b.box[2] - b.box[0]))
    assert scenes == [shrink(task.scenes[j], 0.5) for j in picks]
    with torch.no_grad():
        assert torch.allclose(mu, task.codec.encode(render_scenes(scenes)))


def test_enlarged_in_context_pictures_fit_the_canvas_and_keep_their_words(task):
    from latentlm.data.shapes import CANVAS, MARGIN, boxes_apart, rescale

    task.config.data.icl.shrink, task.config.data.icl.shrink_range = 1.0, (1.3, 1.3)
    try:
        scenes, mu = task._pictures([0, 1, 2, 3], random.Random(1))
    finally:
        task.config.data.icl.shrink, task.config.data.icl.shrink_range = 0.0, (0.7, 0.9)
    assert len(scenes) == 4 and mu.shape[0] == 4
    for scene in scenes:
        assert all(MARGIN <= v <= CANVAS - MARGIN for o in scene.objects for v in o.box)
        assert len(scene.objects) == 1 or boxes_apart(scene.objects[0].box, scene.objects[1].box)
        original = next(s for s in task.scenes if s.seed == scene.seed)
        assert scene == rescale(original, 1.3)  # its own scale, its own words
    wide = next(s for s in task.scenes if len(s.objects) == 2 and rescale(s, 1.4) is None)
    assert rescale(wide, 0.8) is not None  # shrinking always fits


def test_boxed_answers_box_the_named_objects_first_and_read_back_plain():
    from latentlm.data.shapes import object_tokens
    from latentlm.data.tasks import Example, boxed_answer
    from latentlm.grounding import parse_grounded

    scene = next(s for s in (scene_for("train", i) for i in range(100)) if len(s.objects) == 2)
    a, b = scene.objects
    example = Example("vqa:relation", f"is the {b.colour} {b.shape} above the {a.colour} {a.shape}?", "no")
    boxed = boxed_answer(scene, example)
    assert boxed == object_tokens(b.box) + object_tokens(a.box) + " no"
    assert parse_grounded(boxed).text == "no"


def question_rows(tmp_path, tokenizer, codec, data: str) -> list[str]:
    """The text of step 0's 32 sequences of a tiny questions-only task with `data` fields added."""
    path = tmp_path / "lm.yaml"
    path.write_text(f"""
tokenizer: {tokenizer}
codec: {codec}
backbone: {{d_model: 32, n_layers: 1, n_heads: 4}}
head: {{width: 32, depth: 1}}
data: {{n_train: 64, tasks: {{vqa: 1.0}}, {data}}}
train: {{steps: 1, batch_size: 32, seed: 0}}
""")
    task = LatentLMTask(load_yaml_config(path, LMTrainConfig), tmp_path)
    tok, batch = task.tokenizer, task.batch(0, 32)
    return [tok.decode([i for i, lat in zip(r.tolist(), m.tolist()) if not lat and i != tok.pad_id])
            for r, m in zip(batch.ids, batch.is_latent)]


def test_training_writes_boxed_answers_for_spatial_questions_only(tmp_path, tiny_tokenizer_path, tiny_codec_dir):
    rows = question_rows(tmp_path, tiny_tokenizer_path, tiny_codec_dir, "boxed_answers: true")
    boxed = [r for r in rows if "<object>" in r]
    assert boxed and all(r.split("</image>")[1].lstrip().startswith(("is ", "what is", "do you see")) for r in boxed)
    assert any("how many" in r for r in rows) and not any("how many" in r for r in boxed)


def test_reasoned_answers_state_the_relation_in_the_questions_order_and_read_back_plain():
    from latentlm.data.shapes import relation
    from latentlm.data.tasks import Example, boxed_answer, final_answer
    from latentlm.grounding import parse_grounded
    from latentlm.understanding import answer_text

    scene = next(s for s in (scene_for("train", i) for i in range(100)) if len(s.objects) == 2)
    a, b = scene.objects
    ref_a, ref_b = f"the {a.colour} {a.shape}", f"the {b.colour} {b.shape}"
    truth = relation(b, a)  # the converse of the caption's order
    asked = Example("vqa:relation", f"is {ref_b} {truth} {ref_a}?", "yes")
    text = parse_grounded(boxed_answer(scene, asked, reasoned=True)).text
    assert text == f"{ref_b} is {truth} {ref_a}, so yes" and final_answer(text) == "yes"
    assert answer_text(boxed_answer(scene, asked, reasoned=True)) == "yes"  # as `ask` and the workflows read it
    what = Example("vqa:what_is", f"what is {relation(a, b)} {ref_b}?", f"a {a.colour} {a.shape}")
    text = parse_grounded(boxed_answer(scene, what, reasoned=True)).text
    assert text == f"{ref_a} is {relation(a, b)} {ref_b}, so a {a.colour} {a.shape}"
    assert final_answer(text) == f"a {a.colour} {a.shape}"
    lone = Example("vqa:relation", f"is there a {a.colour} {a.shape}?", "yes")  # the one-object fallback
    assert parse_grounded(boxed_answer(scene, lone, reasoned=True)).text == "yes"


def test_reasoned_answers_need_boxed_answers():
    from latentlm.training.lm import LMDataConfig

    with pytest.raises(ValueError, match="boxed_answers: true"):
        LMDataConfig(reasoned_answers=True)
    assert LMDataConfig(boxed_answers=True, reasoned_answers=True).reasoned_answers


def test_reasoned_colour_answers_box_the_object_asked_about():
    from latentlm.data.shapes import object_tokens
    from latentlm.data.tasks import Example, boxed_answer

    scene = next(s for s in (scene_for("train", i) for i in range(300))
                 if len(s.objects) == 2 and s.objects[0].shape != s.objects[1].shape)
    a, b = scene.objects
    asked = Example("vqa:colour", f"what colour is the {b.shape}?", b.colour)
    assert boxed_answer(scene, asked, reasoned=True) == f"{object_tokens(b.box)} a {b.colour} {b.shape}, so {b.colour}"


def test_every_reasoned_answer_reads_back_to_the_plain_answer():
    import random

    from latentlm.data.tasks import REASONED_KINDS, boxed_answer, final_answer, question
    from latentlm.grounding import parse_grounded

    for i in range(200):
        scene = scene_for("train", i)
        for kind in REASONED_KINDS:
            example = question(scene, kind, random.Random(i))
            assert final_answer(parse_grounded(boxed_answer(scene, example, reasoned=True)).text) == example.answer


def test_question_weights_draw_the_kinds_they_weigh_and_are_checked():
    import random
    from collections import Counter

    from latentlm.data.tasks import draw_example
    from latentlm.training.lm import LMDataConfig

    scene = scene_for("train", 0)
    rng = random.Random(0)
    kinds = Counter(draw_example(scene, "vqa", rng, {"colour": 6.0, "size": 0.0}).task for _ in range(2000))
    assert kinds["vqa:size"] == 0 and kinds["vqa:colour"] > 2.5 * kinds["vqa:shape"]
    with pytest.raises(ValueError, match="unknown question kind"):
        LMDataConfig(question_weights={"color": 2.0})


def test_reasoned_kinds_choose_which_questions_reason(tmp_path, tiny_tokenizer_path, tiny_codec_dir):
    from latentlm.training.lm import LMDataConfig

    rows = question_rows(tmp_path, tiny_tokenizer_path, tiny_codec_dir, "boxed_answers: true, reasoned_answers: true, "
                         "reasoned_kinds: [relation, what_is], question_weights: {colour: 20.0}")
    colour = [r for r in rows if "colo" in r.split("</image>")[1]]
    assert len(colour) > 20 and not any("<object>" in r for r in colour)  # plain colour answers
    with pytest.raises(ValueError, match="have no reasoned answer"):
        LMDataConfig(reasoned_kinds=("count",))


def test_grounded_colour_answers_ground_the_questions_words():
    from latentlm.data.shapes import object_tokens
    from latentlm.data.tasks import Example, boxed_answer
    from latentlm.grounding import parse_grounded
    from latentlm.understanding import answer_text

    scene = next(s for s in (scene_for("train", i) for i in range(300))
                 if len(s.objects) == 2 and s.objects[0].shape == s.objects[1].shape)
    a, b = scene.objects
    side = "on the left" if a.centre[0] < b.centre[0] else "on the right"
    if abs(a.centre[0] - b.centre[0]) < abs(a.centre[1] - b.centre[1]):
        side = "at the top" if a.centre[1] < b.centre[1] else "at the bottom"
    asked = Example("vqa:colour", f"what colour is the {a.shape} {side}?", a.colour)
    raw = boxed_answer(scene, asked, reasoned=True, colour="grounded")
    assert raw == f"<phrase> the {a.shape} {side}</phrase>{object_tokens(a.box)}, so {a.colour}"
    assert answer_text(raw) == a.colour and parse_grounded(raw).entities[0].phrase == f"the {a.shape} {side}"


def two_shapes_scene():
    """A train scene of two objects of different shapes ("the circle" names one of them alone)."""
    return next(s for s in (scene_for("train", i) for i in range(300))
                if len(s.objects) == 2 and s.objects[0].shape != s.objects[1].shape)


def colour_answer(scene, obj, form: str, word: str = "what colour") -> str:
    """The reasoned answer of form `form` to "<word> is the <obj's shape>?"."""
    from latentlm.data.tasks import Example, boxed_answer

    return boxed_answer(scene, Example("vqa:colour", f"{word} is the {obj.shape}?", obj.colour), reasoned=True,
                        colour=form)


def test_captioned_colour_answers_write_the_grounded_caption_first():
    from latentlm.data.tasks import grounded_caption
    from latentlm.understanding import answer_text

    scene = two_shapes_scene()
    b = scene.objects[1]
    raw = colour_answer(scene, b, "caption")
    assert raw == grounded_caption(scene).answer + ", so " + b.colour and answer_text(raw) == b.colour


def test_stated_colour_answers_name_the_object_asked_about_after_the_caption():
    from latentlm.data.tasks import grounded_caption
    from latentlm.understanding import answer_text

    scene = two_shapes_scene()
    b = scene.objects[1]
    raw = colour_answer(scene, b, "caption_stated", word="which color")
    assert raw == f"{grounded_caption(scene).answer}, the {b.shape} is {b.colour}, so {b.colour}"
    assert answer_text(raw) == b.colour


def test_asked_first_colour_answers_begin_the_caption_from_the_object_asked_about():
    from latentlm.data.shapes import grounding_of
    from latentlm.understanding import answer_text

    scene = two_shapes_scene()
    a, b = scene.objects
    for asked, other in ((a, b), (b, a)):
        raw = colour_answer(scene, asked, "caption_asked_first")
        assert raw == grounding_of((asked, other)).removeprefix("<grounding>") + ", so " + asked.colour
        assert raw.startswith(f"<phrase> a {asked.colour} {asked.shape}</phrase>") and answer_text(raw) == asked.colour


def test_checked_colour_answers_check_the_captions_first_colour_on_the_object_asked_about():
    from latentlm.data.tasks import grounded_caption
    from latentlm.understanding import answer_text

    scene = two_shapes_scene()
    a, b = scene.objects
    caption = grounded_caption(scene).answer
    for asked, verdict in ((a, "yes"), (b, "no")):
        raw = colour_answer(scene, asked, "caption_checked")
        assert raw == f"{caption}, is there a {a.colour} {asked.shape}? {verdict}, so {asked.colour}"
        assert answer_text(raw) == asked.colour


def test_colour_first_keep_moves_colour_questions_to_the_second_object():
    import random

    from latentlm.data.tasks import _asked_object, draw_example

    scene = next(s for s in (scene_for("train", i) for i in range(300)) if len(s.objects) == 2)
    rng = random.Random(0)
    asked = [_asked_object(scene, e)[0] is scene.objects[1] for e in
             (draw_example(scene, "vqa", rng, {"colour": 1000.0}, colour_first_keep=0.5) for _ in range(600))
             if e.task == "vqa:colour"]
    assert len(asked) > 500 and 0.6 < sum(asked) / len(asked) < 0.73  # 2/3 about the second object
