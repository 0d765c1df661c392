"""Workflow YAML files: every validation error with its line and column, all of them at once, the
shipped examples (run on a tiny model, byte for byte equal to Session calls), the manifest, `--set`,
`latentlm run --list`, `latentlm workflows`, `--dry-run`, and a fuzz test of the validator."""
from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from latentlm import __version__
from latentlm.cli.main import cli, main
from latentlm.workflows.workflow_file import (NO_DEFAULT, Ref, Template, WorkflowFileError, check_workflow_file,
                                              example_files, load_workflow_file, parse_workflow)
from latentlm.workflows.workflow_runner import WorkflowRunError, parse_sets, resolve_inputs, typed_value

BASE = """\
name: demo
inputs:
  prompt: {type: string, default: "a red circle"}
  seed: {type: integer, default: 3}
steps:
  - id: draw
    uses: text-to-image
    with: {prompt: "${{ inputs.prompt }}", seed: "${{ inputs.seed }}"}
  - id: look
    uses: caption
    with: {image: "${{ steps.draw.outputs.image }}"}
outputs:
  picture: "${{ steps.draw.outputs.image }}"
  caption: "${{ steps.look.outputs.text }}"
"""

ISSUE_EXAMPLE = """\
name: describe-and-speak
inputs:
  prompt: {type: string, default: "a red circle above a blue square"}
steps:
  - id: draw
    uses: text-to-image
    with: {prompt: "${{ inputs.prompt }}", seed: 3}
  - id: look
    uses: caption
    with: {image: "${{ steps.draw.outputs.image }}"}
outputs:
  picture: "${{ steps.draw.outputs.image }}"
  caption: "${{ steps.look.outputs.text }}"
"""


def variant(replace: dict[int, str] | None = None, insert: dict[int, str] | None = None, text: str = BASE) -> str:
    """BASE with 1-based lines replaced, and lines inserted before 1-based line numbers."""
    lines = text.splitlines()
    for n, line in (replace or {}).items():
        lines[n - 1] = line
    for n, line in sorted((insert or {}).items(), reverse=True):
        lines.insert(n - 1, line)
    return "\n".join(lines) + "\n"


def errors(text: str) -> list[tuple[int, int, str, str]]:
    wf, errs = parse_workflow(text, "f.yaml")
    assert (wf is None) == bool(errs)
    return [(e.line, e.col, e.where, e.what) for e in errs]


def one_error(text: str) -> tuple[int, int, str, str]:
    errs = errors(text)
    assert len(errs) == 1, errs
    return errs[0]


def col(line: str, needle: str) -> int:
    return line.index(needle) + 1


# ---- valid files ---------------------------------------------------------------------------------------
def test_base_and_issue_example_are_valid():
    for text in (BASE, ISSUE_EXAMPLE):
        wf, errs = parse_workflow(text, "f.yaml")
        assert errs == [] and wf is not None
    wf, _ = parse_workflow(ISSUE_EXAMPLE, "f.yaml")
    assert wf.name == "describe-and-speak" and [s.id for s in wf.steps] == ["draw", "look"]
    assert wf.steps[0].arguments == {"prompt": Ref("inputs", "prompt"), "seed": 3}
    assert wf.steps[1].arguments == {"image": Ref("steps", "draw", "image")}
    assert wf.outputs == {"picture": Ref("steps", "draw", "image"), "caption": Ref("steps", "look", "text")}
    assert wf.inputs["prompt"].default == "a red circle above a blue square"


def test_shipped_examples_validate():
    examples = example_files()
    assert len(examples) >= 2
    for stem, path in examples.items():
        wf, errs = check_workflow_file(path)
        assert errs == [], [e.format(str(path)) for e in errs]
        assert wf.name == stem and wf.summary, stem


def test_text_with_references_is_a_template():
    text = variant({8: '    with: {prompt: "a ${{ inputs.prompt }} and ${{inputs.prompt}}", seed: 1}'})
    wf, errs = parse_workflow(text, "f.yaml")
    assert errs == []
    template = wf.steps[0].arguments["prompt"]
    assert isinstance(template, Template)
    assert template.render(lambda r: "X") == "a X and X"


def test_merge_keys_are_not_duplicates():
    text = BASE.replace("  seed: {type: integer, default: 3}",
                        "  seed: &s {type: integer, default: 3}\n  other:\n    <<: *s\n    default: 4")
    wf, errs = parse_workflow(text, "f.yaml")
    assert errs == [] and wf.inputs["other"].default == 4


