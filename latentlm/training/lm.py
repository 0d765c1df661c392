"""`latentlm train`: train a LatentLM on a mixture of shapes-world tasks.

Text-to-image (`caption <image> z </image>`: diffusion loss on z), the understanding tasks of
`latentlm.data.tasks` (`<image> mu </image> prompt answer`: text loss only) and, with an audio codec,
text-to-speech (`latentlm.data.tts`: `text <audio> z </audio>`) share one model. Each sequence of a
batch draws its task by the config's weights.

The image codec is frozen: the posterior means of the training scenes are encoded once and cached.
For generation each step draws the sigma-VAE noise afresh (z = mu + sigma * eps, sigma per sample),
so the model learns to continue from exactly the kind of latent it will sample; a picture that is
read enters as its means mu, as at inference.
"""
from __future__ import annotations

import random
from typing import Literal
from pathlib import Path

import torch
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentlm.backbones import BackboneConfig, with_kind
from latentlm.checkpoint import load_codec, load_weights, read_config, resolve_checkpoint
from latentlm.data.rendered import render_scenes, shapes_images
from latentlm.config_io import load_yaml_config
from latentlm.diffusion_head import DiffusionHeadConfig
from latentlm.errors import ConfigError
from latentlm.model import LatentLM
from latentlm.model_config import ModelConfig
from latentlm.sequence import Batch, Latent, Text, frame, shard_batch
from latentlm.data.shapes import rescale, scene_for
from latentlm.data.tasks import (BOXED_KINDS, QUESTION_KINDS, REASONED_KINDS, UNDERSTANDING_TASKS, boxed_answer,
                                 draw_example)
from latentlm.data.in_context import ICLConfig, demonstration, task_key
from latentlm.data.tts import TTSDataConfig, encode_corpus, tts_sequence
from latentlm.tokenizer import TextTokenizer
from latentlm.training.grow_depth import grow_blocks
from latentlm.training.launch import launch
from latentlm.training.trainer import OptimConfig, process_state, train


TASKS = ("t2i", *UNDERSTANDING_TASKS, "tts")
RESCALE_TRIES = 20  # draws of scenes for an enlarged in-context sequence before it keeps its own scale
ROWS_PER_PASS = 8  # rows a backbone pass takes in training (Batch.passes)


class LMDataConfig(BaseModel):
    n_train: int = Field(20_000, ge=1)
    size_drop: float = Field(0.3, ge=0, le=1)  # drop "small"/"large" from single-object captions
    # Task -> weight in the mixture: "t2i" (text-to-image) and the understanding tasks.
    tasks: dict[str, float] = Field(default_factory=lambda: {"t2i": 1.0})
    speech: TTSDataConfig = TTSDataConfig()  # used by the "tts" task
    icl: ICLConfig = ICLConfig()  # in-context batches: demonstrations before the query (latentlm.data.in_context)
    boxed_answers: bool = False  # relation and "what is left of ..." answers follow the objects' boxes (tasks.boxed_answer)
    # ... and state what the boxes show before answering (needs boxed_answers), for these question kinds
    # (some of tasks.REASONED_KINDS: colour answers then box and name their object; other kinds answer plainly)
    reasoned_answers: bool = False
    reasoned_kinds: tuple[str, ...] = REASONED_KINDS
    # a reasoned colour answer's form (data.tasks.boxed_answer)
    colour_answer: Literal["box_and_name", "grounded", "caption", "caption_stated", "caption_asked_first",
                           "caption_checked"] = "box_and_name"
    # Question kind -> weight among questions (1 where not given; uniform when empty), e.g. {colour: 3}
    question_weights: dict[str, float] = Field(default_factory=dict)
    # < 1: a colour question about a two-object scene's first object is kept with this probability (tasks.draw_example)
    colour_first_keep: float = Field(1.0, gt=0, le=1)

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}: use some of {list(TASKS)}")
        if not tasks or any(w < 0 for w in tasks.values()) or sum(tasks.values()) <= 0:
            raise ValueError("give each task a weight >= 0, with a positive total")
        return tasks

    @field_validator("question_weights")
    @classmethod
    def _known_kinds(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(QUESTION_KINDS))
        if unknown:
            raise ValueError(f"unknown question kind(s) {unknown}: use some of {list(QUESTION_KINDS)}")
        if any(w < 0 for w in weights.values()):
            raise ValueError("give each question kind a weight >= 0")
        return weights

    @field_validator("reasoned_kinds")
    @classmethod
    def _reasoned_kinds(cls, kinds: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(kinds) - set(REASONED_KINDS))
        if unknown:
            raise ValueError(f"reasoned_kinds {unknown}: these question kinds have no reasoned answer; use some of "
                             f"{list(REASONED_KINDS)}")
        return kinds

    @model_validator(mode="after")
    def _reasons_follow_boxes(self) -> "LMDataConfig":
        if self.reasoned_answers and not self.boxed_answers:
            raise ValueError("reasoned_answers states a relation read off the boxes: set boxed_answers: true too")
        return self


