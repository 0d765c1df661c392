"""Fuzzing the user-facing surface with hypothesis: CLI arguments, planner requests and Session inputs.

The bar: no traceback, ever. The CLI exits 0 for a valid command and 2 with one `error: ...` line on
stderr for a user error; Python raises only `LatentLMError` subclasses. No model is loaded: `--dry-run`
never loads one, and `LatentLM.from_pretrained` is replaced by a stand-in that raises a
`CheckpointError` naming itself, so a command that gets as far as the model counts as valid.
(The workflow-file validator has its own 450 fuzz cases in tests/test_workflow_files.py.)
"""
from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from latentlm.cli.main import main
from latentlm.errors import CheckpointError, LatentLMError
from latentlm.model import LatentLM
from latentlm.workflows.planner import History, Plan, Ref, plan
from latentlm.workflows.registry import REGISTRY
from latentlm.workflows.session import Session

REACHED_MODEL = "fuzz: the model would load here"
MISSING_MODEL = "/nonexistent/latentlm-fuzz-model"
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                database=None)

WORK = Path(tempfile.mkdtemp(prefix="latentlm-fuzz-"))  # the cwd of CLI runs: relative outputs land here
atexit.register(shutil.rmtree, WORK, True)
SCENE = WORK / "scene.png"
Image.new("RGB", (16, 12), "white").save(SCENE)
NOT_A_PICTURE = WORK / "notes.png"
NOT_A_PICTURE.write_text("not a picture")

# Words people use in requests, to build requests that reach deep into the planner, plus any text.
WORDS = ["draw", "describe", "where", "is", "the", "a", "an", "it", "now", "make", "and", "then", "say", "what",
         "colour", "color", "how", "many", "shapes", "are", "there", "?", "!", ".", ",", ";", "please", "could",
         "you", "me", "picture", "image", "of", "find", "tell", "red", "green", "blue", "yellow", "purple", "orange",
         "circle", "square", "triangle", "small", "large", "big", "bigger", "left", "right", "above", "below",
         "to", "on", "top", "instead", "swap", "them", "remove", "add", "put", "same", "but", "try", "that",
         "read", "out", "loud", "with", "boxes", "count", "one", "two", "how about", "'", '"', "count",
         "I'd", "like", "what's", "where's", "caption", "show", "highlight", "again", "should", "be", "of it"]
phrased = st.lists(st.sampled_from(WORDS), min_size=0, max_size=12).map(" ".join)
colour, shape = st.sampled_from(["red", "green", "blue", "yellow", "purple", "orange", "pink"]), \
    st.sampled_from(["circle", "square", "triangle", "cat"])
thing = st.builds("{} {} {}".format, st.sampled_from(["a", "an", "the", ""]), colour, shape)
scene = st.one_of(thing, st.builds("{} {} {}".format, thing, st.sampled_from(["above", "left of", "and", "next to"]),
                                   thing))
clause = st.one_of(
    st.builds("{} {}".format, st.sampled_from(["draw", "Draw me", "could you draw", "an image of", "", "paint"]),
              scene),
    st.sampled_from(["describe it", "what do you see?", "say that", "say what it is", "make it bigger", "swap them",
                     "describe it with boxes", "count the shapes", "how many shapes are there?", "what is this?"]),
    st.builds("where is {}?".format, thing), st.builds("what colour is {}?".format, thing),
    st.builds("now make it {}".format, colour), st.builds("now a {}".format, shape),
    st.builds("make {} {}".format, thing, colour))
requests = st.one_of(
    phrased, st.text(max_size=40), st.tuples(phrased, st.text(max_size=8)).map("".join), clause,
    st.builds("{}{}{}{}".format, st.sampled_from(["", "please ", "Could you ", "ok, "]), clause,
              st.sampled_from([" and ", ", then ", ". ", " and then "]), clause))
descriptions = st.one_of(st.none(), phrased, st.sampled_from(["a red circle", "a red circle above a blue square",
                                                              "a large green triangle", "a cat"]))