# ---- each kind of error, with its line and column -------------------------------------------------------
def test_unknown_workflow_with_did_you_mean():
    line, column, where, what = one_error(variant({7: "    uses: text-to-imag"}))
    assert (line, column, where) == (7, 11, "steps.0.uses")
    assert "unknown workflow 'text-to-imag'" in what and "did you mean 'text-to-image'" in what


def test_unknown_keys_at_every_level():
    assert one_error(variant(insert={2: "colour: red"}))[:3] == (2, 1, "colour")
    line, column, where, what = one_error(variant(insert={8: "    usez: x"}))
    assert (line, column, where) == (8, 5, "steps.0.usez") and "unknown key" in what
    line, column, where, what = one_error(variant({4: "  seed: {type: integer, defualt: 3}"}))
    assert (line, column, where) == (4, 25, "inputs.seed.defualt") and "did you mean 'default'" in what


def test_missing_keys_at_every_level():
    # at the mapping that lacks them
    assert one_error(variant({1: "description: no name"}))[:3] == (1, 1, "name")
    text = variant({7: "    name: no uses"})
    assert one_error(text)[:3] == (6, 5, "steps.0.uses")
    assert one_error(variant({4: "  seed: {default: 3}"}))[:3] == (4, 9, "inputs.seed.type")
    text = variant({11: "    with: {grounded: true}"})
    line, column, where, what = one_error(text)
    assert (line, column, where) == (11, 11, "steps.1.with.image") and "required input" in what
    missing_outputs = "\n".join(BASE.splitlines()[:11]) + "\n"
    assert one_error(missing_outputs)[:3] == (1, 1, "outputs")


def test_unknown_workflow_input_with_did_you_mean():
    line8 = '    with: {prompt: "${{ inputs.prompt }}", sed: 3}'
    errs = errors(variant({8: line8}))
    assert errs[0][:3] == (8, col(line8, "sed"), "steps.0.with.sed") and "did you mean 'seed'" in errs[0][3]


def test_wrong_types():
    line8 = '    with: {prompt: "${{ inputs.prompt }}", seed: "x"}'
    line, column, where, what = one_error(variant({8: line8}))
    assert (line, column, where) == (8, col(line8, '"x"'), "steps.0.with.seed") and "valid integer" in what
    line8 = '    with: {prompt: "${{ inputs.prompt }}", seed: -1}'
    assert one_error(variant({8: line8}))[:3] == (8, col(line8, "-1"), "steps.0.with.seed")
    # steps not a list
    text = "name: x\nsteps:\n  draw: {uses: text-to-image}\noutputs:\n  p: '${{ steps.draw.outputs.image }}'\n"
    line, column, where, what = one_error(text)
    assert (line, column, where) == (3, 3, "steps") and "expected a list" in what
    # a default that does not fit its declared type
    line, column, where, what = one_error(variant({4: '  seed: {type: integer, default: "3"}'}))
    assert (line, column, where) == (4, 34, "inputs.seed.default") and "expected an integer" in what
    # a reference whose declared type does not fit: an integer input into a text field
    line8 = '    with: {prompt: "${{ inputs.seed }}", seed: 1}'
    line, column, where, what = one_error(variant({8: line8}))
    assert (line, column, where) == (8, col(line8, "${{"), "steps.0.with.prompt")
    assert "inputs.seed is an integer" in what and "takes text" in what
    # a text output into a picture field
    line11 = '    with: {image: "${{ steps.draw.outputs.image }}x"}'
    line, column, where, what = one_error(variant({11: line11}))
    assert (line, column, where) == (11, col(line11, "${{"), "steps.1.with.image") and "picture" in what
    # a picture literal that is not a path
    assert one_error(variant({11: "    with: {image: 3}"}))[:3] == (11, 19, "steps.1.with.image")


def test_duplicate_step_id():
    line, column, where, what = one_error(variant({9: "  - id: draw", 14: '  caption: "${{ steps.draw.outputs.image }}"'}))
    assert (line, column, where) == (9, 9, "steps.1.id") and "duplicate step id 'draw'" in what


