"""Reading pictures: the task data, the sequence direction, text decoding, Session methods and the CLI.

The model here is a tiny one trained for a few steps on the task mixture: these tests check the
plumbing (shapes, routing, determinism, errors), not the quality (tests/test_quality.py does that).
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from latentlm.data.shapes import object_tokens, relation, scene_for
from latentlm.data.tasks import QUESTION_KINDS, UNDERSTANDING_TASKS, draw_example, ground, question
from latentlm.sequence import Latent, Text, collate

MIXTURE = "{t2i: 0.4, caption: 0.15, grounded_caption: 0.1, ground: 0.15, refer: 0.05, vqa: 0.15}"


@pytest.fixture(scope="module")
def mixture_model_dir(tiny_dir, tiny_tokenizer_path, tiny_codec_dir):
    from latentlm.training.lm import train_lm
    from tests.conftest import write_tiny_lm_config

    config = write_tiny_lm_config(tiny_dir / "mixture.yaml", tiny_tokenizer_path, tiny_codec_dir, steps=12)
    config.write_text(config.read_text().replace("data: {n_train: 128}", f"data: {{n_train: 128, tasks: {MIXTURE}}}"))
    return train_lm(config, tiny_dir / "mixture-run", progress=False)


@pytest.fixture(scope="module")
def model(mixture_model_dir):
    from latentlm.model import LatentLM

    return LatentLM.from_pretrained(mixture_model_dir)


# ---- task data --------------------------------------------------------------------------------

def test_answers_are_true_of_the_scene():
    for i in range(300):
        scene = scene_for("train", i)
        rng = random.Random(i)
        for kind in QUESTION_KINDS:
            ex = question(scene, kind, rng)
            if kind == "count" and ex.prompt.startswith("how many objects"):
                assert ex.answer == ("one", "two")[len(scene.objects) - 1]
            if kind == "what_is":
                asked, ref = ex.prompt.removeprefix("what is ").rstrip("?").split(" the ")
                b = next(o for o in scene.objects if f"{o.colour} {o.shape}" == ref)
                others = [o for o in scene.objects if o is not b]
                truth = relation(others[0], b) if others else None
                assert (ex.answer == "nothing") == (asked.strip() != truth)
            if kind == "presence":
                colour, shape = ex.prompt.split(" a ")[1].split()[:2]
                shape = shape.rstrip("?")
                assert (ex.answer == "yes") == any(o.colour == colour and o.shape == shape for o in scene.objects)
        g = ground(scene, rng)
        assert g.answer in {object_tokens(o.box) for o in scene.objects}


def test_colour_questions_name_a_unique_object():
    """When both objects share a shape, the question picks one out by its side."""
    seen_side = False
    for i in range(400):
        scene = scene_for("train", i)
        if len(scene.objects) == 2 and scene.objects[0].shape == scene.objects[1].shape:
            ex = question(scene, "colour", random.Random(i))
            assert any(w in ex.prompt for w in ("left", "right", "top", "bottom")), ex
            seen_side = True
    assert seen_side


def test_eval_items_ask_about_either_object_of_a_two_object_scene():
    """The items' random stream is not the scene's own: Random(seed) replayed it, and every two-object
    item asked about the second object (the object count and the asked object were the same draw)."""
    from latentlm.data.tasks import _asked_object
    from latentlm.evaluation.understanding import ground_items, scenes, vqa_items

    pairs = [s for s in scenes("val", 280) if len(s.objects) == 2]
    asked = [_asked_object(s, e)[0] is s.objects[1] for s, e in vqa_items(pairs) if e.task == "vqa:colour"]
    grounded = [o is s.objects[1] for s, o, _ in ground_items(pairs)]
    for second in (asked, grounded):
        assert 0.25 < sum(second) / len(second) < 0.75
    assert vqa_items(pairs) == vqa_items(pairs)  # still a pure function of the scenes


def test_every_task_is_drawn_deterministically():
    scene = scene_for("train", 7)
    for task in UNDERSTANDING_TASKS:
        assert draw_example(scene, task, random.Random(3)) == draw_example(scene, task, random.Random(3))
    with pytest.raises(ValueError, match="unknown understanding task"):
        draw_example(scene, "dance", random.Random(0))


def test_read_pictures_carry_no_diffusion_loss(model):
    tok = model.tokenizer
    z = torch.randn(model.config.image_tokens, model.config.latent_dim)
    read = [Text([tok.bos_id, tok.token_id("<image>")]), Latent("image", z, target=False),
            Text([tok.token_id("</image>")] + tok.encode("what colour is the circle? red") + [tok.eos_id])]
    batch = collate([read], model.config.latent_dim, tok.pad_id)
    assert batch.is_latent.sum() == model.config.image_tokens and not batch.latent_target.any()
    _, logs = model.loss(batch)
    assert logs["diffusion"] == 0.0 and logs["text_ce"] > 0
    drawn = [Text([tok.bos_id] + tok.encode("a red circle") + [tok.token_id("<image>")]), Latent("image", z),
             Text([tok.token_id("</image>"), tok.eos_id])]
    _, logs = model.loss(collate([drawn], model.config.latent_dim, tok.pad_id))
    assert logs["diffusion"] > 0


def test_mixture_config_rejects_unknown_tasks(tmp_path):
    from latentlm.errors import ConfigError
    from latentlm.config_io import load_yaml_config
    from latentlm.training.lm import LMTrainConfig

    path = tmp_path / "bad.yaml"
    path.write_text("tokenizer: t\ncodec: c\ndata:\n  tasks: {t2i: 1, dance: 1}\n")
    with pytest.raises(ConfigError, match=r"line 4.*dance"):
        load_yaml_config(path, LMTrainConfig)


# ---- decoding and the Python API ----------------------------------------------------------------

def test_text_decoding_is_deterministic_and_capped(model):
    from latentlm.text_generation import generate_text

    tok = model.tokenizer
    z = torch.randn(model.config.image_tokens, model.config.latent_dim, generator=torch.Generator().manual_seed(0))
    prefix = [Text([tok.bos_id, tok.token_id("<image>")]), Latent("image", z, target=False),
              Text([tok.token_id("</image>")] + tok.encode("describe the picture."))]
    a = generate_text(model, [prefix, prefix[:1]], max_new_tokens=5)
    b = generate_text(model, [prefix, prefix[:1]], max_new_tokens=5)
    assert a == b and all(len(row) <= 5 for row in a)
    assert tok.eos_id not in a[0]
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_text(model, [prefix], max_new_tokens=0)


def test_text_decoding_stops_at_end_of_sequence(model):
    from latentlm.text_generation import generate_text

    tok = model.tokenizer
    with torch.no_grad():
        bias = torch.full((model.config.vocab_size,), -1e4)
        bias[tok.eos_id] = 1e4
        model.lm_head.bias = torch.nn.Parameter(bias)  # the model now always ends at once
    try:
        assert generate_text(model, [[Text([tok.bos_id])]], max_new_tokens=9) == [[]]
    finally:
        model.lm_head.bias = None


def test_session_reads_a_picture_of_another_size(model):
    from latentlm import Session

    picture = scene_for("test", 0).render().resize((128, 96))
    session = Session(model)
    cap = session.caption(picture)
    assert isinstance(cap.text, str) and cap.kosmos is None
    answer = session.ask(np.asarray(picture), "what colour is the circle?")
    assert isinstance(answer.text, str)
    found = session.ground(picture, "the blue square")
    assert found.kosmos.startswith("<grounding><phrase> the blue square</phrase>")
    assert found.image.size == (128, 96)
    for x0, y0, x1, y1 in found.boxes:  # boxes come back in the input's pixels
        assert 0 <= x0 <= x1 <= 128 and 0 <= y0 <= y1 <= 96
    assert session.ground(picture, "the blue square").kosmos == found.kosmos  # greedy: deterministic


def test_grounded_result_maps_boxes_to_input_pixels():
    from latentlm.workflows.ground import grounded_outputs
    from latentlm.workflows.session import to_result

    kosmos = "<grounding><phrase> a red circle</phrase><object><patch_index_0000><patch_index_1023></object>"
    result = to_result(grounded_outputs(kosmos, Image.new("RGB", (200, 100), "white")))
    assert result.text == "a red circle"
    assert result.entities[0].phrase == "a red circle" and result.entities[0].span == (0, 12)
    assert result.boxes == [pytest.approx((3.125, 1.5625, 196.875, 98.4375))]
    assert result["image"].size == (200, 100) and result[0] == "a red circle"


@pytest.mark.parametrize("bad, message", [
    ("missing.png", "does not exist"), (123, "not int"), (np.zeros((4,), np.uint8), "array"),
])
def test_bad_pictures_are_clear_errors(model, tmp_path, bad, message):
    from latentlm import LatentLMError, Session

    with pytest.raises(LatentLMError, match=message):
        Session(model).caption(str(tmp_path / bad) if isinstance(bad, str) else bad)


def test_bad_questions_are_clear_errors(model):
    from latentlm import LatentLMError, Session

    picture = scene_for("test", 0).render()
    with pytest.raises(LatentLMError, match="question: is empty"):
        Session(model).ask(picture, "  ")
    with pytest.raises(LatentLMError, match="phrase: Input should be a valid string"):
        Session(model).ground(picture, None)


@pytest.mark.parametrize("request_, workflow, args", [
    ("where is the blue square?", "ground", {"phrase": "the blue square"}),
    ("Find the red circle", "ground", {"phrase": "the red circle"}),
    ("describe this picture", "caption", {"grounded": False}),
    ("describe the picture with boxes", "caption", {"grounded": True}),
    ("what do you see?", "caption", {"grounded": False}),
    ("what colour is the circle?", "ask", {"question": "what colour is the circle?"}),
    ("how many shapes are there?", "ask", {"question": "how many shapes are there?"}),
])
def test_requests_about_a_picture_are_routed(request_, workflow, args):
    from latentlm.workflows.planner import Given, plan

    step = plan(request_, has_image=True).steps[0]
    assert (step.workflow, step.args) == (workflow, {"image": Given("image"), **args})


def test_a_question_without_a_picture_asks_for_one():
    from latentlm.errors import PromptError
    from latentlm.workflows.planner import plan

    with pytest.raises(PromptError, match="pass one"):
        plan("where is the blue square?")
    with pytest.raises(PromptError, match="must be a string"):
        plan(123)


def test_session_run_routes_to_the_reading_workflows(model):
    from latentlm import Session

    picture = scene_for("test", 1).render()
    result = Session(model).run("where is the red circle?", image=picture)
    assert result.plan.workflow == "ground" and result.steps[0]["workflow"] == "ground"
    assert result.kosmos.startswith("<grounding><phrase> the red circle</phrase>")
    json.dumps(result.to_dict())


# ---- CLI ------------------------------------------------------------------------------------------

def _cli(args):
    from click.testing import CliRunner

    from latentlm.cli.main import cli

    return CliRunner().invoke(cli, args, standalone_mode=True)


def test_cli_reads_pictures(mixture_model_dir, tmp_path):
    picture = tmp_path / "scene.png"
    scene_for("test", 2).render().save(picture)
    out = _cli(["caption", str(picture), "--model", str(mixture_model_dir), "--json"])
    assert out.exit_code == 0, out.output
    assert set(json.loads(out.output)) == {"text", "kosmos", "entities"}
    out = _cli(["ask", str(picture), "how many shapes are there?", "--model", str(mixture_model_dir)])
    assert out.exit_code == 0, out.output
    drawn = tmp_path / "boxes.png"
    out = _cli(["ground", str(picture), "the blue square", "--model", str(mixture_model_dir), "--json",
                "--draw", str(drawn)])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["kosmos"].startswith("<grounding>") and Image.open(drawn).size == (64, 64)


def test_cli_user_errors_exit_2(tmp_path, capsys):
    from latentlm.cli.main import main

    text_file = tmp_path / "notes.png"
    text_file.write_text("not a picture")
    for argv in (["caption", str(tmp_path / "missing.png")], ["caption", str(text_file)],
                 ["ask", str(text_file), "  "], ["ground", str(tmp_path / "missing.png"), "the circle"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


# ---- the workflow registry ----------------------------------------------------------------------

def test_builtin_workflows_are_registered_with_typed_inputs():
    from latentlm.workflows.registry import REGISTRY
    from latentlm.workflows.session import Session  # noqa: F401 - imports the built-in workflows

    assert {"text-to-image", "caption", "ask", "ground"} <= set(REGISTRY)
    assert REGISTRY["ask"].signature() == "ask(image: image, question: str)"


@pytest.mark.parametrize("broken, message", [
    (dict(name="Bad Name"), "kebab-case"),
    (dict(description=""), "one-line description"),
    (dict(Inputs=dict), "Inputs must be a subclass"),
    (dict(run=lambda self, session, text: None), "lacks the input argument 'prompt'"),
    (dict(run=lambda self, session, prompt, extra: None), "argument 'extra' is not one of its Inputs"),
])
def test_registration_names_the_workflow_and_the_argument(broken, message):
    from latentlm.workflows.registry import Fields, Workflow, WorkflowDefinitionError, register

    class Inputs(Fields):
        prompt: str

    attrs = dict(name="my-flow", description="Does a thing.", Inputs=Inputs, Outputs=Inputs,
                 run=lambda self, session, prompt: None) | broken
    with pytest.raises(WorkflowDefinitionError, match=message):
        register(type("MyFlow", (Workflow,), attrs))


def test_unknown_workflow_suggests_the_closest():
    from latentlm.errors import LatentLMError
    from latentlm.workflows.registry import get
    from latentlm.workflows.session import Session  # noqa: F401

    with pytest.raises(LatentLMError, match="did you mean 'caption'"):
        get("captoin")


def test_a_model_records_whether_it_reads_and_a_draw_only_model_says_so(tiny_model_dir, tmp_path):
    """The trainer writes `reads` from its task mixture; a model trained to draw only refuses to read in one
    line instead of returning an empty answer (the shipped stage-2 weights are such a model)."""
    import shutil

    from latentlm.errors import PromptError
    from latentlm.model import LatentLM
    from latentlm.understanding import ask, caption
    from latentlm.understanding import ground as ground_phrases

    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["reads"] is True  # the tiny mixture has reading tasks
    draw_only = tmp_path / "draw-only"
    shutil.copytree(tiny_model_dir, draw_only)
    (draw_only / "config.json").write_text(json.dumps(config | {"reads": False}))
    model = LatentLM.from_pretrained(str(draw_only), verify=False)
    pixels = torch.zeros(1, 3, 64, 64)
    for call in (lambda: caption(model, pixels), lambda: ask(model, pixels, ["what colour is the circle?"]),
                 lambda: ground_phrases(model, pixels, ["the circle"])):
        with pytest.raises(PromptError, match="trained to draw only; it cannot read pictures"):
            call()