def invoke(argv: list[str]) -> tuple[int, str, str]:
    """Run `latentlm ARGV` in-process with the model stand-in: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()

    def no_model(*args, **kwargs):
        raise CheckpointError(REACHED_MODEL)

    cwd = os.getcwd()
    os.chdir(WORK)
    try:
        with mock.patch.object(LatentLM, "from_pretrained", no_model), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err), mock.patch("sys.stdin", io.StringIO("")):
            try:
                main(argv)
                code = 0
            except SystemExit as e:
                code = e.code
    finally:
        os.chdir(cwd)
    return code, out.getvalue(), err.getvalue()


FILE_LINE = re.compile(r"^.*:\d+:\d+: \S")


def assert_clean(code: int, stdout: str, stderr: str, validate: bool = False) -> None:
    """0 with nothing but warnings on stderr, or 2 with exactly one `error:` line; never a traceback.

    `latentlm workflow validate` is the documented exception: one FILE:LINE:COL line per problem."""
    assert "Traceback" not in stderr + stdout, stderr
    lines = stderr.splitlines()
    if code == 0:
        assert all(ln.startswith("warning: ") for ln in lines), stderr
        return
    assert code == 2, (code, stderr)
    if validate and lines and FILE_LINE.match(lines[0]):
        assert all(FILE_LINE.match(ln) for ln in lines), stderr
        return
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr


# ---- the CLI ---------------------------------------------------------------------------------------------
@settings(FAST, max_examples=500)
@given(request=requests, image=st.sampled_from([None, None, None, str(SCENE), str(NOT_A_PICTURE), "missing.png"]),
       seed=st.one_of(st.none(), st.integers(0, 10**6).map(str), st.integers(-5, 2**64).map(str), st.text(max_size=5)),
       strict=st.booleans())
def test_fuzz_run_request_dry_run(request, image, seed, strict):
    argv = ["run", "--dry-run", "--model", MISSING_MODEL]
    argv += ["--image", image] if image else []
    argv += ["--seed", seed] if seed is not None else []
    argv += ["--strict"] if strict else []
    code, out, err = invoke([*argv, "--", request])
    event(f"exit {code}")
    assert_clean(code, out, err)
    if code == 0:
        shown = json.loads(out)
        for step in shown.get("steps", []):
            assert step.get("workflow", step.get("uses")) in REGISTRY
    else:
        assert REACHED_MODEL not in err  # --dry-run never loads the model


COMMANDS = [["generate"], ["caption"], ["ask"], ["ground"], ["run"], ["chat"], ["workflow", "validate"],
            ["workflows"], []]
OPTIONS = ["--prompt", "--steps", "--cfg", "--temperature", "--seed", "--modality", "--backbone", "-o", "--out",
           "--strict", "--json", "--grounded", "--draw", "--image", "--dry-run", "--set", "--list", "--help", "-h",
           "--version", "--model", "--"]
VALUES = ["a red circle", "draw a cat", "", " ", "0", "-1", "1.5", "nan", "inf", "99999999999999999999", "image",
          "audio", "retnet", "out.png", "x.jpg", "x.tiff", "sub/dir/y.webp", "/sys/x.png", "/proc/x", "out/",
          str(SCENE), str(NOT_A_PICTURE), "missing.png", "draw-and-describe", "flow.yaml", "seed=3", "prompt=",
          "what colour is the circle?", "the blue square", "shapes-tiny", "runs/missing", "owner/name", "\x00", "é"]


@settings(FAST, max_examples=500)
@given(command=st.sampled_from(COMMANDS),
       rest=st.lists(st.one_of(st.sampled_from(OPTIONS), st.sampled_from(VALUES), st.text(max_size=6)), max_size=7))
def test_fuzz_cli_arguments(command, rest):
    with mock.patch("huggingface_hub.snapshot_download", side_effect=CheckpointError(REACHED_MODEL)):
        code, out, err = invoke([*command, *rest])
    event("reached the model" if REACHED_MODEL in err else f"exit {code}")
    assert_clean(code, out, err, validate=command == ["workflow", "validate"])


# ---- the planner and the Session ----------------------------------------------------------------------------
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=8), requests,
                     st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(FAST, max_examples=600)
@given(request=st.one_of(requests, anything), has_image=st.booleans(),
       history=st.builds(History, picture=st.booleans(), prompt=descriptions, text=descriptions))
def test_fuzz_plan(request, has_image, history):
    try:
        p = plan(request, has_image=has_image, history=history)
    except LatentLMError:
        event("refused")
        return
    event(f"planned {len(p.steps)} step(s)")
    assert isinstance(p, Plan) and p.steps
    json.dumps(p.to_dict())
    for i, step in enumerate(p.steps):
        assert step.workflow in REGISTRY
        assert all(not isinstance(v, Ref) or v.step < i for v in step.args.values())


@settings(FAST, max_examples=200)
@given(model=st.one_of(st.sampled_from([MISSING_MODEL, "shapes-tiny"]), anything),
       seed=st.one_of(st.none(), anything), steps=st.one_of(st.integers(-2, 5), anything),
       cfg_scale=st.one_of(st.floats(), anything), temperature=st.one_of(st.floats(), anything),
       strict=st.one_of(st.booleans(), anything))
def test_fuzz_session_constructor(model, seed, steps, cfg_scale, temperature, strict):
    try:
        Session(model, seed=seed, steps=steps, cfg_scale=cfg_scale, temperature=temperature, strict=strict)
        event("constructed")
    except LatentLMError:
        event("refused")


pictures = st.one_of(st.none(), anything, st.sampled_from([str(SCENE), str(NOT_A_PICTURE), "missing.png", ""]),
                     st.builds(lambda shape, dtype: np.zeros(shape, dtype),
                               st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple),
                               st.sampled_from([np.uint8, np.float32, np.int64, np.bool_])),
                     st.just(Image.new("L", (5, 5))))


@settings(FAST, max_examples=300)
@given(request=st.one_of(requests, anything), image=pictures, seed=st.one_of(st.none(), anything),
       method=st.sampled_from(["run", "plan", "draw", "caption", "ask", "ground", "call"]), text=anything,
       workflow=st.one_of(st.sampled_from(sorted(REGISTRY)), st.text(max_size=8)),
       kwargs=st.dictionaries(st.sampled_from(["prompt", "seed", "image", "question", "phrase", "grounded", "x"]),
                              st.one_of(anything, pictures), max_size=3),
       history=st.builds(History, picture=st.booleans(), prompt=descriptions, text=descriptions))
def test_fuzz_session_calls(request, image, seed, method, text, workflow, kwargs, history):
    session = Session(MISSING_MODEL, strict=bool(seed) if isinstance(seed, bool) else False)
    session.memory.picture = Image.new("RGB", (8, 8)) if history.picture else None
    session.memory.prompt, session.memory.text = history.prompt, history.text
    calls = {
        "run": lambda: session.run(request, image=image, seed=seed),
        "plan": lambda: session.plan(request, image=image),
        "draw": lambda: session.draw(text, seed=seed),
        "caption": lambda: session.caption(image, grounded=text),
        "ask": lambda: session.ask(image, text),
        "ground": lambda: session.ground(image, text),
        "call": lambda: session.call(workflow, **kwargs),
    }
    try:
        calls[method]()
        event(f"{method}: returned")
    except LatentLMError as e:
        event(f"{method}: {'reached the model' if 'no such folder' in str(e) else type(e).__name__}")
