"""`latentlm train-baseline`: train the codec-token TTS baseline (`latentlm.codec_lm.CodecLM`, VALL-E style).

The data are those of our text-to-speech task (`latentlm.data.tts`): the first `speech.n_train` utterances
of the speech train split (the same texts, voices and splits), the same voice-prompt rule (with
probability `speech.voice_prompt`, another utterance of the same, not held-out, voice at most
`speech.max_prompt_seconds` long, read with its transcript). The waves are synthesised once
(`SpeechClips`, cached in the run folder as `speech_train_<n>.npz`, the file our LatentLM run caches too:
copy or link it in to skip the synthesis) and encoded once by the frozen EnCodec tokenizer
(`speech_codes_<n>.pt`, keyed to the tokenizer's weights).

A batch is a pure function of (seed, step): utterances in order from a seed-dependent start (as the
LatentLM task walks its corpus), a voice prompt and a NAR stage (codebook 2..n_q) drawn per utterance.
Every utterance trains both the AR (codebook 1) and the NAR (its stage). No text dropout: VALL-E
samples without classifier-free guidance.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, Field, field_validator
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentlm.backbones import BackboneConfig
from latentlm.checkpoint import WEIGHTS_FILE, load_codec, sha256_file
from latentlm.codec_lm import CodecBatch, CodecLM, CodecLMConfig, Utterance
from latentlm.config_io import load_yaml_config
from latentlm.data.tts import SpeechCorpus, TTSDataConfig
from latentlm.errors import ConfigError
from latentlm.tokenizer import TextTokenizer
from latentlm.training.launch import launch
from latentlm.training.trainer import OptimConfig, process_state, shard, train


class CodecLMTrainConfig(BaseModel):
    tokenizer: str  # path of tokenizer.model (the LatentLM's)
    codec: str  # EnCodec tokenizer checkpoint folder (latentlm train-codec latentlm/configs/speech-encodec.yaml)
    n_q: int | None = Field(None, ge=2)  # codebooks modelled (the first n_q); None: all of the codec's
    backbone: BackboneConfig = BackboneConfig()  # of the AR and of the NAR
    max_audio_per_token: int = Field(16, ge=1)
    speech: TTSDataConfig = TTSDataConfig()
    train: OptimConfig = OptimConfig()

    @field_validator("speech")
    @classmethod
    def _codes_have_no_noise(cls, speech: TTSDataConfig) -> TTSDataConfig:
        for name, default in (("target_noise", 1.0), ("input_noise", 0.0)):
            if getattr(speech, name) != default:
                raise ValueError(f"speech.{name} is about LatentLM's continuous latents; the baseline's codes have "
                                 "none: drop it")
        return speech


@dataclass
class CodeCorpus(SpeechCorpus):
    """A `SpeechCorpus` whose per-utterance tensors (`means`) are codec codes [T, n_q_codec] (int16), not latents."""

    def codes(self, i: int, n_q: int) -> Tensor:
        """Utterance i's first n_q codebooks: [n_q, T] long."""
        return self.means[i][:, :n_q].T.long()


@torch.no_grad()
def encode_codes(codec: nn.Module, n: int, cache_dir: Path, codec_dir: str | Path, progress: bool = True) -> CodeCorpus:
    """The first `n` train utterances with their codes, cached in `cache_dir/speech_codes_<n>.pt` (with the
    codec's weights hash: another codec encodes again)."""
    from latentlm.data.speech import speech_text, speech_voice
    from latentlm.training.codec import SpeechClips

    path = Path(cache_dir) / f"speech_codes_{n}.pt"
    codec_sha = sha256_file(Path(codec_dir) / WEIGHTS_FILE)
    if path.is_file():
        saved = torch.load(path)
        if saved.get("codec_sha") == codec_sha:
            return CodeCorpus(saved["texts"], saved["voices"], saved["codes"])
    clips = SpeechClips.load_or_make(n, Path(cache_dir) / f"speech_train_{n}.npz", progress=progress)
    codes = [codec.encode(clips.wave(i)[None]).T.to(torch.int16)
             for i in tqdm(range(n), desc="encode speech codes", disable=not progress)]  # [T, n_q] each
    texts = [speech_text("train", i)[0] for i in range(n)]
    voices = [speech_voice("train", i).name for i in range(n)]
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"texts": texts, "voices": voices, "codes": codes, "codec_sha": codec_sha}, tmp)
    tmp.replace(path)
    return CodeCorpus(texts, voices, codes)


