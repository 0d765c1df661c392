"""`Session`: the agent-style entry point.

    Session().run("draw a red circle", seed=0).image
    Session().run("draw a red circle and describe it", seed=0).text      # two steps
    Session().run("where is the blue square?", image="scene.png").boxes
    Session().caption("scene.png", grounded=True).entities
    Session().speak("a red circle above a blue square").audio

`run` plans the request into workflow steps (`plan`), checks them, then executes them; a step's
argument may be an earlier step's output (`Ref`). The explicit methods (`draw`, `caption`, `ask`,
`ground`) call one workflow each.

Memory. A Session remembers its last picture (the last drawn, or the last one passed in), the
description that picture was drawn from, and the last text output, so that follow-ups work:
"now make it green", "where is the circle?", "describe it", "say that" (see `workflows/planner.py`).
`forget()` clears it; `attach(image)` makes a picture the one follow-ups are about.

Seeds. Step i of a run uses `step_seed(seed, i)`: step 0 the run's seed itself (so a one-step run
draws exactly what `draw(prompt, seed)` draws), step i > 0 the first 8 bytes of
sha256(f"{seed}:{i}") as a big-endian integer with the top bit cleared, in [0, 2**63 - 1]. Each
step's seed is recorded in `Result.steps`; the same seed gives byte-identical outputs.

Prompting. `Session(prompting="direct")` (the default) reads and draws with the query alone.
`prompting="fewshot"` puts the given `demonstrations` (`[(picture, prompt, answer), ...]` for reading,
`[(picture, caption), ...]` for drawing; those of the query's task are used) before the query.
`prompting="autoicl"` lets the model make its own demonstrations first (`workflows/autoicl.py`):
generating mode by default, retrieving mode after `icl_pool(pictures)`. `icl_n` demonstrations (3),
cached per task kind unless `icl_cache=False`. `icl_select="similar"` picks, for a question about a
picture, the given demonstrations or pool pictures nearest its picture (`workflows/demo_selection.py`).
A step prompted in context records its trace as `Result.steps[i]["icl"]`; `Result.save` writes the
demonstrations' pictures. Its seed is the step's.

Two models. `Session(speech_model=...)` speaks with a second model (a speech specialist) while the first
draws and reads: each workflow picks its model (`Session.speaker` for text-to-speech, `Session.model` for
the rest), so "describe it and say it" captions with one and speaks with the other.

What the model knows. Before any step runs, the literal arguments are checked against what the model
was trained on (`Workflow.notes`, from `latentlm.vocabulary`): each problem becomes a line of
`Result.warnings`, or, with `strict=True`, a `PromptError` before any model work.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from latentlm.errors import LatentLMError, PromptError
from latentlm.images import ImageInput, load_image
from latentlm.model import LatentLM
from latentlm.sampling_defaults import DEFAULT_CFG, DEFAULT_STEPS, DEFAULT_TEMPERATURE
from latentlm.workflows import builtin  # noqa: F401 - registers the built-in workflows
from latentlm.workflows.autoicl import DEFAULT_N, Outcome, Prompting
from latentlm.workflows.icl_model import LatentLMForICL
from latentlm.workflows.icl_tasks import Query
from latentlm.workflows.planner import LATER, Given, History, Plan, Ref, Remembered, Step, plan, shown
from latentlm.workflows.registry import Fields, get, picture_fields
from latentlm.workflows.result import Result
from latentlm.workflows.seeds import MAX_SEED, check_seed, step_seed  # noqa: F401 - re-exported

DEFAULT_MODEL = "shapes-tiny"
DRAWING = "text-to-image"


@dataclass
class Memory:
    """What a Session remembers between requests."""

    picture: Image.Image | None = None
    prompt: str | None = None  # the description `picture` was drawn from; None for a picture passed in
    text: str | None = None  # the last text output

    def history(self) -> History:
        return History(picture=self.picture is not None, prompt=self.prompt, text=self.text)


class Session:
    """Holds a loaded model and runs requests through the planner and the workflows."""

    def __init__(
        self, model: str | LatentLM = DEFAULT_MODEL, seed: int | None = None, progress: bool = False,
        steps: int = DEFAULT_STEPS, cfg_scale: float = DEFAULT_CFG, temperature: float = DEFAULT_TEMPERATURE,
        strict: bool = False, backbone: str | None = None, prompting: str = "direct",
        demonstrations: Iterable[Any] | None = None, icl_n: int = DEFAULT_N, icl_cache: bool = True,
        icl_select: str = "fixed", speech_model: str | LatentLM | None = None,
    ):
        if not isinstance(model, (str, LatentLM)):
            raise LatentLMError(f"model must be a name, a folder or a LatentLM, not {type(model).__name__}")
        if speech_model is not None and not isinstance(speech_model, (str, LatentLM)):
            raise LatentLMError(f"speech_model must be a name, a folder, a LatentLM or None, not "
                                f"{type(speech_model).__name__}")
        self._model = model
        self._speech_model = speech_model
        self.backbone = backbone
        self.seed = 0 if seed is None else check_seed(seed)
        self.progress = progress
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise LatentLMError(f"steps={steps!r}: use an integer of at least 1")
        if not isinstance(cfg_scale, (int, float)) or isinstance(cfg_scale, bool) or not cfg_scale >= 0:
            raise LatentLMError(f"cfg_scale={cfg_scale!r}: use a number >= 0 (1 = no guidance)")
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
            raise LatentLMError(f"temperature={temperature!r}: use a number > 0")
        if not isinstance(strict, bool):
            raise LatentLMError(f"strict={strict!r}: use True or False")
        self.steps, self.cfg_scale, self.temperature = steps, float(cfg_scale), float(temperature)
        self.strict = strict
        self.memory = Memory()
        self.icl = Prompting(prompting, demonstrations, icl_n, icl_cache, icl_select)
        self._given = self.icl.given  # kept for a return to "fewshot" after another prompting
        self._icl_seed: int = self.seed
        self._icl_outcome: Outcome | None = None

    # ---- prompting -------------------------------------------------------------------------------
    @property
    def prompting(self) -> str:
        """How reading and drawing prompt the model: "direct", "fewshot" or "autoicl" (module doc)."""
        return self.icl.mode

    @prompting.setter
    def prompting(self, mode: str) -> None:
        if mode == self.icl.mode:
            return  # keeps the demonstration cache
        pool = self.icl.pool
        self.icl = Prompting(mode, self._given if mode == "fewshot" else None, self.icl.n, self.icl.cache,
                             self.icl.select)
        self.icl.set_pool(pool)

    def icl_pool(self, images: Iterable[ImageInput]) -> int:
        """Unlabelled pictures for AutoICL's retrieving mode (the model labels them itself); an empty pool
        returns to generating mode. Clears the demonstration cache; returns the pool's size."""
        if isinstance(images, (str, bytes)) or not isinstance(images, Iterable):
            raise LatentLMError("icl_pool takes a list of pictures (PIL images, file paths or arrays)")
        pictures = [load_image(image) for image in images]
        self.icl.set_pool(pictures)
        return len(pictures)

    def in_context(self, query: Query) -> str | Image.Image:
        """Answer `query` with the Session's prompting (a workflow's model call); its trace goes to the
        step record. The seed is the step's (`step_seed`), so demonstrations follow the run's seed."""
        model = LatentLMForICL(self.model, self.steps, self.cfg_scale, self.temperature)
        self._icl_outcome = self.icl.answer(model, query, self._icl_seed)
        return self._icl_outcome.output

    @property
    def model(self) -> LatentLM:
        if not isinstance(self._model, LatentLM):
            self._model = LatentLM.from_pretrained(self._model, backbone=self.backbone)  # loaded on first use
        return self._model

    @property
    def speaker(self) -> LatentLM:
        """The model that speaks (the text-to-speech steps): `speech_model` where one was given, a second
        model beside the one that draws and reads (loaded on first use); else the Session's model."""
        if self._speech_model is None:
            return self.model
        if not isinstance(self._speech_model, LatentLM):
            self._speech_model = LatentLM.from_pretrained(self._speech_model)
        return self._speech_model

    # ---- memory ----------------------------------------------------------------------------------
    def forget(self) -> None:
        """Forget the last picture, its description and the last text."""
        self.memory = Memory()

    def attach(self, image: ImageInput) -> Image.Image:
        """Make `image` the picture follow-ups are about (as passing it to `run` does); returns it loaded."""
        picture = load_image(image)
        self.memory = Memory(picture=picture, prompt=None, text=self.memory.text)
        return picture

    # ---- planned requests ------------------------------------------------------------------------
    def plan(self, request: str, image: ImageInput | None = None, audio=None, **options) -> Plan:
        """The workflow steps `run` would execute for `request`, without running anything.

        `audio` (a recording: a sound file path or a (wave, rate) pair) is the voice of the plan's speech
        steps (`${{ inputs.audio }}`); `options` are arguments for every step whose workflow takes them
        (`voice_text=...`, `steps=8`, `cfg_scale=...`); one that no step takes is a `PromptError`."""
        the_plan = plan(request, has_image=image is not None, history=self.memory.history())
        return with_options(the_plan, {"voice": Given("audio")} if audio is not None else {}, options)

    def run(self, request: str, image: ImageInput | None = None, audio=None, seed: int | None = None,
            **options) -> Result:
        """Plan `request`, check it, then run its steps; the result holds every step's outputs and record.
        `audio` and `options`: as for `plan`."""
        seed = self.seed if seed is None else check_seed(seed)
        the_plan = self.plan(request, image, audio, **options)
        warnings = self.vet(the_plan.steps)
        given = {"image": self.attach(image) if image is not None else None, "audio": audio}
        result = Result(plan=the_plan, seed=seed, warnings=warnings)
        outputs: list[Fields] = []
        for i, step in enumerate(the_plan.steps):
            args = {k: self._resolve(v, given, outputs) for k, v in step.args.items()}
            shown_args = {k: shown(v) for k, v in step.args.items()}
            if "seed" in get(step.workflow).Inputs.model_fields:
                args["seed"] = shown_args["seed"] = step_seed(seed, i)
            outputs.append(self._step(result, step.workflow, args, shown_args, step_seed(seed, i)))
        return result

    def vet(self, steps) -> list[str]:
        """Notes on the steps' literal arguments the model was not trained on; a `PromptError` if strict."""
        notes = []
        for step in steps:
            literal = {k: v for k, v in step.args.items() if not isinstance(v, LATER)}
            notes += get(step.workflow).notes(literal)
        if notes and self.strict:
            raise PromptError(" ".join(notes) + " (strict: nothing was run; without strict it runs with a warning)")
        return notes

    def _resolve(self, value: Any, given: dict[str, Any], outputs: list[Fields]) -> Any:
        if isinstance(value, Ref):
            return getattr(outputs[value.step], value.field)
        if isinstance(value, Given):
            return given[value.name]
        if isinstance(value, Remembered):
            return getattr(self.memory, value.name)
        return value

    # ---- one workflow ----------------------------------------------------------------------------
    def call(self, workflow: str, **arguments) -> Result:
        """Run one registered workflow with its arguments; the result records the step."""
        return self._call(workflow, arguments)

    def _call(self, workflow: str, arguments: dict, seed: int | None = None) -> Result:
        """`call`, with `seed` for in-context prompting (default: the `seed` argument, else the Session's)."""
        wf = get(workflow)
        result = Result(seed=arguments.get("seed"), warnings=self.vet([Step(workflow, arguments)]))
        for name in picture_fields(wf):
            if name in arguments and arguments[name] is not self.memory.picture:
                arguments[name] = load_image(arguments[name])  # a bad picture fails here, before the model
        shown_args = {k: "${{ inputs.%s }}" % k if isinstance(v, Image.Image) else v for k, v in arguments.items()}
        self._step(result, workflow, arguments, shown_args, seed)
        return result

    def _step(self, result: Result, workflow: str, args: dict, shown_args: dict, seed: int | None = None) -> Fields:
        """Run one workflow, add its outputs and its record to `result`, remember what it made.

        A workflow that prompted the model in context (`in_context`) adds its trace as the record's `icl`,
        and its demonstration pictures to `result.icl_pictures` (files `icl/step<i>_demo<j>.png`)."""
        record = {"workflow": workflow, "inputs": shown_args, "seed": args.get("seed"), "seconds": None,
                  "outputs": None, "error": None}
        result.steps.append(record)
        self._icl_seed = args.get("seed", seed if seed is not None else self.seed)
        self._icl_outcome = None
        start = time.perf_counter()
        try:
            outputs = self._run_workflow(workflow, args)
        except LatentLMError as e:
            record["seconds"] = round(time.perf_counter() - start, 4)
            record["error"] = " ".join(str(e).split())
            e.result = result  # the steps so far, for whoever catches it
            raise
        record["seconds"] = round(time.perf_counter() - start, 4)
        record["outputs"] = absorb(result, outputs)
        if self._icl_outcome is not None:
            prefix = f"icl/step{len(result.steps) - 1}_"
            record["icl"] = self._icl_outcome.record(prefix)
            result.icl_pictures.update(self._icl_outcome.pictures(prefix))
            self._icl_outcome = None
        self._remember(workflow, args, outputs)
        return outputs

    def _run_workflow(self, workflow: str, args: dict) -> Fields:
        return get(workflow).call(self, args)

    def _remember(self, workflow: str, args: dict, outputs: Fields) -> None:
        if workflow == DRAWING:
            self.memory.picture, self.memory.prompt = outputs.image, " ".join(str(args["prompt"]).split())
        else:
            for name in picture_fields(get(workflow)):
                if isinstance(args.get(name), Image.Image) and args[name] is not self.memory.picture:
                    self.memory.picture, self.memory.prompt = args[name], None
        text = getattr(outputs, "text", None)
        if isinstance(text, str):
            self.memory.text = text

    # ---- one workflow each --------------------------------------------------------------------
    def draw(self, prompt: str, seed: int | None = None) -> Result:
        """A picture of `prompt` (the text-to-image workflow)."""
        return self.call(DRAWING, prompt=prompt, seed=self.seed if seed is None else check_seed(seed))

    def caption(self, image: ImageInput, grounded: bool = False, seed: int | None = None) -> Result:
        """A caption of `image`; with `grounded=True`, Kosmos-2 text with a box per object phrase. `seed`
        matters only to AutoICL (its demonstrations; default: the Session's seed)."""
        return self._call("caption", {"image": image, "grounded": grounded}, _seed(seed))

    def ask(self, image: ImageInput, question: str, seed: int | None = None) -> Result:
        """A short answer to `question` about `image` (`seed`: as `caption`)."""
        return self._call("ask", {"image": image, "question": question}, _seed(seed))

    def ground(self, image: ImageInput, phrase: str, seed: int | None = None) -> Result:
        """Where `phrase` is in `image`: `.boxes` in its pixels, `.image` annotated (`seed`: as `caption`)."""
        return self._call("ground", {"image": image, "phrase": phrase}, _seed(seed))

    def speak(self, text: str, voice=None, voice_text: str | None = None, seed: int | None = None,
              **sampling) -> Result:
        """`text` spoken: `.audio` (float32, mono) at `.sample_rate`. `voice` (a sound file or a (wave, rate)
        pair) is a few seconds of a speaker to continue in, with `voice_text` the words said in it;
        `sampling`: steps, cfg_scale, temperature (speech has its own defaults, `latentlm.speech`)."""
        return self.call("text-to-speech", text=text, voice=voice, voice_text=voice_text,
                         seed=self.seed if seed is None else check_seed(seed), **sampling)


