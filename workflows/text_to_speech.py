"""The text-to-speech workflow: words in, a 16 kHz waveform out, optionally in a prompted voice."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from latentlm.audio_io import load_audio
from latentlm.errors import PromptError
from latentlm.speech import (
    DEFAULT_SPEECH_CFG, DEFAULT_SPEECH_STEPS, DEFAULT_SPEECH_TEMPERATURE, generate_speech, speech_codec, voice_prompt,
)
from latentlm.workflows.registry import Fields, Recording, Words, Workflow, register


class TextToSpeechInputs(Fields):
    text: Words
    seed: int = Field(0, ge=0, le=2**63 - 1)
    voice: Recording = None  # a reference recording: a sound file path or a (wave, sample_rate) pair
    voice_text: str | None = None  # the words said in `voice` (default: the .txt file beside it)
    steps: int = Field(DEFAULT_SPEECH_STEPS, ge=1, le=1000)  # DPM-Solver++ steps per latent
    cfg_scale: float = Field(DEFAULT_SPEECH_CFG, ge=0)
    temperature: float = Field(DEFAULT_SPEECH_TEMPERATURE, gt=0)


class AudioOutputs(Fields):
    audio: Any  # float32 wave [T]
    sample_rate: int


def voice_transcript(voice, voice_text: str | None) -> str:
    """The words of a voice prompt: given, or read from `ref.txt` beside `ref.wav`."""
    from pathlib import Path

    if voice_text is not None and voice_text.strip():
        return voice_text
    if isinstance(voice, (str, Path)) and Path(voice).with_suffix(".txt").is_file():
        return Path(voice).with_suffix(".txt").read_text().strip()
    raise PromptError("a voice prompt needs the words said in it: pass voice_text (CLI: --voice-text), or put "
                      "them in a .txt file beside the recording")


@register
class TextToSpeech(Workflow):
    name = "text-to-speech"
    description = "Speak some words; voice= (a short recording, with its words) sets the speaker."
    Inputs = TextToSpeechInputs
    Outputs = AudioOutputs

    def run(self, session, text: str, seed: int, voice: Any, voice_text: str | None, steps: int, cfg_scale: float,
            temperature: float) -> AudioOutputs:
        reference = None
        if voice is not None:  # a bad recording or a missing transcript fails before the model loads
            reference = load_audio(voice), voice_transcript(voice, voice_text)
        model = session.speaker
        codec = speech_codec(model)
        prompt = voice_prompt(model, *reference[0], reference[1]) if reference else None
        wave = generate_speech(model, [text], prompt, steps, cfg_scale, seed, temperature)[0]
        return AudioOutputs(audio=wave, sample_rate=codec.sample_rate)
