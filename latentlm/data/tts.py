"""Text-to-speech training examples for the LatentLM (docs/design.md §3).

    <s> TEXT <audio> z_1 .. z_T </audio> </s>                                   plain
    <s> PROMPT-TEXT TEXT <audio> p_1 .. p_K z_1 .. z_T </audio> </s>            with a voice prompt

A voice prompt is another utterance of the same speaker, read as its latent means (an input, as a
user's reference recording is at inference) and preceded by its own transcript, as in VALL-E's
zero-shot prompt; the model continues the span in that voice. Only voices outside the held-out set
serve as prompts, so prompting with a held-out voice measures what the model generalises. The target
latents are drawn afresh each step (z = mu + sigma * eps), as for pictures. With probability
`cfg_dropout` the texts are dropped (the unconditional stream: `<s><audio>`, voice prompt kept).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentlm.sequence import Latent, Sequence, Text


class TTSDataConfig(BaseModel):
    n_train: int = Field(4000, ge=2)  # utterances of the speech train split (synthesised once, cached)
    voice_prompt: float = Field(0.5, ge=0, le=1)  # share of examples with a voice prompt
    max_prompt_seconds: float = Field(4.0, gt=0)  # prompts are whole utterances at most this long


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
    voice_prompt: float,
) -> Sequence:
    """Utterance i as a TTS example; `target` [T, D] its normalised sampled latents, `normalize` the codec's."""
    audio, end = tok.token_id("<audio>"), tok.token_id("</audio>")
    text = tok.encode(corpus.texts[i])
    pool = [j for j in corpus.prompt_pool.get(corpus.voices[i], ()) if j != i]
    prompt = rng.choice(pool) if pool and rng.random() < voice_prompt else None
    drop = rng.random() < cfg_dropout
    prompt_text = tok.encode(corpus.texts[prompt]) if prompt is not None else []
    head = [tok.bos_id] + ([] if drop else prompt_text + text) + [audio]
    spoken = [Latent("audio", normalize(corpus.means[prompt]), target=False)] if prompt is not None else []
    return [Text(head), *spoken, Latent("audio", target), Text([end, tok.eos_id])]