def with_options(the_plan: Plan, speech: dict, options: dict) -> Plan:
    """`the_plan` with `speech` added to its text-to-speech steps and each option to every step that takes it."""
    steps, taken = [], set()
    for step in the_plan.steps:
        fields = get(step.workflow).Inputs.model_fields
        extra = {k: v for k, v in options.items() if k in fields} | (speech if step.workflow == "text-to-speech" else {})
        taken |= extra.keys()
        steps.append(Step(step.workflow, step.args | extra))
    unused = [k for k in (*speech, *options) if k not in taken]
    if unused:
        names = ", ".join("audio" if k == "voice" else k for k in unused)
        raise PromptError(f"{names}: no step of this plan takes it (steps: {', '.join(s.workflow for s in the_plan.steps)});"
                          " audio is the voice of a speech step, options are inputs of the plan's workflows")
    return Plan(tuple(steps))


def _seed(seed: int | None) -> int | None:
    return None if seed is None else check_seed(seed)


def absorb(result: Result, outputs: Fields) -> dict:
    """Add a workflow's outputs to `result` (pictures appended to `images`, other fields set); returns the
    step's outputs as JSON-able values, pictures by the file name `Result.save` gives them."""
    summary: dict[str, Any] = {}
    for name in type(outputs).model_fields:
        value = getattr(outputs, name)
        if value is None:
            continue
        if name == "image":
            result.images = [*(result.images or []), value]
            summary[name] = f"image_{len(result.images) - 1}.png"
            continue
        if name in Result.__dataclass_fields__:
            setattr(result, name, value)
        summary[name] = _jsonable(value)
    return summary


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "shape"):  # a waveform or another array: its size, not its values
        return {"shape": [int(n) for n in value.shape]}
    return f"<{type(value).__name__}>"


def to_result(outputs: Fields) -> Result:
    """A workflow's outputs as the fields of a Result (`image` becomes `images=[image]`)."""
    result = Result()
    absorb(result, outputs)
    return result