class LMTrainConfig(BaseModel):
    tokenizer: str  # path of tokenizer.model
    codec: str  # image codec checkpoint directory
    audio_codec: str | None = None  # audio sigma-VAE checkpoint directory: needed by the "tts" task
    backbone: BackboneConfig = BackboneConfig()
    head: DiffusionHeadConfig = DiffusionHeadConfig()
    cfg_dropout: float = Field(0.1, ge=0, lt=1)
    text_loss_weight: float = Field(0.1, ge=0)
    data: LMDataConfig = LMDataConfig()
    train: OptimConfig = OptimConfig()
    # A saved LatentLM (e.g. runs/x/final) whose weights start this run: a second, fine-tuning stage.
    init_from: str | None = None
    # Blocks of the init_from model each followed by a zero-output copy of itself (training.grow_depth):
    # the run's backbone.n_layers is then the saved one's plus as many.
    init_grow: list[int] = Field(default_factory=list)
    # Parameter-name prefixes that train (e.g. [diffusion.]: the image diffusion head alone, the rest frozen,
    # so what the frozen parts do, such as reading, stays exactly as it was); empty: everything trains.
    trainable: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _grow_needs_a_model(self) -> "LMTrainConfig":
        if self.init_grow and not self.init_from:
            raise ValueError("init_grow grows the init_from model: set init_from, or drop init_grow")
        return self

    @model_validator(mode="after")
    def _speech_needs_a_codec(self) -> "LMTrainConfig":
        if self.data.tasks.get("tts") and not self.audio_codec:
            raise ValueError("the tts task needs an audio codec: set audio_codec to a trained audio sigma-VAE "
                             "(latentlm train-codec latentlm/configs/speech-vae.yaml)")
        return self


def caption_variant(caption: str, rng: random.Random, size_drop: float) -> str:
    words = caption.split()
    if len(words) == 4 and words[1] in ("small", "large") and rng.random() < size_drop:
        return " ".join([words[0]] + words[2:])
    return caption


@torch.no_grad()
def encode_scenes(codec: nn.Module, n: int, batch_size: int = 256) -> Tensor:
    """Posterior means of the first `n` train scenes: [n, N, latent_dim]."""
    out = []
    for start in tqdm(range(0, n, batch_size), desc="encode scenes", leave=False):
        idx = list(range(start, min(n, start + batch_size)))
        out.append(codec.encode(shapes_images("train", idx)))
    return torch.cat(out)