def test_duplicate_yaml_keys():
    line, column, where, what = one_error(variant(insert={2: "name: again"}))
    assert (line, column, where) == (2, 1, "name") and "duplicate key 'name' (first at line 1, column 1)" in what
    line8 = '    with: {prompt: "${{ inputs.prompt }}", seed: 1, seed: 2}'
    line, column, where, what = one_error(variant({8: line8}))
    assert (line, column, where) == (8, line8.rindex("seed") + 1, "steps.0.with.seed") and "duplicate key" in what
    text = variant(insert={4: "  prompt: {type: string}"})
    assert one_error(text)[:3] == (4, 3, "inputs.prompt")


def test_forward_and_unknown_references():
    line8 = '    with: {prompt: "${{ steps.look.outputs.text }}", seed: 1}'
    line, column, where, what = one_error(variant({8: line8}))
    assert (line, column, where) == (8, col(line8, "${{"), "steps.0.with.prompt") and "forward reference" in what
    line11 = '    with: {image: "${{ steps.draw.outputs.nope }}"}'
    line, column, where, what = one_error(variant({11: line11}))
    assert (line, column, where) == (11, col(line11, "${{"), "steps.1.with.image")
    assert "no output 'nope'" in what and "image" in what
    line8 = '    with: {prompt: "a ${{ inputs.nope }}", seed: 1}'
    line, column, where, what = one_error(variant({8: line8}))
    assert (line, column, where) == (8, col(line8, "${{"), "steps.0.with.prompt") and "unknown input 'nope'" in what
    line11 = '    with: {image: "${{ steps.drwa.outputs.image }}"}'
    line, column, where, what = one_error(variant({11: line11}))
    assert (line, column, where) == (11, col(line11, "${{"), "steps.1.with.image") and "did you mean 'draw'" in what
    line11 = '    with: {image: "${{ steps.look.outputs.image }}"}'
    assert "its own outputs" in one_error(variant({11: line11}))[3]
    # outputs may use any step; a bad expression and an unterminated one
    line14 = '  caption: "${{ steps.look.text }}"'
    assert one_error(variant({14: line14}))[:3] == (14, col(line14, "${{"), "outputs.caption")
    line14 = '  caption: "said: ${{ steps.look.outputs.text"'
    line, column, where, what = one_error(variant({14: line14}))
    assert (line, column, where) == (14, col(line14, "${{"), "outputs.caption") and "unterminated" in what
    line14 = '  caption: "${{ steps.draw.outputs.image }} is a picture"'
    assert "pass it as the whole value" in one_error(variant({14: line14}))[3]


def test_broken_yaml_reports_its_line_and_column():
    line, column, where, what = one_error(variant({8: '    with: {prompt: "${{ inputs.prompt }}", seed: 1'}))
    assert (line, column, where) == (9, 7, "yaml") and what.startswith("invalid YAML: expected ',' or '}'")
    assert one_error("name: x\n  bad: indent\n")[:3] == (2, 6, "yaml")
    assert one_error("name: x\tsteps: 1\nfoo: [\n")[:3] == (1, 8, "yaml")  # a tab
    assert one_error("name: x\nfoo: [\n")[:3] == (3, 1, "yaml")  # an unclosed list, at the end
    assert one_error("a: 1\n---\nb: 2\n")[:3] == (2, 1, "yaml")
    assert one_error("name: \x07\n") == (1, 7, "yaml", "invalid YAML: unacceptable character '\\x07' (#x0007): "
                                                   "special characters are not allowed")
    assert one_error("")[:3] == (1, 1, "<top>")
    assert one_error("- a\n- b\n")[:3] == (1, 1, "<top>")


