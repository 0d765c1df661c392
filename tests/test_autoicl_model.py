"""In-context prompting on real models: the trained format, the Session, the CLI and workflow files."""
from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from click.testing import CliRunner

from latentlm.cli.main import cli, main
from latentlm.data.in_context import demonstration as trained_demonstration
from latentlm.data.rendered import render_scenes
from latentlm.data.shapes import scene_for
from latentlm.data.tasks import GROUNDED_CAPTION_PROMPT, question
from latentlm.errors import PromptError
from latentlm.generation import generate_images
from latentlm.in_context_prompting import (Shot, complete_in_context, draw_in_context, sample_caption,
                                           shot_segments)
from latentlm.model import LatentLM
from latentlm.sequence import Latent, Text, frame
from latentlm.understanding import complete, read_images
from latentlm.workflows.session import Session
from latentlm.workflows.workflow_file import parse_workflow


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return LatentLM.from_pretrained(str(tiny_model_dir))


def _flat(segments) -> list:
    return [("text", s.ids) if isinstance(s, Text) else ("latent", s.modality, s.target, s.z.shape) for s in segments]


def test_a_shot_is_the_trained_demonstration(model):
    tok, scene = model.tokenizer, scene_for("train", 4)
    means = read_images(model, render_scenes([scene]))[0]  # [N, D]
    asked = question(scene, "count", random.Random(1))
    shot = Shot(render_scenes([scene])[0], asked.prompt, asked.answer)
    trained = trained_demonstration("vqa:count", scene, means, tok, random.Random(1))
    assert _flat(shot_segments(model, shot, means, drawing=False)) == _flat(trained)
    drawn = shot_segments(model, Shot(render_scenes([scene])[0], scene.caption), means, drawing=True)
    assert _flat(drawn) == _flat(trained_demonstration("t2i", scene, means, tok, random.Random(0)))
    assert isinstance(drawn[2], Latent) and not drawn[2].target


def test_without_shots_it_is_the_direct_route(model):
    pixels = render_scenes([scene_for("val", 1), scene_for("val", 2)])
    prompts = ["what colour is the circle?", GROUNDED_CAPTION_PROMPT]
    assert complete_in_context(model, pixels, prompts, [[], []]) == complete(model, pixels, prompts)
    drawn = draw_in_context(model, ["a red circle"], [[]], steps=2, seed=3)[0]
    assert drawn.tobytes() == generate_images(model, ["a red circle"], steps=2, seed=3)[0].tobytes()


def test_shots_change_what_the_model_reads(model):
    pixels = render_scenes([scene_for("val", 1)])
    shots = [Shot(render_scenes([scene_for("train", i)])[0], "how many shapes are there?", "two") for i in range(3)]
    tok = model.tokenizer
    # the context really reaches the model: its next-token distribution after the prompt moves
    from latentlm.in_context_prompting import context
    from latentlm.sequence import collate, frame

    z = read_images(model, pixels)[0]
    tail = [*frame("image", z, tok.token_id, target=False), Text(tok.encode("how many shapes are there?"))]
    rows = [[Text([tok.bos_id]), *tail], [Text([tok.bos_id]), *context(model, shots, drawing=False), *tail]]
    h, _ = model(collate(rows, model.config.latent_width, tok.pad_id))
    plain, shown = model.lm_head(h[:, -1]).softmax(-1)  # [V] each
    assert not torch.allclose(plain, shown)


def test_captions_are_sampled_per_seed_and_hold_no_special_tokens(model):
    a, b = sample_caption(model, 5), sample_caption(model, 5)
    assert a == b and a.strip() and "<" not in a
    assert len({sample_caption(model, s) for s in range(6)}) > 1


def test_session_retrieving_run_traces_n_demonstrations_and_saves_their_pictures(tiny_model_dir, tmp_path):
    pool = [scene_for("train", i).render() for i in range(3)]
    query = scene_for("val", 3).render()

    def run():
        session = Session(str(tiny_model_dir), prompting="autoicl", icl_n=3)
        assert session.icl_pool(pool) == 3
        return session, session.ask(query, "how many shapes are there?", seed=4)

    session, r = run()
    icl = r.steps[0]["icl"]
    assert icl["mode"] == "retrieving" and len(icl["demonstrations"]) == 3 and icl["model_calls"]["complete"] >= 4
    assert {d["pool_index"] for d in icl["demonstrations"]} == {0, 1, 2}
    assert icl["final_prompt"].endswith("<image>[query]</image> how many shapes are there?")
    assert icl["calls_added"] == icl["calls"] - 1 and icl["seconds_added"] >= 0
    manifest = json.loads(r.save(tmp_path).read_text())
    names = [d["picture"] for d in manifest["steps"][0]["icl"]["demonstrations"]]
    assert all((tmp_path / n).is_file() for n in names) and "icl_pictures" not in manifest
    assert r.text == run()[1].text
    again = session.ask(query, "how many objects are there?", seed=4)
    assert again.steps[0]["icl"]["cache"] == "hit"


