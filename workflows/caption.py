"""The caption workflow: a picture in, a sentence about it out (optionally grounded, Kosmos-2 style)."""
from __future__ import annotations

from PIL import Image

from latentlm.data.tasks import GROUNDED_CAPTION_PROMPT
from latentlm.grounding import parse_grounded
from latentlm.understanding import caption as caption_pictures
from latentlm.workflows.icl_tasks import caption_query
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
        if session.prompting != "direct":  # in context: the grounded caption, as `caption` decodes via boxes
            kosmos = GROUNDED_CAPTION_PROMPT + session.in_context(caption_query(image))
            return grounded_outputs(kosmos, image) if grounded else GroundedOutputs(text=parse_grounded(kosmos).text)
        text = caption_pictures(session.model, model_pixels(session.model, image), grounded=grounded)[0]
        return grounded_outputs(text, image) if grounded else GroundedOutputs(text=text)