def test_several_errors_are_all_reported_in_order():
    text = """\
name: bad
inputs:
  prompt: {type: string, default: "x"}
  n: {type: integr}
steps:
  - id: draw
    uses: text-to-imag
    with: {prompt: "${{ inputs.prompt }}", seed: 3}
  - id: look
    uses: caption
    with: {image: "${{ steps.later.outputs.image }}", grounded: "maybe"}
  - id: look
    uses: text-to-image
    usez: x
    with: {prompt: "a ${{ inputs.nope }}", seed: "x", sed: 1}
  - id: later
    uses: ask
    with:
      image: "${{ steps.look.outputs.nope }}"
      question: hi
      question: ho
outputs:
  picture: "${{ steps.draw.outputs.image }}"
"""
    lines = text.splitlines()
    assert [(ln, c, w) for ln, c, w, _ in errors(text)] == [
        (4, 13, "inputs.n.type"),
        (7, 11, "steps.0.uses"),
        (11, col(lines[10], "${{"), "steps.1.with.image"),
        (11, col(lines[10], '"maybe"'), "steps.1.with.grounded"),
        (12, 9, "steps.2.id"),
        (14, 5, "steps.2.usez"),
        (15, col(lines[14], "${{"), "steps.2.with.prompt"),
        (15, col(lines[14], '"x"'), "steps.2.with.seed"),
        (15, col(lines[14], "sed:"), "steps.2.with.sed"),
        (19, col(lines[18], "${{"), "steps.3.with.image"),
        (21, 7, "steps.3.with.question"),
    ]
    with pytest.raises(WorkflowFileError) as info:
        path = Path(tempfile.mkdtemp()) / "bad.yaml"
        path.write_text(text)
        load_workflow_file(path)
    assert len(info.value.errors) == 11
    assert str(info.value).splitlines()[0] == f"{path}:4:13: inputs.n.type: " + info.value.errors[0].what


def test_picture_paths_are_checked_relative_to_the_file(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "scene.png")
    text = ("name: pic\ninputs:\n  picture: {type: image, default: scene.png}\nsteps:\n  - id: look\n"
            "    uses: caption\n    with: {image: \"${{ inputs.picture }}\"}\n"
            "  - id: again\n    uses: ask\n    with: {image: other.png, question: \"what?\"}\n"
            "outputs:\n  caption: \"${{ steps.look.outputs.text }}\"\n")
    (tmp_path / "a.yaml").write_text(text)
    _, errs = check_workflow_file(tmp_path / "a.yaml")
    assert [(e.line, e.col, e.where) for e in errs] == [(10, 19, "steps.1.with.image")]
    assert "other.png" in errs[0].what and "does not exist" in errs[0].what
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "other.png")
    wf = load_workflow_file(tmp_path / "a.yaml")
    values, recorded = resolve_inputs(wf, {})
    assert recorded == {"picture": "scene.png"} and values["picture"].getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(WorkflowRunError, match="--set picture: .*missing.png does not exist"):
        resolve_inputs(wf, {"picture": str(tmp_path / "missing.png")})


# ---- --set typing ------------------------------------------------------------------------------------------
def test_set_values_are_typed_by_the_declared_type():
    assert typed_value("integer", "seed", " 42 ") == 42
    assert typed_value("number", "scale", "2.5") == 2.5
    assert typed_value("boolean", "grounded", "Yes") is True and typed_value("boolean", "g", "off") is False
    assert typed_value("string", "prompt", "  spaced ") == "  spaced "
    for kind, bad in [("integer", "x"), ("integer", "3.5"), ("number", "nan"), ("boolean", "maybe")]:
        with pytest.raises(WorkflowRunError, match=f"--set key={bad!r}: input 'key'"):
            typed_value(kind, "key", bad)
    wf = load_workflow_file(example_files()["draw-and-describe"])
    values, _ = resolve_inputs(wf, parse_sets(["seed=5", "prompt=a blue=square"]))
    assert values == {"prompt": "a blue=square", "seed": 5}
    with pytest.raises(WorkflowRunError, match="has no input 'sed'; did you mean 'seed'"):
        resolve_inputs(wf, parse_sets(["sed=5"]))
    with pytest.raises(WorkflowRunError, match="use --set KEY=VALUE"):
        parse_sets(["seed"])
    required = load_workflow_file_text(BASE.replace('{type: string, default: "a red circle"}', "{type: string}"))
    assert required.inputs["prompt"].default is NO_DEFAULT
    with pytest.raises(WorkflowRunError, match="no value for input 'prompt'; give it with --set prompt=VALUE"):
        resolve_inputs(required, {})


def load_workflow_file_text(text: str):
    wf, errs = parse_workflow(text, "f.yaml")
    assert not errs, errs
    return wf