class CodecLMTask:
    def __init__(self, config: CodecLMTrainConfig, run_dir: Path, progress: bool = True) -> None:
        from latentlm.data.speech import VOICES

        self.config = config
        self.tokenizer = TextTokenizer(config.tokenizer)
        codec = load_codec(config.codec)
        if getattr(codec, "n_q", None) is None:
            raise ConfigError(f"codec: {config.codec} is not an EnCodec tokenizer (kind encodec_tokenizer); train "
                              "one with `latentlm train-codec latentlm/configs/speech-encodec.yaml`")
        n_q = config.n_q or codec.n_q
        if n_q > codec.n_q:
            raise ConfigError(f"n_q: {n_q}, but the codec {config.codec} has {codec.n_q} codebooks")
        self.model = CodecLM(CodecLMConfig(vocab_size=self.tokenizer.vocab_size, n_q=n_q, bins=codec.bins,
                                           backbone=config.backbone, max_audio_per_token=config.max_audio_per_token),
                             self.tokenizer, codec)
        self.corpus = encode_codes(codec, config.speech.n_train, run_dir, config.codec, progress)
        max_frames = int(config.speech.max_prompt_seconds * codec.frames_per_second)
        self.corpus.index_prompts(max_frames, {v.name for v in VOICES if v.held_out})

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> CodecBatch:
        """Process `rank`'s shard of the step's global batch, a pure function of (seed, `step`): the same step
        always gives the same global batch, whatever the process count."""
        seed, n, n_q = self.config.train.seed, len(self.corpus), self.model.config.n_q
        rng = random.Random(step + seed * 1_000_003)
        first = seed * 7_919
        rows = [self.utterance((first + step * batch_size + j) % n, rng) for j in range(batch_size)]
        stages = [rng.randint(1, n_q - 1) for _ in rows]
        return CodecBatch(shard(rows, rank, world), shard(stages, rank, world))

    def utterance(self, i: int, rng: random.Random) -> Utterance:
        """Utterance i, with a voice prompt (another utterance of its voice) with probability speech.voice_prompt."""
        corpus, tok, n_q = self.corpus, self.tokenizer, self.model.config.n_q
        pool = [j for j in corpus.prompt_pool.get(corpus.voices[i], ()) if j != i]
        prompt = rng.choice(pool) if pool and rng.random() < self.config.speech.voice_prompt else None
        if prompt is None:
            return Utterance(tok.encode(corpus.texts[i]), corpus.codes(i, n_q))
        return Utterance(tok.encode(corpus.texts[i]), corpus.codes(i, n_q), tok.encode(corpus.texts[prompt]),
                         corpus.codes(prompt, n_q))

    def loss(self, model: nn.Module, batch: CodecBatch) -> tuple[Tensor, dict[str, float]]:
        return model(batch)  # CodecLM.forward is its loss (works through accelerate's wrappers)

    def export(self, model: nn.Module, out_dir: Path) -> None:
        model.save_pretrained(out_dir)


def train_codec_lm(config_path: str | Path, out_dir: str | Path, resume: bool = False, num_processes: int = 1,
                   **kwargs) -> Path:
    """Train the baseline from a YAML config; returns `out_dir/final` (or the last checkpoint if stopped early).
    `num_processes` > 1 runs it in that many local processes (`latentlm.training.launch`)."""
    if num_processes > 1:
        return launch(train_codec_lm, (config_path, out_dir), dict(resume=resume, **kwargs), num_processes)
    config = load_yaml_config(config_path, CodecLMTrainConfig)
    state = process_state()
    torch.manual_seed(config.train.seed)  # the model's initial weights follow the config's seed
    with state.main_process_first():  # the main process fills the run folder's speech caches, the others read them
        task = CodecLMTask(config, Path(out_dir), progress=kwargs.get("progress", True) and state.is_main_process)
    return train(task, config.train, out_dir, resume=resume, **kwargs)
