"""Turn a free-form request into workflow steps.

The rule planner knows the shipped workflows: text-to-image without a picture; caption, ask and
ground about a given picture. It strips the instruction words around what matters ("draw", "an image
of", "where is ...?") and hands that on. A request it cannot serve gets a clear error that lists what
it can do, rather than a wrong kind of output.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from latentlm.errors import PromptError

CAN_DO = ("draw a picture ('draw a red circle above a blue square'); about a given picture: describe it "
          "('describe this picture'), answer a question ('what colour is the circle?'), or find a thing "
          "('where is the blue square?')")

_INSTRUCTION = re.compile(
    r"^(please\s+)?(draw|generate|make|create|paint|render|show( me)?|give me)?\s*"
    r"((an?\s+)?(image|picture|drawing|painting|photo)\s+(of|with)\s+)?",
    re.IGNORECASE,
)
_SPEECH = re.compile(r"^(please\s+)?(say|speak|read( out)?|pronounce)\b", re.IGNORECASE)
_QUESTION = re.compile(r"\?\s*$|^(what|where|which|how|is|are|do|does|describe|caption)\b", re.IGNORECASE)
_CAPTION = re.compile(
    r"^(please\s+)?(describe|caption)\b|^what(\s+is|'s)\s+in\s+(the|this)\s+(picture|image)\b"
    r"|^what\s+do\s+you\s+see\b", re.IGNORECASE)
_GROUNDED = re.compile(r"\b(boxes|grounded|grounding|with\s+locations?|where\s+things\s+are)\b", re.IGNORECASE)
_LOCATE = re.compile(
    r"^(please\s+)?(where\s+is|where's|where\s+are|find|locate|point\s+to|show\s+me\s+where\s+is|"
    r"show\s+me\s+where)\s+(?P<phrase>.+?)[\s?.!]*$", re.IGNORECASE)


@dataclass(frozen=True)
class Step:
    workflow: str
    args: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"workflow": self.workflow, "args": dict(self.args)}


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]

    @property
    def workflow(self) -> str:
        """The workflow of the (first) step."""
        return self.steps[0].workflow

    def to_dict(self) -> dict:
        return {"steps": [s.to_dict() for s in self.steps]}


def _request_text(request: object) -> str:
    if not isinstance(request, str):
        raise PromptError(f"the request must be a string, not {type(request).__name__}; e.g. 'draw a red circle'")
    text = " ".join(request.strip().split())
    if not text:
        raise PromptError("the request is empty; say what to do, e.g. 'draw a red circle above a blue square'")
    return text


def plan(request: str, has_image: bool = False) -> Plan:
    """'Draw a red circle.' -> one text-to-image step with prompt 'a red circle'."""
    text = _request_text(request)
    if _SPEECH.match(text):
        raise PromptError("speech requests need the text-to-speech workflow, which this release does not ship yet; "
                          f"it can: {CAN_DO}")
    if has_image:
        return Plan((_about_picture(text),))
    if _QUESTION.search(text):
        raise PromptError(f"{text!r} is about a picture: pass one (Python: image=..., CLI: --image FILE); "
                          f"it can: {CAN_DO}")
    description = _INSTRUCTION.sub("", text).strip().rstrip(".!").strip().lower()
    if not description:
        raise PromptError(f"{request!r} says what to do but not what to draw; add a description, e.g. 'a red circle'")
    return Plan((Step("text-to-image", {"prompt": description}),))


def _about_picture(text: str) -> Step:
    located = _LOCATE.match(text)
    if located:
        return Step("ground", {"phrase": located.group("phrase").lower()})
    if _CAPTION.search(text):
        return Step("caption", {"grounded": bool(_GROUNDED.search(text))})
    if _QUESTION.search(text):
        return Step("ask", {"question": text.lower()})
    raise PromptError(f"with a picture, {text!r} is neither a question nor a request to describe or find "
                      f"something; it can: {CAN_DO}")