class LatentLMTask:
    def __init__(self, config: LMTrainConfig, cache_dir: Path) -> None:
        self.config = config
        self.tokenizer = TextTokenizer(config.tokenizer)
        self.codec = load_codec(config.codec)
        self.audio_codec = load_codec(config.audio_codec) if config.audio_codec else None
        # The model gets its own copies (loaded again: weight-normed codecs cannot be deep-copied): batches are
        # built on the CPU with these, wherever the model trains.
        codecs = {"image": load_codec(config.codec)} | (
            {"audio": load_codec(config.audio_codec)} if config.audio_codec else {})
        model_config = ModelConfig(
            vocab_size=self.tokenizer.vocab_size, latent_dim=self.codec.latent_dim,
            audio_latent_dim=self.audio_codec.latent_dim if self.audio_codec else None,
            image_tokens=self.codec.tokens_per_image, max_slots=self.codec.tokens_per_image,
            backbone=config.backbone, head=config.head, cfg_dropout=config.cfg_dropout,
            text_loss_weight=config.text_loss_weight, codecs={m: f"{m}_codec" for m in codecs},
            reads=any(config.data.tasks.get(t) for t in UNDERSTANDING_TASKS),
            voice_prompt_form=config.data.speech.prompt_form, audio_input_noise=config.data.speech.input_noise,
        )
        self.model = LatentLM(model_config, self.tokenizer, codecs)
        if config.init_from:
            self._init_from(resolve_checkpoint(config.init_from), model_config)  # a folder or a shipped name
        if config.trainable:
            self._freeze_all_but(config.trainable)
        self.mu = self._cached_means(Path(cache_dir) / "scene_means.pt")
        self.scenes = [scene_for("train", i) for i in range(config.data.n_train)]
        self.task_names = list(config.data.tasks)
        self.task_weights = [config.data.tasks[t] for t in self.task_names]
        self.speech = self._speech_corpus(Path(cache_dir)) if config.data.tasks.get("tts") else None

    def _speech_corpus(self, cache_dir: Path):
        from latentlm.data.speech import VOICES

        speech = self.config.data.speech
        corpus = encode_corpus(self.audio_codec, speech.n_train, cache_dir)
        max_frames = int(speech.max_prompt_seconds * self.audio_codec.frames_per_second)
        corpus.index_prompts(max_frames, {v.name for v in VOICES if v.held_out})
        return corpus

    def _init_from(self, directory: Path, model_config: ModelConfig) -> None:
        """Load a trained LatentLM's weights; its architecture must be the one this config builds.

        The vocabulary may have grown at its end (tokens appended to the tokenizer): the old rows
        keep their weights and the new ones start fresh."""
        saved = ModelConfig.model_validate(read_config(directory))
        arch = {"latent_dim", "image_tokens", "max_slots", "backbone", "head"}
        new_speech = model_config.audio_latent_dim and not saved.audio_latent_dim  # a speech head starts fresh
        if not new_speech:
            arch.add("audio_latent_dim")
        ours, theirs = model_config.model_dump(include=arch), saved.model_dump(include=arch)
        grow = self.config.init_grow
        if grow:
            theirs["backbone"]["n_layers"] += len(grow)
            if new_speech or saved.vocab_size != model_config.vocab_size:
                raise ConfigError("init_grow: grow a model in a stage that keeps its vocabulary and adds no speech")
        diff = sorted(k for k in arch if ours[k] != theirs[k])
        if saved.vocab_size > model_config.vocab_size:
            diff.append("vocab_size")
        if diff:
            raise ConfigError(
                f"init_from: {directory} holds a model whose {', '.join(diff)} differ from this config's; "
                "start from a checkpoint of the same architecture (and tokenizer), or drop init_from"
            )
        if saved.reads:  # a stage without reading tasks starts from a model that reads: it still does
            self.model.config.reads = True
        if grow:
            self._load_grown(directory, grow)
            return
        load_weights(self.model, directory, exclude=("codecs.",), grow_rows=("embed.weight", "lm_head.weight"),
                     new_parts=("audio_in.", "audio_diffusion.") if new_speech else ())

    def _load_grown(self, directory: Path, after: list[int]) -> None:
        """The saved model's weights with zero-output copies of blocks `after` inserted (grow_depth)."""
        source = LatentLM.from_pretrained(directory)
        grow_blocks(source.backbone, after)
        state = {k: v for k, v in source.state_dict().items() if not k.startswith("codecs.")}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("codecs.")]
        if missing or unexpected:  # the arch check above makes this a bug, not a user error
            raise RuntimeError(f"grown weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")

    def _freeze_all_but(self, prefixes: list[str]) -> None:
        """Only parameters whose names start with one of `prefixes` keep requires_grad (the optimizer takes
        those alone)."""
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        unmatched = [p for p in prefixes if not any(n.startswith(p) for n in names)]
        if unmatched:
            tops = sorted({n.split(".")[0] + "." for n in names})
            raise ConfigError(f"trainable: {unmatched} name no trainable parameter of this model; use prefixes of "
                              f"its parameter names, such as {tops}")
        for name, param in self.model.named_parameters():
            param.requires_grad_(any(name.startswith(p) for p in prefixes))

    def _cached_means(self, path: Path) -> Tensor:
        n = self.config.data.n_train
        if path.is_file():
            mu = torch.load(path)
            if mu.shape[0] == n:
                return mu
        mu = encode_scenes(self.codec, n)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(mu, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        return mu

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> Batch:
        """Process `rank`'s shard of the step's global batch, a pure function of (seed, `step`): the same
        step always gives the same global batch, whatever the process count (each process builds all its
        sequences, which is cheap next to the model, and collates its own rows).

        Seed 0 walks the scenes from the first; another seed (a later stage) starts elsewhere and
        draws other noise, tasks and caption variants."""
        key = step + self.config.train.seed * 1_000_003
        rng = random.Random(key)
        gen = torch.Generator().manual_seed(key)
        icl = self.config.data.icl
        if icl.every and step % icl.every == icl.every - 1:
            seqs = self._in_context_sequences(max(1, batch_size // icl.batch_divisor), rng, gen)
        else:
            seqs = self._mixture_sequences(step, batch_size, rng, gen)
        return shard_batch(seqs, rank, world, key, self.model.config.modalities, self.model.config.latent_width,
                           self.tokenizer.pad_id)

    def _mixture_sequences(self, step: int, batch_size: int, rng: random.Random, gen: torch.Generator):
        """The step's global batch of sequences, each of a task drawn by the mixture's weights."""
        n = self.config.data.n_train
        first = self.config.train.seed * 7_919
        idx = torch.tensor([(first + step * batch_size + j) % n for j in range(batch_size)])  # [B]
        mu = self.mu[idx]  # [B, N, D]
        sampled = self.codec.normalize(self.codec.perturb(mu, gen))  # generation targets
        means = self.codec.normalize(mu)  # pictures that are read
        tasks = rng.choices(self.task_names, self.task_weights, k=batch_size)
        return [self._utterance(first + step * batch_size + j, rng, gen) if task == "tts"
                else self._sequence(task, self.scenes[i], sampled[j], means[j], rng)
                for j, (i, task) in enumerate(zip(idx.tolist(), tasks))]

    def _utterance(self, k: int, rng: random.Random, gen: torch.Generator):
        """A TTS example of utterance k mod n (its latents drawn afresh: z = mu + target_noise * sigma * eps)."""
        codec, speech = self.audio_codec, self.config.data.speech
        i = k % len(self.speech)
        mu = self.speech.means[i][None]  # [1, T, D]
        z = mu + speech.target_noise * (codec.perturb(mu, gen) - mu)  # the noise drawn either way: same streams
        target = codec.normalize(z)[0]  # [T, D]
        return tts_sequence(self.speech, i, target, codec.normalize, self.tokenizer, rng, self.config.cfg_dropout,
                            speech.voice_prompt, speech.prompt_form)

    def _sequence(self, task: str, scene, sampled: Tensor, means: Tensor, rng: random.Random):
        return self._query(task, scene, sampled, means, rng)[0]

    def _query(self, task: str, scene, sampled: Tensor, means: Tensor, rng: random.Random):
        """(segments from <s> to </s>, the task key its demonstrations share)."""
        tok = self.tokenizer
        if task == "t2i":  # caption <image> z </image>, the caption dropped for classifier-free guidance
            drop = rng.random() < self.config.cfg_dropout
            text = [] if drop else tok.encode(caption_variant(scene.caption, rng, self.config.data.size_drop))
            return [Text([tok.bos_id] + text), *frame("image", sampled, tok.token_id), Text([tok.eos_id])], task
        # <image> mu </image> prompt answer
        example = draw_example(scene, task, rng, self.config.data.question_weights, self.config.data.colour_first_keep)
        answer = example.answer
        reasoned = self.config.data.reasoned_answers
        boxed_kinds = self.config.data.reasoned_kinds if reasoned else BOXED_KINDS
        if self.config.data.boxed_answers and example.task.removeprefix("vqa:") in boxed_kinds:
            answer = boxed_answer(scene, example, reasoned=reasoned, colour=self.config.data.colour_answer)
        text = tok.encode(example.prompt) + tok.encode(answer) + [tok.eos_id]
        segments = [Text([tok.bos_id]), *frame("image", means, tok.token_id, target=False), Text(text)]
        return segments, task_key(task, example.task)

    def _in_context_sequences(self, size: int, rng: random.Random, gen: torch.Generator):
        """`size` sequences of k demonstrations and a query, all of one task each (text-to-speech aside)."""
        tok, n, icl = self.tokenizer, self.config.data.n_train, self.config.data.icl
        names = [t for t in self.task_names if t != "tts"]
        weights = [self.config.data.tasks[t] for t in names]
        seqs = []
        for task in rng.choices(names, weights, k=size):
            picks = rng.sample(range(n), rng.randint(*icl.demos) + 1)  # the query's scene last
            scenes, mu = self._pictures(picks, rng)  # [k + 1], [k + 1, N, D]
            sampled = self.codec.normalize(self.codec.perturb(mu[-1:], gen))[0]
            query, key = self._query(task, scenes[-1], sampled, self.codec.normalize(mu[-1]), rng)
            demos = [seg for scene, m in zip(scenes[:-1], mu[:-1])
                     for seg in demonstration(key, scene, self.codec.normalize(m), tok, rng)]
            head = Text(query[0].ids[1:])  # the query without its <s>
            seqs.append([Text([tok.bos_id]), *demos, head, *query[1:]])
        return seqs

    def _pictures(self, picks: list[int], rng: random.Random) -> tuple[list, Tensor]:
        """The scenes of one in-context sequence and their latent means [k, N, D]: the cached ones, or, for
        a share `data.icl.shrink` of sequences, all rescaled by one drawn factor and encoded afresh."""
        icl = self.config.data.icl
        if icl.shrink and rng.random() < icl.shrink:
            factor = rng.uniform(*icl.shrink_range)
            scenes = [self._rescaled(j, factor, rng) for j in picks]
            if None not in scenes:
                with torch.no_grad():
                    return scenes, self.codec.encode(render_scenes(scenes))
        return [self.scenes[j] for j in picks], self.mu[picks]

    def _rescaled(self, j: int, factor: float, rng: random.Random):
        """Scene j rescaled, or, where an enlargement does not fit it, another drawn scene that it fits (None
        after RESCALE_TRIES draws)."""
        for _ in range(RESCALE_TRIES):
            scaled = rescale(self.scenes[j], factor)
            if scaled is not None:
                return scaled
            j = rng.randrange(self.config.data.n_train)
        return None

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """The batch's loss, taken in passes of ROWS_PER_PASS rows of similar length (`Batch.passes`: ~12% padding
        instead of ~30% on stage 6's batches, 10% faster steps): the same loss, as each pass's terms are its
        shares of the batch's means and each row's noise comes from its own seed."""
        total, logs = 0.0, {}
        for part in batch.passes(ROWS_PER_PASS):
            loss, part_logs = model.loss(part)
            total = total + loss
            logs = {k: logs.get(k, 0.0) + v for k, v in part_logs.items()}
        return total, logs

    def export(self, model: nn.Module, out_dir: Path) -> None:
        model.save_pretrained(out_dir)


def check_world(config: LMTrainConfig, world: int) -> None:
    """Every batch of the run must split evenly over `world` processes (in-context batches are smaller)."""
    size, icl = config.train.batch_size, config.data.icl
    if size % world:
        raise ConfigError(f"train.batch_size {size} does not split over {world} processes: use a multiple of {world}")
    if icl.every and max(1, size // icl.batch_divisor) % world:
        raise ConfigError(f"data.icl: in-context batches of {max(1, size // icl.batch_divisor)} sequences do not "
                          f"split over {world} processes: change train.batch_size or data.icl.batch_divisor")


def train_lm(
    config_path: str | Path, out_dir: str | Path, resume: bool = False, backbone: str | None = None,
    num_processes: int = 1, **kwargs
) -> Path:
    """Train from a YAML config; `backbone` overrides the config's backbone kind. `num_processes` > 1 runs
    it in that many local processes (`latentlm.training.launch`); under torchrun each process calls this."""
    if num_processes > 1:
        return launch(train_lm, (config_path, out_dir), dict(resume=resume, backbone=backbone, **kwargs),
                      num_processes)
    config = load_yaml_config(config_path, LMTrainConfig)
    if backbone is not None:
        try:  # shared fields carry over; a set field the new kind lacks is an error (n_kv_heads for retnet)
            config.backbone = with_kind(config.backbone, backbone)
        except ValidationError as err:
            raise ConfigError(f"--backbone {backbone}: {err.errors()[0]['msg']}; change the config's backbone "
                              "section to suit it") from None
    state = process_state()
    check_world(config, state.num_processes)
    torch.manual_seed(config.train.seed)  # the model's initial weights follow the config's seed
    with state.main_process_first():  # the main process fills the run folder's caches, the others read them
        task = LatentLMTask(config, Path(out_dir))
    return train(task, config.train, out_dir, resume=resume, **kwargs)
