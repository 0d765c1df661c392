"""The describe-and-speak workflow: a composite of two others, caption then text-to-speech.

It runs them through the registry, as any caller would, so each keeps its own checks; the picture's
caption is the text that is spoken."""
from __future__ import annotations

from typing import Any

from PIL import Image
from pydantic import Field

from latentlm.workflows.registry import Fields, Picture, Recording, Workflow, get, register
from latentlm.workflows.text_to_speech import AudioOutputs


class DescribeAndSpeakInputs(Fields):
    image: Picture
    seed: int = Field(0, ge=0, le=2**63 - 1)
    voice: Recording = None  # as text-to-speech: a reference recording, with voice_text its words
    voice_text: str | None = None


class SpokenDescription(AudioOutputs):
    text: str  # the caption that was spoken


@register
class DescribeAndSpeak(Workflow):
    name = "describe-and-speak"
    description = "Describe a picture, then speak the description (caption, then text-to-speech)."
    Inputs = DescribeAndSpeakInputs
    Outputs = SpokenDescription

    def run(self, session, image: Image.Image, seed: int, voice: Any, voice_text: str | None) -> SpokenDescription:
        text = get("caption").call(session, {"image": image}).text
        spoken = get("text-to-speech").call(session, {"text": text, "seed": seed, "voice": voice,
                                                      "voice_text": voice_text})
        return SpokenDescription(text=text, audio=spoken.audio, sample_rate=spoken.sample_rate)