@pytest.mark.slow
def test_the_shipped_model_runs_autoicl_and_repeats_itself_for_a_seed():
    """A generating AutoICL run on the shipped model: it writes, draws and asks its own demonstrations, its
    trace holds the N it kept (and those it dropped, with why), and the same seed gives the same answer.
    Shipped weights that draw only (`reads: false`) refuse instead, in one line, not with an empty answer."""
    picture = next(s for s in (scene_for("test", i) for i in range(50))
                   if [o.shape for o in s.objects] == ["circle"]).render()
    if LatentLM.from_pretrained("shapes-tiny").config.reads is False:
        with pytest.raises(PromptError, match="trained to draw only; it cannot read pictures"):
            Session("shapes-tiny", prompting="autoicl", icl_n=2, steps=4).ask(picture, "what colour is the circle?")
        return

    def run():
        return Session("shapes-tiny", prompting="autoicl", icl_n=2, steps=8).ask(picture, "what colour is the circle?",
                                                                                 seed=11)

    first, again = run(), run()
    icl = first.steps[0]["icl"]
    assert icl["mode"] == "generating" and icl["kept"] == 2, icl
    assert len([d for d in icl["demonstrations"] if d["kept"]]) == 2
    assert all(d["reason"] for d in icl["demonstrations"] if not d["kept"])
    assert first.text and first.text == again.text and icl["demonstrations"] == again.steps[0]["icl"]["demonstrations"]


def test_session_prompting_is_checked(tiny_model_dir):
    with pytest.raises(Exception, match="use one of direct, fewshot, autoicl"):
        Session(str(tiny_model_dir), prompting="auto")
    session = Session(str(tiny_model_dir), prompting="fewshot",
                      demonstrations=[(scene_for("train", 0).render(), "how many shapes are there?", "one")])
    session.prompting = "autoicl"
    session.prompting = "fewshot"  # the given demonstrations are kept across a switch
    r = session.ask(scene_for("val", 0).render(), "how many objects are there?")
    assert r.steps[0]["icl"]["kept"] == 1 and r.steps[0]["icl"]["prompting"] == "fewshot"
    direct = Session(str(tiny_model_dir)).ask(scene_for("val", 0).render(), "how many objects are there?")
    assert "icl" not in direct.steps[0]  # direct prompting: the old route, no trace


