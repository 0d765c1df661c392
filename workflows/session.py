"""`Session`: the agent-style entry point. `Session().run("draw a red circle", seed=0).image`."""
from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from latentlm.model import LatentLM
from latentlm.workflows.planner import plan
from latentlm.sampling_defaults import DEFAULT_CFG, DEFAULT_STEPS, DEFAULT_TEMPERATURE
from latentlm.workflows.text_to_image import text_to_image

DEFAULT_MODEL = "shapes-tiny"


@dataclass
class Result:
    workflow: str
    prompt: str
    image: Image.Image | None = None
    extras: dict = field(default_factory=dict)


class Session:
    """Holds a loaded model and runs requests through the planner and the workflows."""

    def __init__(
        self, model: str | LatentLM = DEFAULT_MODEL, steps: int = DEFAULT_STEPS, cfg_scale: float = DEFAULT_CFG,
        temperature: float = DEFAULT_TEMPERATURE,
    ):
        self._model = model
        self.steps = steps
        self.cfg_scale = cfg_scale
        self.temperature = temperature

    @property
    def model(self) -> LatentLM:
        if not isinstance(self._model, LatentLM):
            self._model = LatentLM.from_pretrained(self._model)  # loaded on first use
        return self._model

    def run(self, request: str, seed: int = 0) -> Result:
        p = plan(request)
        image = text_to_image(
            self.model, p.prompt, steps=self.steps, cfg_scale=self.cfg_scale, seed=seed, temperature=self.temperature
        )
        return Result(p.workflow, p.prompt, image=image)
