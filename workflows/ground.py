"""The ground workflow: a picture and a phrase in, the phrase's box out (Kosmos-2 phrase grounding).

Also the one place that turns a Kosmos-2 string into outputs in the input picture's pixels (clean
text, entities, boxes, the picture annotated with them), for grounded captions too.
"""
from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw
from torch import Tensor

from latentlm.grounding import parse_grounded, scale_box
from latentlm.images import fit
from latentlm.model import LatentLM
from latentlm.understanding import ground as ground_phrases
from latentlm.vocabulary import phrase_notes
from latentlm.workflows.icl_tasks import ground_query
from latentlm.workflows.registry import Fields, Picture, Words, Workflow, register
from latentlm.workflows.result import Entity

BOX_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#000000")


class GroundedOutputs(Fields):
    text: str  # clean text, no tags
    kosmos: str | None = None  # the raw Kosmos-2 string
    entities: list[Entity] = []
    boxes: list[tuple[float, float, float, float]] = []  # pixels of the input picture
    image: Any = None  # the input with its boxes drawn


def model_pixels(model: LatentLM, picture: Image.Image) -> Tensor:
    """The picture at the model's resolution: [1, 3, S, S] in [-1, 1] (resized, not cropped)."""
    return fit(picture, model.codecs["image"].config.image_size)[None]


def grounded_outputs(kosmos: str, picture: Image.Image) -> GroundedOutputs:
    """A Kosmos-2 string about `picture` -> its entities and boxes in the picture's pixels, drawn on a copy."""
    parsed = parse_grounded(kosmos)
    entities = [Entity(e.phrase, e.span, [scale_box(b, picture.width, picture.height) for b in e.boxes])
                for e in parsed.entities]
    boxes = [b for e in entities for b in e.boxes]
    return GroundedOutputs(text=parsed.text, kosmos=kosmos, entities=entities, boxes=boxes,
                           image=annotate(picture, entities))


def annotate(picture: Image.Image, entities: list[Entity]) -> Image.Image:
    """A copy of `picture` with each entity's boxes outlined, one colour per entity."""
    out = picture.copy()
    draw = ImageDraw.Draw(out)
    for i, e in enumerate(entities):
        for x0, y0, x1, y1 in e.boxes:
            draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=BOX_COLOURS[i % len(BOX_COLOURS)])
    return out


class GroundInputs(Fields):
    image: Picture
    phrase: Words


@register
class Ground(Workflow):
    name = "ground"
    description = "Find a phrase in a picture: its box in the picture's pixels (Kosmos-2 grounding)."
    Inputs = GroundInputs
    Outputs = GroundedOutputs

    def notes(self, arguments: dict) -> list[str]:
        value = arguments.get("phrase")
        return phrase_notes(value) if isinstance(value, str) else []

    def run(self, session, image: Image.Image, phrase: str) -> GroundedOutputs:
        if session.prompting != "direct":
            query = ground_query(image, phrase)
            return grounded_outputs(query.prompt + session.in_context(query), image)
        kosmos = ground_phrases(session.model, model_pixels(session.model, image), [phrase])[0]
        return grounded_outputs(kosmos, image)