def test_cli_icl_errors_exit_2(tmp_path, capsys):
    picture = tmp_path / "s.png"
    scene_for("val", 0).render().save(picture)
    for args, message in [
        (["ask", str(picture), "what colour is the circle?", "--icl", "bad"], "'bad' is not one of"),
        (["caption", str(picture), "--icl", "fewshot"], "--icl fewshot needs --icl-demos"),
        (["caption", str(picture), "--icl-pool", str(tmp_path)], "--icl-pool is for --icl auto"),
        (["ground", str(picture), "the circle", "--icl", "auto", "--icl-pool", str(tmp_path / "none")], "no such"),
        (["run", "what colour is the circle?", "--image", str(picture), "--icl", "fewshot"], "needs --icl-demos"),
        (["caption", str(picture), "--icl-select", "similar"], "--icl-select is for --icl fewshot or --icl auto"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_cli_reads_with_demonstrations(tiny_model_dir, tmp_path):
    picture = tmp_path / "s.png"
    scene_for("val", 0).render().save(picture)
    scene_for("train", 0).render().save(tmp_path / "d.png")
    (tmp_path / "demos.json").write_text(json.dumps([{"image": "d.png", "prompt": "how many shapes are there?",
                                                      "answer": "one"}]))
    args = ["ask", str(picture), "how many shapes are there?", "--model", str(tiny_model_dir)]
    few = CliRunner().invoke(cli, [*args, "--icl", "fewshot", "--icl-demos", str(tmp_path / "demos.json")])
    assert few.exit_code == 0, few.output
    pool = CliRunner().invoke(cli, ["run", "how many shapes are there?", "--image", str(picture), "--model",
                                    str(tiny_model_dir), "--icl", "auto", "--icl-pool", str(tmp_path), "--json"])
    assert pool.exit_code == 0, pool.output
    icl = json.loads(pool.output.strip().splitlines()[-1])["steps"][0]["icl"]
    assert icl["mode"] == "retrieving" and icl["pool"] == 2  # the folder's pictures (d.png, s.png), not demos.json
    near = CliRunner().invoke(cli, ["run", "how many shapes are there?", "--image", str(picture), "--model",
                                    str(tiny_model_dir), "--icl", "auto", "--icl-pool", str(tmp_path), "--icl-select",
                                    "similar", "--json"])
    assert near.exit_code == 0, near.output
    icl = json.loads(near.output.strip().splitlines()[-1])["steps"][0]["icl"]
    assert icl["select"] == "similar" and icl["demonstrations"][-1]["pool_index"] == 1  # s.png: the query itself


YAML = """name: t
prompting: {value}
steps:
  - id: look
    uses: caption
    with: {{image: "${{{{ inputs.picture }}}}"}}
inputs:
  picture: {{type: image}}
outputs:
  caption: "${{{{ steps.look.outputs.text }}}}"
"""


def test_workflow_file_prompting_is_checked_with_its_line():
    wf, errors = parse_workflow(YAML.format(value="autoicl"), "f.yaml")
    assert not errors and wf.prompting == "autoicl" and wf.to_dict()["prompting"] == "autoicl"
    for bad, message in [("auto", "did you mean 'autoicl'"), ("fewshot", "needs demonstrations"), ("[1]", "text")]:
        _, errors = parse_workflow(YAML.format(value=bad), "f.yaml")
        assert [(e.line, e.where) for e in errors] == [(2, "prompting")] and message in errors[0].what


def test_workflow_file_runs_in_context_and_writes_the_demonstrations(tiny_model_dir, tmp_path):
    from latentlm.workflows.workflow_runner import run_workflow

    picture = tmp_path / "s.png"
    scene_for("val", 0).render().save(picture)
    wf, _ = parse_workflow(YAML.format(value="autoicl"), str(tmp_path / "f.yaml"))
    session = Session(str(tiny_model_dir), steps=2)
    session.icl_pool([scene_for("train", i).render() for i in range(2)])
    outcome = run_workflow(wf, model=str(tiny_model_dir), out=tmp_path / "out", sets={"picture": str(picture)},
                           session=session)
    step = outcome.manifest["steps"][0]
    assert outcome.manifest["prompting"] == "autoicl" and session.prompting == "direct"  # restored
    names = [d["picture"] for d in step["icl"]["demonstrations"]]
    assert names and all(n.startswith("icl/look_") and n in outcome.manifest["files"] for n in names)
    assert all((tmp_path / "out" / n).is_file() for n in names)


def test_an_in_context_answer_ends_where_another_demonstration_would_begin(model):
    from latentlm.text_generation import generate_text

    tok = model.tokenizer
    z = read_images(model, render_scenes([scene_for("val", 1)]))[0]
    prefix = [Text([tok.bos_id]), *frame("image", z, tok.token_id, target=False),
              Text(tok.encode(GROUNDED_CAPTION_PROMPT))]
    model = copy.deepcopy(model)  # one that never ends by itself (the tiny model may end at once)
    never_eos = torch.zeros(model.lm_head.out_features)
    never_eos[tok.eos_id] = -1e4
    model.lm_head = torch.nn.Sequential(model.lm_head, Shift(never_eos))
    free = generate_text(model, [prefix], 8)[0]
    assert len(free) == 8
    assert generate_text(model, [prefix], 8, stop=(free[0],))[0] == []  # the stop id ends the row, unwritten
    assert generate_text(model, [prefix], 8, stop=(free[3],))[0] == free[:free.index(free[3])]


class Shift(torch.nn.Module):
    def __init__(self, by: torch.Tensor) -> None:
        super().__init__()
        self.by = by

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.by


def frame_of(model, z):
    from latentlm.sequence import frame

    return frame("image", z, model.tokenizer.token_id, target=False)
