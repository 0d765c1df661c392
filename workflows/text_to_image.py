"""The text-to-image workflow: a description in, a picture out."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from latentlm.generation import generate_images
from latentlm.vocabulary import drawing_notes
from latentlm.workflows.icl_tasks import draw_query
from latentlm.workflows.registry import Fields, Words, Workflow, register


class TextToImageInputs(Fields):
    prompt: Words
    seed: int = Field(0, ge=0, le=2**63 - 1)


class ImageOutputs(Fields):
    image: Any  # PIL image


@register
class TextToImage(Workflow):
    name = "text-to-image"
    description = "Draw a picture of a description, e.g. 'a red circle above a blue square'."
    Inputs = TextToImageInputs
    Outputs = ImageOutputs

    def notes(self, arguments: dict) -> list[str]:
        value = arguments.get("prompt")
        return drawing_notes(value) if isinstance(value, str) else []

    def run(self, session, prompt: str, seed: int) -> ImageOutputs:
        if session.prompting != "direct":  # caption -> picture demonstrations before the prompt
            return ImageOutputs(image=session.in_context(draw_query(prompt)))
        image = generate_images(session.model, [prompt], steps=session.steps, cfg_scale=session.cfg_scale, seed=seed,
                                temperature=session.temperature)[0]
        return ImageOutputs(image=image)
