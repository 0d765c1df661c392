"""The caption workflow: a picture in, a sentence about it out (optionally grounded, Kosmos-2 style)."""
from __future__ import annotations

from PIL import Image

from latentlm.understanding import caption as caption_pictures
from latentlm.workflows.ground import GroundedOutputs, grounded_outputs, model_pixels
from latentlm.workflows.registry import Fields, Picture, Workflow, register


class CaptionInputs(Fields):
    image: Picture
    grounded: bool = False


@register
class Caption(Workflow):
    name = "caption"
    description = "Describe a picture; grounded=True adds a box per object phrase (Kosmos-2 style)."
    Inputs = CaptionInputs
    Outputs = GroundedOutputs

    def run(self, session, image: Image.Image, grounded: bool) -> GroundedOutputs:
        text = caption_pictures(session.model, model_pixels(session.model, image), grounded=grounded)[0]
        return grounded_outputs(text, image) if grounded else GroundedOutputs(text=text)