# ---- CLI without a model --------------------------------------------------------------------------------------
def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_cli(tmp_path, capsys):
    good = example_files()["draw-and-describe"]
    code, out, err = run_main(["workflow", "validate", str(good)], capsys)
    assert code == 0 and out.startswith(f"{good}: ok (draw-and-describe; 2 steps") and err == ""
    bad = tmp_path / "bad.yaml"
    bad.write_text(variant({7: "    uses: text-to-imag", 11: '    with: {image: "${{ steps.later.outputs.image }}"}'}))
    code, out, err = run_main(["workflow", "validate", str(good), str(bad)], capsys)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 2 and "Traceback" not in err
    assert lines[0].startswith(f"{bad}:7:11: steps.0.uses: unknown workflow") and lines[1].startswith(f"{bad}:11:")
    code, _, err = run_main(["workflow", "validate", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and err == f"{tmp_path / 'nope.yaml'}:1:1: <file>: no such file; give the path of a " \
                                "workflow YAML file\n"


def test_run_of_a_bad_file_is_one_line_with_every_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(variant({7: "    uses: text-to-imag", 4: '  seed: {type: integer, default: "3"}'}))
    code, out, err = run_main(["run", str(bad), "--model", "no-such-model"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{bad}:4:34: inputs.seed.default" in err and f"{bad}:7:11: steps.0.uses" in err


def test_run_to_an_unwritable_folder_fails_before_any_model_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out, err = run_main(["run", "draw-and-describe", "-o", str(blocker / "out"), "--model", "no-such-model"],
                              capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: cannot write the outputs to ")
    code, _, err = run_main(["run", "draw-and-describe", "-o", str(blocker), "--model", "no-such-model"], capsys)
    assert code == 2 and "cannot write the outputs" in err
    # a good folder gets past that check, to the model
    code, _, err = run_main(["run", "draw-and-describe", "-o", str(tmp_path / "o" / "p"), "--model",
                             "no-such-model"], capsys)
    assert code == 2 and "unknown model 'no-such-model'" in err and not (tmp_path / "o").exists()


def test_run_set_errors_name_the_key(capsys):
    code, _, err = run_main(["run", "draw-and-describe", "--set", "seed=x", "--dry-run"], capsys)
    assert code == 2 and err.strip() == "error: --set seed='x': input 'seed' is an integer; 'x' is not one"
    code, _, err = run_main(["run", "draw-and-describe", "--set", "sed=1", "--dry-run"], capsys)
    assert code == 2 and "did you mean 'seed'" in err


def test_dry_run_of_a_file_prints_its_plan(capsys):
    code, out, _ = run_main(["run", "draw-and-describe", "--set", "seed=9", "--dry-run", "--model", "nope"], capsys)
    plan = json.loads(out)
    assert code == 0 and plan["values"] == {"prompt": "a red circle above a blue square", "seed": 9}
    assert [s["uses"] for s in plan["steps"]] == ["text-to-image", "caption"]


def test_dry_run_of_a_request_prints_the_plan_without_a_model(capsys):
    code, out, err = run_main(["run", "draw a red circle above a blue square", "--dry-run", "--model",
                               "no-such-model"], capsys)
    assert code == 0, err
    assert json.loads(out) == {"steps": [{"workflow": "text-to-image",
                                          "args": {"prompt": "a red circle above a blue square"}}]}
    code, _, err = run_main(["run", "draw a red circle", "--set", "a=b"], capsys)
    assert code == 2 and "--set is for workflow files" in err
    code, _, err = run_main(["run", "draw a red circle", "--model", "no-such-model"], capsys)
    assert code == 2 and "give -o" in err


def test_run_list_shows_the_examples(capsys):
    code, out, _ = run_main(["run", "--list"], capsys)
    assert code == 0
    for stem, path in example_files().items():
        wf = load_workflow_file(path)
        assert re.search(rf"^{re.escape(stem)}\s+{re.escape(wf.summary)}$", out, re.M), out


def test_workflows_lists_signatures_and_descriptions(capsys):
    from latentlm.workflows.registry import REGISTRY

    code, out, _ = run_main(["workflows"], capsys)
    assert code == 0
    for w in REGISTRY.values():
        assert f"{w.signature()} -> " in out and w.description in out
    assert "text-to-image(prompt: str, seed: int = 0) -> image" in out


def test_new_commands_have_help_with_examples(capsys):
    for path in (["run"], ["workflow", "validate"], ["workflows"]):
        code, out, _ = run_main([*path, "--help"], capsys)
        assert code == 0 and "Example:" in out and "latentlm " + " ".join(path) in out


# ---- running the shipped examples on a tiny model ------------------------------------------------------------------
def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Each example: extra `latentlm run` arguments, and its outputs computed with Session calls.
def _describe(s):
    picture = s.draw("a red circle above a blue square", seed=3).image
    return {"picture": png(picture), "caption": s.caption(picture).text}


def _ground(s):
    picture = s.draw("a red circle above a blue square", seed=3).image
    found = s.ground(picture, "the blue square")
    return {"picture": png(picture), "boxed": png(found.image), "found": found.text,
            "boxes": [list(b) for b in found.boxes]}


def _ask(s):
    picture = s.draw("a green triangle left of a red circle", seed=2).image
    answer = s.ask(picture, "what colour is the circle?").text
    return {"picture": png(picture), "answer": answer, "summary": f"Q: what colour is the circle? A: {answer}"}


EXPECTED = {
    "draw-and-describe": ([], _describe),
    "draw-and-ground": ([], _ground),
    "ask-about-a-drawing": (["--set", "seed=2", "--set", "question=what colour is the circle?"], _ask),
}


@pytest.fixture(scope="module")
def example_runs(tiny_model_dir, tmp_path_factory):
    """Every shipped example run through `latentlm run` on the tiny model: name -> (output folder, stdout)."""
    runs = {}
    root = tmp_path_factory.mktemp("runs")
    for name, (extra, _) in EXPECTED.items():
        out = root / name
        result = CliRunner().invoke(cli, ["run", name, "--model", str(tiny_model_dir), "-o", str(out), *extra],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        runs[name] = (out, result.stdout)
    return runs


def test_every_example_has_an_expectation():
    assert set(example_files()) == set(EXPECTED)


def test_examples_match_session_calls_byte_for_byte(example_runs, tiny_model_dir):
    from latentlm.workflows.session import Session

    session = Session(str(tiny_model_dir))
    for name, (_, expect) in EXPECTED.items():
        out, stdout = example_runs[name]
        expected = expect(session)
        manifest = json.loads((out / "manifest.json").read_text())
        assert set(manifest["outputs"]) == set(expected), name
        for key, value in expected.items():
            record = manifest["outputs"][key]
            if isinstance(value, bytes):
                assert record["type"] == "image" and (out / record["file"]).read_bytes() == value, (name, key)
            elif isinstance(value, str):
                assert record["type"] == "text" and record["value"] == value, (name, key)
                assert (out / record["file"]).read_bytes() == value.encode(), (name, key)
            else:
                assert record == {"type": "value", "value": value}, (name, key)
        assert stdout.splitlines()[-1] == str(out / "manifest.json")


def test_manifest_fields_and_hashes(example_runs, tiny_model_dir):
    out, _ = example_runs["draw-and-describe"]
    manifest = json.loads((out / "manifest.json").read_text())
    path = example_files()["draw-and-describe"]
    assert manifest["workflow"] == "draw-and-describe" and manifest["latentlm_version"] == __version__
    assert manifest["file"] == str(path) and manifest["file_sha256"] == sha(path.read_bytes())
    assert manifest["model"] == {"name": str(tiny_model_dir), "checkpoint": str(tiny_model_dir),
                                 "weights_sha256": sha((tiny_model_dir / "model.safetensors").read_bytes())}
    assert manifest["inputs"] == {"prompt": "a red circle above a blue square", "seed": 3}
    assert set(manifest["sampling"]) == {"steps", "cfg_scale", "temperature"}
    steps = manifest["steps"]
    assert [(s["id"], s["workflow"], s["seed"]) for s in steps] == [("draw", "text-to-image", 3), ("look", "caption", None)]
    assert steps[0]["inputs"] == {"prompt": "a red circle above a blue square", "seed": 3}
    assert steps[1]["inputs"] == {"image": "picture.png"}  # pictures by file name
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == {"picture.png", "caption.txt", "manifest.json"}
    assert manifest["files"] == {f: sha((out / f).read_bytes()) for f in files - {"manifest.json"}}
    for record in manifest["outputs"].values():
        assert record["sha256"] == sha((out / record["file"]).read_bytes())
    # the ask example's seed came from --set, typed as an integer
    ask = json.loads((example_runs["ask-about-a-drawing"][0] / "manifest.json").read_text())
    assert ask["inputs"]["seed"] == 2 and ask["steps"][0]["seed"] == 2
    ground = json.loads((example_runs["draw-and-ground"][0] / "manifest.json").read_text())
    assert ground["steps"][1]["inputs"] == {"image": "picture.png", "phrase": "the blue square"}


def test_intermediate_pictures_are_saved_and_named(tiny_model_dir, tmp_path):
    """A picture passed between steps that is not an output still gets a file, for the manifest."""
    text = ISSUE_EXAMPLE.replace('  picture: "${{ steps.draw.outputs.image }}"\n', "")
    (tmp_path / "f.yaml").write_text(text)
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "f.yaml"), "--model", str(tiny_model_dir),
                                      "-o", str(tmp_path / "out")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["steps"][1]["inputs"] == {"image": "steps/draw.image.png"}
    assert manifest["files"]["steps/draw.image.png"] == sha((tmp_path / "out/steps/draw.image.png").read_bytes())


def test_default_output_folder(tmp_path, monkeypatch):
    import datetime as dt

    from latentlm.workflows.workflow_runner import default_output_dir

    now = dt.datetime(2024, 5, 6, 7, 8, 9)
    assert default_output_dir("demo", now, tmp_path) == tmp_path / "demo-20240506-070809"
    (tmp_path / "demo-20240506-070809").mkdir()
    assert default_output_dir("demo", now, tmp_path) == tmp_path / "demo-20240506-070809-2"
    monkeypatch.chdir(tmp_path)
    assert default_output_dir("demo", now).as_posix() == "outputs/demo-20240506-070809"


# ---- fuzzing the validator ---------------------------------------------------------------------------------------
KEYS = ["name", "description", "inputs", "steps", "outputs", "id", "uses", "with", "type", "default", "prompt",
        "seed", "image", "grounded", "question", "phrase", "text", "usez", "nmae", "<<"]
REFS = ["${{ inputs.prompt }}", "${{ steps.draw.outputs.image }}", "${{ steps.look.outputs.text }}",
        "${{ steps.x.outputs.y }}", "${{ }}", "a ${{ inputs.prompt }} b", "${{ inputs.prompt", "${{ steps.draw }}",
        "text-to-image", "caption", "ask", "ground", "text-to-imag", "string", "integer", "image", "draw", "look"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                    st.sampled_from(REFS))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=3),
                      max_leaves=12)
step = st.dictionaries(st.sampled_from(["id", "uses", "with", "name", "usez"]),
                       st.one_of(st.sampled_from(REFS), values), max_size=4)
input_spec = st.dictionaries(st.sampled_from(["type", "default", "description", "dflt"]),
                             st.one_of(st.sampled_from(REFS), scalars), max_size=3)
documents = st.one_of(
    values,
    st.dictionaries(st.sampled_from(["name", "description", "inputs", "steps", "outputs", "bogus"]),
                    st.one_of(values, st.lists(step | values, max_size=3),
                              st.dictionaries(st.sampled_from(["prompt", "seed", "1x"]), input_spec | values,
                                              max_size=3)),
                    max_size=6),
)


def _yaml_texts():
    shaped = documents.map(lambda d: yaml.safe_dump(d, sort_keys=False, allow_unicode=True))
    # duplicate a line of a valid file, or cut and splice it at random places
    lines = BASE.splitlines(keepends=True)
    duplicated = st.integers(0, len(lines) - 1).map(lambda i: "".join(lines[:i + 1] + lines[i:]))
    spliced = st.tuples(st.integers(0, len(BASE)), st.integers(0, len(BASE)), st.text(max_size=6)).map(
        lambda t: BASE[:min(t[:2])] + t[2] + BASE[max(t[:2]):])
    return st.one_of(shaped, duplicated, spliced, st.text(max_size=80))


LINE = re.compile(r"^f\.yaml:\d+:\d+: \S")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_yaml_texts())
def test_fuzz_validation_only_reports_file_errors(text):
    wf, errs = parse_workflow(text, "f.yaml")
    assert (wf is None) == bool(errs)
    for e in errs:
        assert e.line >= 1 and e.col >= 1
        line = e.format("f.yaml")
        assert LINE.match(line) and "\n" not in line, line


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_yaml_texts())
def test_fuzz_validate_cli_exits_2_with_only_file_lines(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            wf = load_workflow_file(path)
        except WorkflowFileError:
            wf = None
        result = CliRunner().invoke(cli, ["workflow", "validate", str(path)])
        if wf is not None:
            assert result.exit_code == 0 and result.stderr == ""
            return
        assert result.exit_code == 2, (result.output, result.exception)
        lines = result.stderr.splitlines()
        assert lines and all(re.match(rf"^{re.escape(str(path))}:\d+:\d+: \S", ln) for ln in lines), lines
        assert result.stdout == ""
