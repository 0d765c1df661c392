"""Text-to-speech training examples for the LatentLM (docs/design.md §3).

    <s> TEXT <audio> z_1 .. z_T </audio> </s>                                              plain
    <s> PROMPT-TEXT TEXT <audio> p_1 .. p_K z_1 .. z_T </audio> </s>                       prompt, "prefix"
    <s> PROMPT-TEXT <audio> p_1 .. p_K </audio> TEXT <audio> z_1 .. z_T </audio> </s>      prompt, "demonstration"

A voice prompt is another utterance of the same speaker, read as its latent means (an input, as a
user's reference recording is at inference) and preceded by its own transcript. In the "prefix" form
(VALL-E's zero-shot prompt) the two texts come first and the model continues the prompt's audio span,
so it must find where the prompt's words end inside one run of text. In the "demonstration" form the
prompt is a whole spoken example before the plain example (Kosmos-style interleaving): the words to
say sit right before their own span, as without a prompt, and the voice carries over from the earlier
span. Only voices outside the held-out set serve as prompts, so prompting with a held-out voice
measures what the model generalises. The target latents are drawn afresh each step
(z = mu + sigma * eps), as for pictures. With probability `cfg_dropout` the words to say are dropped
(the unconditional stream: `<s><audio>` plus the voice prompt; the prefix form drops the prompt's
transcript too, the demonstration form keeps that example whole).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentlm.sequence import Latent, Sequence, Text

PromptForm = Literal["prefix", "demonstration"]


class TTSDataConfig(BaseModel):
    n_train: int = Field(4000, ge=2)  # utterances of the speech train split (synthesised once, cached)
    voice_prompt: float = Field(0.5, ge=0, le=1)  # share of examples with a voice prompt
    max_prompt_seconds: float = Field(4.0, gt=0)  # prompts are whole utterances at most this long
    prompt_form: PromptForm = "prefix"  # where a voice prompt goes (the module doc); the model records it
    # LatentLM only: scale of the sigma-VAE's noise on the speech latents it trains on (inputs and targets):
    # 1 draws z = mu + sigma * eps as the codec was trained (LatentLM), 0 takes the posterior means mu.
    target_noise: float = Field(1.0, ge=0, le=1)
    # LatentLM only: the largest std (normalised units) of extra noise on the generated speech latents as the
    # model reads them, targets unchanged (ModelConfig.audio_input_noise); 0: inputs are the targets.
    input_noise: float = Field(0.0, ge=0, le=4)


@dataclass
class SpeechCorpus:
    """Utterances of the speech train split: text, voice name and codec latent means [N_i, D]."""

    texts: list[str]
    voices: list[str]
    means: list[Tensor]
    prompt_pool: dict[str, list[int]] = field(default_factory=dict)  # voice -> utterances usable as prompts

    def index_prompts(self, max_frames: int, held_out: set[str]) -> None:
        pool: dict[str, list[int]] = {}
        for i, (voice, mu) in enumerate(zip(self.voices, self.means)):
            if voice not in held_out and len(mu) <= max_frames:
                pool.setdefault(voice, []).append(i)
        self.prompt_pool = pool

    def __len__(self) -> int:
        return len(self.texts)


@torch.no_grad()
def encode_corpus(codec: nn.Module, n: int, cache_dir: Path, progress: bool = True) -> SpeechCorpus:
    """The first `n` train utterances with their latent means, cached in `cache_dir/speech_means_<n>.pt`."""
    from latentlm.data.speech import speech_text, speech_voice
    from latentlm.training.codec import SpeechClips

    path = Path(cache_dir) / f"speech_means_{n}.pt"
    if path.is_file():
        saved = torch.load(path)
        return SpeechCorpus(saved["texts"], saved["voices"], saved["means"])
    clips = SpeechClips.load_or_make(n, Path(cache_dir) / f"speech_train_{n}.npz", progress=progress)
    means = [codec.encode(clips.wave(i)[None])[0] for i in tqdm(range(n), desc="encode speech", disable=not progress)]
    corpus = SpeechCorpus([speech_text("train", i)[0] for i in range(n)],
                          [speech_voice("train", i).name for i in range(n)], means)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"texts": corpus.texts, "voices": corpus.voices, "means": corpus.means}, tmp)
    tmp.replace(path)
    return corpus


def tts_sequence(
    corpus: SpeechCorpus, i: int, target: Tensor, normalize, tok, rng: random.Random, cfg_dropout: float,
    voice_prompt: float, form: PromptForm = "prefix",
) -> Sequence:
    """Utterance i as a TTS example; `target` [T, D] its normalised sampled latents, `normalize` the codec's."""
    pool = [j for j in corpus.prompt_pool.get(corpus.voices[i], ()) if j != i]
    prompt = rng.choice(pool) if pool and rng.random() < voice_prompt else None
    drop = rng.random() < cfg_dropout
    text = [] if drop else tok.encode(corpus.texts[i])
    if prompt is None:
        return spoken_example(tok, text, None, target)
    said = tok.encode(corpus.texts[prompt])
    return spoken_example(tok, text, (said, normalize(corpus.means[prompt])), target, form, drop)


def spoken_example(tok, text: list[int], prompt: tuple[list[int], Tensor] | None, target: Tensor | None,
                   form: PromptForm = "prefix", drop: bool = False) -> Sequence:
    """`<s> ... </s>` of one utterance: `text` ids to say (empty: the unconditional stream), an optional voice
    prompt (its transcript ids, its normalised latents [K, D]) in `form`, and the target latents [T, D]
    (None: generation, the span left open). `drop`: the prefix form drops the prompt's transcript too."""
    audio, end = tok.token_id("<audio>"), tok.token_id("</audio>")
    tail = [Latent("audio", target), Text([end, tok.eos_id])] if target is not None else []
    if prompt is None:
        return [Text([tok.bos_id, *text, audio]), *tail]
    said, latents = prompt
    spoken = Latent("audio", latents, target=False)
    if form == "demonstration":
        return [Text([tok.bos_id, *said, audio]), spoken, Text([end, *text, audio]), *tail]
    return [Text([tok.bos_id, *([] if drop else said), *text, audio]), spoken, *tail]
