"""Turn a free-form request into a workflow call.

Today the planner knows one workflow, text-to-image; it strips the instruction words around the
description ("draw", "an image of", ...) and hands the description on. Requests it cannot serve
get a clear error rather than a wrong answer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from latentlm.errors import PromptError

_INSTRUCTION = re.compile(
    r"^(please\s+)?(draw|generate|make|create|paint|render|show( me)?|give me)?\s*"
    r"((an?\s+)?(image|picture|drawing|painting|photo)\s+(of|with)\s+)?",
    re.IGNORECASE,
)
_SPEECH = re.compile(r"^(please\s+)?(say|speak|read( out)?|pronounce)\b", re.IGNORECASE)
_QUESTION = re.compile(r"\?\s*$|^(what|where|which|how|is|are|describe|caption)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Plan:
    workflow: str
    prompt: str


def plan(request: str) -> Plan:
    """'Draw a red circle.' -> Plan('text_to_image', 'a red circle')."""
    if not isinstance(request, str) or not request.strip():
        raise PromptError("the prompt is empty; say what to draw, e.g. 'draw a red circle above a blue square'")
    text = " ".join(request.strip().split())
    if _SPEECH.match(text):
        raise PromptError("speech requests need the text-to-speech workflow, which this release does not ship yet")
    if _QUESTION.search(text):
        raise PromptError("questions about pictures need the understanding workflow, which this release does not ship yet")
    description = _INSTRUCTION.sub("", text).strip().rstrip(".!").strip().lower()
    if not description:
        raise PromptError(f"{request!r} says what to do but not what to draw; add a description, e.g. 'a red circle'")
    return Plan("text_to_image", description)
