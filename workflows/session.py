"""`Session`: the agent-style entry point.

    Session().run("draw a red circle", seed=0).image
    Session().run("where is the blue square?", image="scene.png").boxes
    Session().caption("scene.png", grounded=True).entities

`run` plans the request into workflow steps (`plan`), then executes them. The explicit methods
(`draw`, `caption`, `ask`, `ground`) call one workflow each.
"""
from __future__ import annotations

import time

from latentlm.errors import LatentLMError
from latentlm.images import ImageInput
from latentlm.model import LatentLM
from latentlm.sampling_defaults import DEFAULT_CFG, DEFAULT_STEPS, DEFAULT_TEMPERATURE
from latentlm.workflows import builtin  # noqa: F401 - registers the built-in workflows
from latentlm.workflows.planner import Plan, plan
from latentlm.workflows.registry import Fields, get
from latentlm.workflows.result import Result

DEFAULT_MODEL = "shapes-tiny"
MAX_SEED = 2**63 - 1


def check_seed(seed: object, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise LatentLMError(f"{name} must be an integer, not {type(seed).__name__}")
    if not 0 <= seed <= MAX_SEED:
        raise LatentLMError(f"{name}={seed} is out of range: use 0 <= {name} <= 2**63 - 1")
    return seed


class Session:
    """Holds a loaded model and runs requests through the planner and the workflows."""

    def __init__(
        self, model: str | LatentLM = DEFAULT_MODEL, seed: int | None = None, progress: bool = False,
        steps: int = DEFAULT_STEPS, cfg_scale: float = DEFAULT_CFG, temperature: float = DEFAULT_TEMPERATURE,
    ):
        self._model = model
        self.seed = 0 if seed is None else check_seed(seed)
        self.progress = progress
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise LatentLMError(f"steps={steps!r}: use an integer of at least 1")
        if not isinstance(cfg_scale, (int, float)) or isinstance(cfg_scale, bool) or not cfg_scale >= 0:
            raise LatentLMError(f"cfg_scale={cfg_scale!r}: use a number >= 0 (1 = no guidance)")
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
            raise LatentLMError(f"temperature={temperature!r}: use a number > 0")
        self.steps, self.cfg_scale, self.temperature = steps, float(cfg_scale), float(temperature)

    @property
    def model(self) -> LatentLM:
        if not isinstance(self._model, LatentLM):
            self._model = LatentLM.from_pretrained(self._model)  # loaded on first use
        return self._model

    # ---- planned requests ------------------------------------------------------------------
    def plan(self, request: str, image: ImageInput | None = None) -> Plan:
        """The workflow steps `run` would execute for `request`, without running anything."""
        return plan(request, has_image=image is not None)

    def run(self, request: str, image: ImageInput | None = None, seed: int | None = None) -> Result:
        """Plan `request`, then run its steps; the result records the plan and each step."""
        the_plan = self.plan(request, image)
        seed = self.seed if seed is None else check_seed(seed)
        result = Result()
        for step in the_plan.steps:
            args = dict(step.args)
            if "image" in get(step.workflow).Inputs.model_fields:
                args["image"] = image
            if "seed" in get(step.workflow).Inputs.model_fields:
                args["seed"] = seed
            result = self.call(step.workflow, **args)
        result.plan = the_plan
        return result

    def call(self, workflow: str, **arguments) -> Result:
        """Run one registered workflow with its arguments; the result records the step."""
        start = time.perf_counter()
        outputs = get(workflow).call(self, arguments)
        seconds = round(time.perf_counter() - start, 4)
        result = to_result(outputs)
        result.seed = arguments.get("seed")
        inputs = {k: v for k, v in arguments.items() if k != "image"}
        result.steps.append({"workflow": workflow, "inputs": inputs, "seed": result.seed, "seconds": seconds,
                             "error": None})
        return result

    # ---- one workflow each --------------------------------------------------------------------
    def draw(self, prompt: str, seed: int | None = None) -> Result:
        """A picture of `prompt` (the text-to-image workflow)."""
        return self.call("text-to-image", prompt=prompt, seed=self.seed if seed is None else check_seed(seed))

    def caption(self, image: ImageInput, grounded: bool = False) -> Result:
        """A caption of `image`; with `grounded=True`, Kosmos-2 text with a box per object phrase."""
        return self.call("caption", image=image, grounded=grounded)

    def ask(self, image: ImageInput, question: str) -> Result:
        """A short answer to `question` about `image`."""
        return self.call("ask", image=image, question=question)

    def ground(self, image: ImageInput, phrase: str) -> Result:
        """Where `phrase` is in `image`: `.boxes` in its pixels, `.image` annotated."""
        return self.call("ground", image=image, phrase=phrase)


def to_result(outputs: Fields) -> Result:
    """A workflow's outputs as the fields of a Result (`image` becomes `images=[image]`)."""
    values = {k: getattr(outputs, k) for k in type(outputs).model_fields}
    image = values.pop("image", None)
    return Result(images=[image] if image is not None else None,
                  **{k: v for k, v in values.items() if v is not None})
