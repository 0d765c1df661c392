"""The rule planner and multi-step Session runs: the held-out routing set, references between steps,
follow-ups from the Session's memory, per-step seeds, step records, and prompts outside what the model
knows (warnings, strict)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from latentlm.errors import LatentLMError, PromptError
from latentlm.vocabulary import drawing_notes, phrase_notes, question_notes, reading_words
from latentlm.workflows import registry
from latentlm.workflows.ask import TextOutputs
from latentlm.workflows.descriptions import edit
from latentlm.workflows.ground import GroundedOutputs
from latentlm.workflows.planner import Given, History, Ref, Remembered, plan
from latentlm.workflows.registry import Fields, Words, Workflow
from latentlm.workflows.session import Session, step_seed
from latentlm.workflows.text_to_image import ImageOutputs

ROUTING = Path(__file__).parent / "data" / "routing.yaml"


class SpeechInputs(Fields):
    text: Words


class SpeechOutputs(Fields):
    text: str  # the stub "speaks" by echoing


class StubSpeech(Workflow):
    """Stands in for the text-to-speech workflow another issue adds (registered only inside tests)."""

    name = "text-to-speech"
    description = "Speak a text (a stub for the planner's tests)."
    Inputs = SpeechInputs
    Outputs = SpeechOutputs

    def run(self, session, text: str) -> SpeechOutputs:
        return SpeechOutputs(text=text)


@pytest.fixture
def speech(monkeypatch):
    """A registered text-to-speech workflow for the duration of a test."""
    monkeypatch.setitem(registry.REGISTRY, "text-to-speech", StubSpeech())


def routed(case: dict):
    """The plan of one routing case as plain data, or "error" for a PromptError."""
    try:
        the_plan = plan(case["request"], has_image=case.get("image", False), history=History(**case.get("history", {})))
    except PromptError:
        return "error"
    return the_plan.to_dict()["steps"]


# ---- the held-out routing set ------------------------------------------------------------------------------
def test_routing_set_is_planned_right(monkeypatch):
    cases = yaml.safe_load(ROUTING.read_text())
    assert len(cases) >= 200
    kinds = {("error",) if c.get("error") else tuple(s["workflow"] for s in c["steps"]) for c in cases}
    for wanted in [("text-to-image",), ("caption",), ("ask",), ("ground",), ("text-to-image", "caption"),
                   ("text-to-image", "ask"), ("text-to-image", "ground"), ("text-to-speech",), ("error",),
                   ("text-to-image", "caption", "text-to-speech")]:
        assert wanted in kinds, wanted
    captions = [c["steps"][0]["args"] for c in cases if "steps" in c and c["steps"][0]["workflow"] == "caption"]
    assert any(args["grounded"] for args in captions) and not all(args["grounded"] for args in captions)
    assert sum("history" in c for c in cases) >= 40
    misses = []
    for case in cases:
        if case.get("speech"):
            monkeypatch.setitem(registry.REGISTRY, "text-to-speech", StubSpeech())
        else:
            monkeypatch.delitem(registry.REGISTRY, "text-to-speech", raising=False)
        want = "error" if case.get("error") else case["steps"]
        got = routed(case)
        if got != want:
            misses.append(f"{case['request']!r} (image={case.get('image', False)}, history={case.get('history')}, "
                          f"speech={case.get('speech', False)}):\n    want {want}\n    got  {got}")
    print(f"routing: {len(cases) - len(misses)}/{len(cases)} right")
    print("\n".join(misses))
    assert len(misses) <= 0.05 * len(cases), "\n".join(misses)


def test_second_batch_regressions(monkeypatch):
    """routing_after.yaml: phrasings written after the rules, whose misses were then fixed (not held out)."""
    monkeypatch.delitem(registry.REGISTRY, "text-to-speech", raising=False)
    for case in yaml.safe_load((ROUTING.parent / "routing_after.yaml").read_text()):
        assert routed(case) == ("error" if case.get("error") else case["steps"]), case["request"]


def test_references_only_go_backwards():
    cases = yaml.safe_load(ROUTING.read_text())
    for case in cases:
        if case.get("error") or case.get("speech"):
            continue
        for i, step in enumerate(plan(case["request"], case.get("image", False),
                                      History(**case.get("history", {}))).steps):
            for value in step.args.values():
                assert not isinstance(value, Ref) or 0 <= value.step < i, case["request"]


def test_plan_shows_references_as_text():
    p = plan("draw a red circle and describe it")
    assert p.steps[1].args == {"image": Ref(0, "image"), "grounded": False}
    assert p.to_dict() == {"steps": [
        {"workflow": "text-to-image", "args": {"prompt": "a red circle"}},
        {"workflow": "caption", "args": {"image": "${{ steps.0.outputs.image }}", "grounded": False}}]}
    json.dumps(p.to_dict())
    assert str(Given("image")) == "${{ inputs.image }}" and str(Remembered("picture")) == "${{ memory.picture }}"


def test_speech_needs_a_registered_workflow(speech):
    p = plan("draw a blue square and say what it is")
    assert [s.workflow for s in p.steps] == ["text-to-image", "caption", "text-to-speech"]
    assert p.steps[2].args == {"text": Ref(1, "text")}
    assert plan("say that", history=History(text="two")).steps[0].args == {"text": "two"}
    with pytest.raises(PromptError, match="there is no earlier text to say"):
        plan("say that")


@pytest.mark.parametrize("request_", ["read this picture aloud", "say the picture out loud", "speak the caption",
                                      "say this image"])
def test_saying_the_picture_captions_it_first(speech, request_):
    p = plan(request_, has_image=True)
    assert [s.workflow for s in p.steps] == ["caption", "text-to-speech"]
    assert p.steps[0].args == {"image": Given("image"), "grounded": False} and p.steps[1].args == {"text": Ref(0, "text")}
    assert plan("say the caption", has_image=True, history=History(text="two")).steps[0].args == {"text": "two"}
    assert plan("say the picture frame is red", has_image=True).steps[0].args == {"text": "the picture frame is red"}
    if "picture" in request_ or "image" in request_:
        with pytest.raises(PromptError, match="is about a picture, and there is no earlier picture"):
            plan(request_)


def test_speech_without_the_workflow_is_the_clear_error(monkeypatch):
    monkeypatch.delitem(registry.REGISTRY, "text-to-speech", raising=False)
    for request in ("draw a blue square and say what it is", "say that", "say hello"):
        with pytest.raises(PromptError, match="^speech requests need the text-to-speech workflow, which this release "
                                              "does not ship yet; it can: draw a picture"):
            plan(request, history=History(text="a red circle"))


@pytest.mark.parametrize("request_,history,message", [
    ("now make it green", History(), "there is no earlier picture; draw one first"),
    ("where is the circle?", History(), "there is no earlier picture: pass one"),
    ("make it green", History(picture=True), "the picture was given, not drawn"),
    ("make it green", History(True, "a red circle above a blue square"), "has two things; say which"),
    ("remove it", History(True, "a red circle"), "has one thing"),
    ("make it nicer", History(True, "a red circle"), "say what to change in 'a red circle'"),
    ("compose a song", History(), "is not a request it can serve; it can: "),
])
def test_follow_ups_that_cannot_be_served_say_why(request_, history, message):
    with pytest.raises(PromptError, match=message.replace("(", r"\(").replace("?", r"\?")):
        plan(request_, history=history)


def test_edits_of_a_description():
    assert edit("a red circle", "make it green") == "a green circle"
    assert edit("a small red circle", "now a triangle") == "a small red triangle"
    assert edit("a red circle", "change the colour to orange") == "an orange circle"
    assert edit("a red circle above a blue square", "make the red one yellow") == "a yellow circle above a blue square"
    assert edit("a red circle above a blue square", "put the square left of the circle") == \
        "a blue square left of a red circle"
    assert edit("a red circle above a blue square", "now below") == "a red circle below a blue square"
    assert edit("a large red circle", "add a green square right of it") == "a green square right of a large red circle"
    with pytest.raises(PromptError, match="has no green square"):
        edit("a red circle above a blue square", "make the green square red")
    with pytest.raises(PromptError, match="not a description it can change"):
        edit("a cat", "make it green")


# ---- what the model knows ---------------------------------------------------------------------------------------
def test_the_issue_prompts_get_notes_naming_the_words_or_the_form():
    (cat,) = drawing_notes("a cat sitting on a mat")
    assert "'cat', 'sitting', 'on', 'mat'" in cat and "never saw" in cat
    (red,) = drawing_notes("a circle that is red")
    assert "'that', 'is'" in red
    (pair,) = drawing_notes("a green square and a yellow circle")
    assert "joins two objects with 'and'" in pair and "left of" in pair
    assert "sizes were trained with one object only" in drawing_notes("a large red circle above a small blue square")[0]
    assert "same colour and shape" in drawing_notes("a red circle left of a red circle")[0]
    for fine in ("a red circle", "A Large Orange Triangle.", "an orange square", "a red circle above a blue square"):
        assert drawing_notes(fine) == [], fine


def test_reading_vocabulary_is_complete_and_notes_name_words():
    from latentlm.data import tasks
    from latentlm.data.shapes import scene_for
    from latentlm.vocabulary import words
    import random

    rng, more = random.Random(1), set()
    for i in range(300, 1500):  # other scenes and other random choices add no word
        scene = scene_for("train", i)
        for kind in tasks.QUESTION_KINDS:
            more.update(words(tasks.question(scene, kind, rng).prompt))
    assert more <= reading_words()
    assert question_notes("what colour is the circle?") == [] and question_notes("how many shapes are there?") == []
    assert "('it')" in question_notes("what colour is it?")[0]
    assert phrase_notes("the blue square") == [] and "('big')" in phrase_notes("the big circle")[0]


# ---- Session runs without a model (stub workflows) ---------------------------------------------------------------
class StubSession(Session):
    """The real Session with stub workflows: the picture drawn is a solid colour named by the prompt's first colour
    word; caption says what was drawn; ask and ground echo their text. `calls` holds (workflow, arguments)."""

    def __init__(self, **kwargs):
        super().__init__("no-model-loaded", **kwargs)
        self.calls = []

    def _run_workflow(self, workflow, args):
        self.calls.append((workflow, dict(args)))
        if workflow == "text-to-image":
            colour = next((w for w in args["prompt"].split() if w in ("red", "green", "blue")), "white")
            return ImageOutputs(image=Image.new("RGB", (8, 8), colour))
        if workflow == "caption":
            return GroundedOutputs(text=f"a {args['image'].getpixel((0, 0))} picture")
        if workflow == "ground":
            return GroundedOutputs(text=args["phrase"], boxes=[(1.0, 2.0, 3.0, 4.0)], image=args["image"].copy())
        if workflow == "ask":
            return TextOutputs(text=f"answer to {args['question']}")
        return registry.get(workflow).call(self, args)


def test_a_two_step_run_carries_every_step():
    s = StubSession(seed=11)
    r = s.run("draw a red circle and describe it")
    assert r.image.getpixel((0, 0)) == (255, 0, 0) and r.text == "a (255, 0, 0) picture"
    assert s.calls[1][1]["image"] is r.image  # the caption read the drawing
    assert r.seed == 11 and r.plan.to_dict()["steps"][1]["args"]["image"] == "${{ steps.0.outputs.image }}"
    assert [(st["workflow"], st["inputs"], st["seed"], st["error"]) for st in r.steps] == [
        ("text-to-image", {"prompt": "a red circle", "seed": 11}, 11, None),
        ("caption", {"image": "${{ steps.0.outputs.image }}", "grounded": False}, None, None)]
    assert r.steps[0]["outputs"] == {"image": "image_0.png"}
    assert r.steps[1]["outputs"]["text"] == "a (255, 0, 0) picture"
    assert all(isinstance(st["seconds"], float) for st in r.steps)
    json.dumps(r.to_dict())


def test_step_seeds_are_derived_from_the_run_seed():
    s = StubSession()
    r = s.run("draw a red circle and then draw a blue square", seed=5)
    assert [st["seed"] for st in r.steps] == [5, step_seed(5, 1)] and len(r.images) == 2
    assert [c[1]["seed"] for c in s.calls] == [5, step_seed(5, 1)]
    assert step_seed(5, 1) != step_seed(5, 2) != step_seed(6, 1) and step_seed(5, 0) == 5
    assert all(0 <= step_seed(seed, i) <= 2**63 - 1 for seed in (0, 2**63 - 1) for i in range(1, 50))


def test_follow_ups_use_the_sessions_memory():
    s = StubSession()
    drawn = s.run("draw a red circle").image
    assert (s.memory.picture, s.memory.prompt) == (drawn, "a red circle")
    found = s.run("where is it?")
    assert s.calls[-1] == ("ground", {"image": drawn, "phrase": "the circle"})
    assert found.steps[0]["inputs"]["image"] == "${{ memory.picture }}" and s.memory.text == "the circle"
    green = s.run("now make it green")
    assert s.calls[-1][1]["prompt"] == "a green circle" and green.image.getpixel((0, 0)) == (0, 128, 0)
    assert s.memory.picture is green.image and s.memory.prompt == "a green circle"
    s.run("what colour is it?")
    assert s.calls[-1][1] == {"image": green.image, "question": "what colour is the circle?"}
    given = Image.new("RGB", (8, 8), "blue")
    s.run("describe it", image=given)
    assert s.memory.picture.getpixel((0, 0)) == (0, 0, 255) and s.memory.prompt is None
    with pytest.raises(PromptError, match="the picture was given, not drawn"):
        s.run("make it bigger")
    s.forget()
    with pytest.raises(PromptError, match="there is no earlier picture"):
        s.run("describe it")


def test_say_that_speaks_the_last_text(speech):
    s = StubSession()
    s.run("draw a red circle and describe it")
    r = s.run("say that")
    assert s.calls[-1] == ("text-to-speech", {"text": "a (255, 0, 0) picture"})
    assert r.steps[0]["inputs"] == {"text": "a (255, 0, 0) picture"}
    three = s.run("draw a blue square and say what it is")
    assert [st["workflow"] for st in three.steps] == ["text-to-image", "caption", "text-to-speech"]
    assert three.steps[2]["inputs"] == {"text": "${{ steps.1.outputs.text }}"} and three.text == "a (0, 0, 255) picture"


def test_warnings_and_strict():
    s = StubSession()
    r = s.run("draw a cat sitting on a mat")
    assert len(r.warnings) == 1 and "'cat', 'sitting', 'on', 'mat'" in r.warnings[0]
    assert r.to_dict()["warnings"] == r.warnings
    assert s.run("draw a red circle").warnings == []
    strict = StubSession(strict=True)
    with pytest.raises(PromptError, match="joins two objects with 'and'.*strict: nothing was run"):
        strict.run("draw a green square and a yellow circle")
    with pytest.raises(PromptError, match="the question 'what colour is it\\?' has words"):
        strict.ask(Image.new("RGB", (8, 8)), "what colour is it?")
    assert strict.calls == [] and strict.memory.picture is None  # refused before anything ran
    with pytest.raises(LatentLMError, match="strict='yes': use True or False"):
        Session(strict="yes")


def test_a_failing_step_is_recorded_in_the_partial_result():
    class Failing(StubSession):
        def _run_workflow(self, workflow, args):
            if workflow == "caption":
                raise LatentLMError("the caption broke")
            return super()._run_workflow(workflow, args)

    with pytest.raises(LatentLMError, match="the caption broke") as info:
        Failing().run("draw a red circle and describe it")
    partial = info.value.result
    assert [st["error"] for st in partial.steps] == [None, "the caption broke"] and partial.image is not None


def test_result_save_writes_every_step_output(tmp_path):
    r = StubSession().run("draw a red circle and where is the circle?", seed=3)
    assert [st["workflow"] for st in r.steps] == ["text-to-image", "ground"] and len(r.images) == 2
    manifest = json.loads(r.save(tmp_path).read_text())
    assert manifest["images"] == ["image_0.png", "image_1.png"] and manifest["seed"] == 3
    assert manifest["steps"][1]["outputs"]["image"] == "image_1.png"
    assert manifest["steps"][1]["outputs"]["boxes"] == [[1.0, 2.0, 3.0, 4.0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image_0.png", "image_1.png", "manifest.json", "text.txt"]


# ---- the real model: same seed, same bytes ------------------------------------------------------------------------
def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_two_step_runs_are_byte_identical_and_match_single_calls(tiny_model_dir):
    a = Session(str(tiny_model_dir), steps=2).run("draw a red circle and then draw a blue square", seed=7)
    b = Session(str(tiny_model_dir), steps=2).run("draw a red circle and then draw a blue square", seed=7)
    assert [png(im) for im in a.images] == [png(im) for im in b.images]
    single = Session(str(tiny_model_dir), steps=2)
    assert png(a.images[0]) == png(single.draw("a red circle", seed=7).image)  # step 0 keeps the run's seed
    assert png(a.images[1]) == png(single.draw("a blue square", seed=step_seed(7, 1)).image)
    c = Session(str(tiny_model_dir), steps=2).run("draw a red circle and describe it", seed=7)
    d = Session(str(tiny_model_dir), steps=2).run("draw a red circle and describe it", seed=7)
    assert png(c.image) == png(d.image) == png(a.images[0]) and c.text == d.text and isinstance(c.text, str)



@pytest.mark.parametrize("name, least", [("routing_blind.yaml", 120), ("routing_blind2.yaml", 250),
                                         ("routing_blind3.yaml", 260), ("routing_blind4.yaml", 260),
                                         ("routing_blind5.yaml", 240)])
def test_the_blind_routing_sets(monkeypatch, name, least):
    """tests/data/routing_blind*.yaml: phrasings written by someone who never read the rules or the other
    cases (91.0%, 89.2%, 90.7% and 89.8% before the fixes they prompted; set 5, 97.9%, is still held out:
    nothing was changed for it; see their headers). Each case names the literal
    arguments; references to pictures and earlier outputs are not spelled out in it."""
    cases = yaml.safe_load((ROUTING.parent / name).read_text())
    assert len(cases) >= least
    misses = []
    for case in cases:
        if case.get("speech"):
            monkeypatch.setitem(registry.REGISTRY, "text-to-speech", StubSpeech())
        got = routed(case)
        if case.get("error"):
            if got != "error":
                misses.append(f"{case['request']!r}: wanted a refusal, got {got}")
            continue
        want = case["steps"]
        right = got != "error" and len(got) == len(want) and all(
            g["workflow"] == w["workflow"]
            and all(g["args"].get(k) == v for k, v in (w.get("args") or {}).items())
            and all(k in (w.get("args") or {}) or str(v).startswith("${{") for k, v in g["args"].items())
            for g, w in zip(got, want))
        if not right:
            misses.append(f"{case['request']!r}: wanted {want}, got {got}")
    print("\n".join(misses))
    assert len(misses) <= 0.05 * len(cases), "\n".join(misses)


# ---- run(request, audio=..., **options) ----------------------------------------------------------------------------
class VoicedInputs(Fields):
    text: str
    voice: object = None
    voice_text: str | None = None


class VoicedOutputs(Fields):
    text: str
    voice: object = None
    voice_text: str | None = None


class VoicedSpeech(Workflow):
    """A text-to-speech stand-in that returns what it was given, to see where `audio` and options go."""

    name = "text-to-speech"
    description = "Speak a text (a stand-in that echoes its inputs)."
    Inputs = VoicedInputs
    Outputs = VoicedOutputs

    def run(self, session, text: str, voice=None, voice_text=None) -> VoicedOutputs:
        return VoicedOutputs(text=text, voice=voice, voice_text=voice_text)


def test_audio_is_the_voice_of_the_speech_steps_and_options_reach_the_steps_that_take_them(monkeypatch, tiny_model_dir):
    from latentlm.workflows.session import Session

    monkeypatch.setitem(registry.REGISTRY, "text-to-speech", VoicedSpeech())
    session = Session(str(tiny_model_dir))
    voice = (np.zeros(16000, dtype=np.float32), 16000)
    planned = session.plan("say hello there", audio=voice, voice_text="the words in it")
    assert planned.to_dict()["steps"] == [{"workflow": "text-to-speech", "args": {
        "text": "hello there", "voice": "${{ inputs.audio }}", "voice_text": "the words in it"}}]
    result = session.run("say hello there", audio=voice, voice_text="the words in it")
    assert result.steps[0]["outputs"]["voice_text"] == "the words in it"
    with pytest.raises(PromptError, match=r"^audio: no step of this plan takes it \(steps: text-to-image\)"):
        session.plan("draw a red circle", audio=voice)
    with pytest.raises(PromptError, match=r"^voice_text: no step of this plan takes it"):
        session.run("draw a red circle", voice_text="x")
