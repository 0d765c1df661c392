"""The ask workflow: a picture and a question in, a short answer out."""
from __future__ import annotations

from PIL import Image

from latentlm.understanding import answer_text, ask as ask_pictures
from latentlm.vocabulary import question_notes
from latentlm.workflows.ground import model_pixels
from latentlm.workflows.icl_tasks import question_query
from latentlm.workflows.registry import Fields, Picture, Words, Workflow, register


class AskInputs(Fields):
    image: Picture
    question: Words


class TextOutputs(Fields):
    text: str


@register
class Ask(Workflow):
    name = "ask"
    description = "Answer a question about a picture, e.g. 'what colour is the circle?'."
    Inputs = AskInputs
    Outputs = TextOutputs

    def notes(self, arguments: dict) -> list[str]:
        value = arguments.get("question")
        return question_notes(value) if isinstance(value, str) else []

    def run(self, session, image: Image.Image, question: str) -> TextOutputs:
        if session.prompting != "direct":  # the answer without the boxes a boxed answer puts first, as `ask`
            return TextOutputs(text=answer_text(session.in_context(question_query(image, question))))
        return TextOutputs(text=ask_pictures(session.model, model_pixels(session.model, image), [question])[0])
