"""`latentlm train-codec`: train a codec by the config's `kind`.

- `image_sigma_vae`: the image sigma-VAE on shapes-world scenes.
- `audio_sigma_vae`, `encodec_tokenizer`: the audio sigma-VAE or the EnCodec tokenizer on random crops of
  the speech train split (`latentlm.data.speech`). The first `data.n_train` utterances are synthesised
  once and cached in the run folder (`speech_train_<n>.npz`, 16-bit); a step's global batch is a pure
  function of (seed, step): one crop length for the step, then an utterance and an offset per row.

Under several processes each trains on its rows of the global batch (`trainer.shard`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field, field_validator, model_validator
from torch import Tensor, nn

from latentlm.checkpoint import load_codec, save_codec
from latentlm.codecs import CODECS, AudioSigmaVAE, EncodecTokenizer, ImageSigmaVAE, SigmaVAEConfig
from latentlm.config_io import load_yaml_config
from latentlm.errors import ConfigError
from latentlm.data.rendered import shapes_images
from latentlm.training.launch import launch
from latentlm.training.trainer import OptimConfig, process_state, shard, train

AUDIO_KINDS = ("audio_sigma_vae", "encodec_tokenizer")


class ShapesDataConfig(BaseModel):
    source: Literal["shapes"] = "shapes"  # set from `kind`
    n_train: int = Field(50_000, ge=1)  # scenes of the train split, cycled


class SpeechDataConfig(BaseModel):
    source: Literal["speech"] = "speech"  # set from `kind`
    n_train: int = Field(2000, ge=1)  # utterances of the speech train split, synthesised once into the run folder
    crop_seconds: tuple[float, float] = (1.0, 2.0)  # each step draws one crop length in [min, max]

    @field_validator("crop_seconds")
    @classmethod
    def _crop_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.1 <= v[0] <= v[1]:
            raise ValueError(f"crop_seconds={list(v)}: need 0.1 <= min <= max")
        return v


class CodecTrainConfig(BaseModel):
    kind: Literal["image_sigma_vae", "audio_sigma_vae", "encodec_tokenizer"] = "image_sigma_vae"
    codec: dict = Field(default_factory=dict)  # fields of the kind's config class (SigmaVAEConfig, ...)
    data: Annotated[ShapesDataConfig | SpeechDataConfig, Field(discriminator="source")] = ShapesDataConfig()
    train: OptimConfig = OptimConfig()
    stats_images: int = Field(512, ge=16)  # images used to measure the latent scale and bias
    stats_utterances: int = Field(256, ge=1)  # utterances used to measure the audio sigma-VAE's latent stats
    # Audio sigma-VAE: no sigma-noise for the first `noise_delay_steps`, then a linear ramp to full noise over
    # `noise_warmup_steps`. From step 0 at full noise the decoder learns to ignore z for good; without noise a
    # SEANet autoencoder starts to use z after ~200 steps (measured, tiny batch), then noise can come in.
    noise_delay_steps: int = Field(0, ge=0)
    noise_warmup_steps: int = Field(0, ge=0)
    # A trained codec folder of the same kind and architecture: its weights start this run, with this
    # config's fresh schedule (to continue a run whose schedule has ended).
    init_from: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _data_source_follows_kind(cls, values):
        if isinstance(values, dict) and (values.get("data") is None or isinstance(values["data"], dict)):
            source = "speech" if values.get("kind") in AUDIO_KINDS else "shapes"
            values = values | {"data": (values.get("data") or {}) | {"source": source}}
        return values

    def codec_config(self):
        _, config_cls = CODECS[self.kind]
        try:
            return config_cls(**self.codec)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"codec: {e}") from None


class ImageCodecTask:
    def __init__(self, config: CodecTrainConfig) -> None:
        self.config = config
        self.model = start_from(ImageSigmaVAE(config.codec_config()), config.init_from)

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> Tensor:
        """Process `rank`'s rows of the step's global batch: scenes step*batch_size + j of the cycled train split."""
        n = self.config.data.n_train
        return shapes_images("train", [(step * batch_size + j) % n for j in shard(range(batch_size), rank, world)])

    def loss(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        return model.loss(batch)

    def export(self, model: nn.Module, out_dir: Path) -> None:
        model.eval()
        images = shapes_images("train", list(range(self.config.stats_images)))
        model.set_latent_stats(images, torch.Generator().manual_seed(0))
        save_codec(model, out_dir)


def start_from(model: nn.Module, init_from: str | None) -> nn.Module:
    """`model` with the weights of the trained codec in `init_from` (checked), or as it is without one."""
    if not init_from:
        return model
    saved = load_codec(init_from)
    if isinstance(saved, AudioSigmaVAE) and isinstance(model, EncodecTokenizer):  # its SEANet only
        try:
            model.load_seanet(saved)
        except ValueError as e:
            raise ConfigError(f"init_from: {init_from}: {e}") from None
        return model
    if type(saved) is not type(model):
        raise ConfigError(f"init_from: {init_from} holds a {type(saved).__name__}, not a {type(model).__name__}; "
                          "start from a codec of this config's kind")
    try:
        model.load_state_dict(saved.state_dict())
    except RuntimeError as e:
        raise ConfigError(f"init_from: {init_from} holds a codec of another architecture "
                          f"({str(e).splitlines()[0]}); start from one built by the same codec config") from None
    return model


class SpeechClips:
    """Utterances 0..n-1 of a speech split as one 16-bit buffer, cached in a .npz file."""

    def __init__(self, audio: np.ndarray, offsets: np.ndarray) -> None:
        self.audio = torch.from_numpy(audio)  # int16 [total samples]
        self.offsets = offsets  # int64 [n + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def wave(self, i: int) -> Tensor:
        """Utterance i as float32 [T]."""
        return self.audio[self.offsets[i]: self.offsets[i + 1]].float() / 32767

    @classmethod
    def read(cls, cache: Path, n: int | None = None) -> SpeechClips | None:
        """The clips cached in `cache` (exactly `n` of them, when given); None if missing or unreadable."""
        try:
            with np.load(cache) as f:
                audio, offsets = f["audio"], f["offsets"]
        except (OSError, ValueError, KeyError):
            return None
        if (n is not None and len(offsets) != n + 1) or offsets[-1] != len(audio) or audio.dtype != np.int16:
            return None
        return cls(audio, offsets)

    @classmethod
    def load_or_make(cls, n: int, cache: Path | None, split: str = "train", progress: bool = True) -> SpeechClips:
        """Utterances 0..n-1 of `split`, from `cache` (`<stem>_<n>.npz`) or synthesised once and cached there.
        Utterance i is the same whatever n, so a smaller cache beside it (`<stem>_<m>.npz`, m < n) gives its
        first m and only the rest are synthesised."""
        found = cls.read(cache, n) if cache is not None and cache.is_file() else None
        if found is not None:
            return found
        from tqdm.auto import tqdm

        from latentlm.data.speech import speech_item

        first = cls._smaller_cache(cache, n) if cache is not None else None
        waves = [] if first is None else [first.audio.numpy()]
        lengths = [] if first is None else list(np.diff(first.offsets))
        for i in tqdm(range(len(lengths), n), desc=f"speech {split} (once)", disable=not progress, dynamic_ncols=True):
            wav = speech_item(split, i)[2]
            waves.append(np.round(np.clip(wav, -1, 1) * 32767).astype(np.int16))
            lengths.append(len(waves[-1]))
        audio = np.concatenate(waves)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + ".tmp.npz")
            np.savez(tmp, audio=audio, offsets=offsets)
            os.replace(tmp, cache)
        return cls(audio, offsets)

    @classmethod
    def _smaller_cache(cls, cache: Path, n: int) -> SpeechClips | None:
        """The largest readable `<stem>_<m>.npz` beside `cache` (`<stem>_<n>.npz`) with m < n, else None."""
        stem, _, count = cache.stem.rpartition("_")
        if not stem or count != str(n):
            return None
        counts = {path: path.stem.rpartition("_")[2] for path in cache.parent.glob(f"{stem}_*.npz")}
        sizes = sorted((int(m), path) for path, m in counts.items() if m.isdigit() and int(m) < n)
        for m, path in reversed(sizes):
            clips = cls.read(path, m)
            if clips is not None:
                return clips
        return None

    def crops(self, rng: np.random.Generator, batch_size: int, length: int) -> Tensor:
        """`batch_size` crops of `length` samples at random utterances and offsets; short ones are
        zero-padded on the right. [B, length] float32."""
        out = torch.zeros(batch_size, length)
        for b in range(batch_size):
            i = int(rng.integers(len(self)))
            start, end = int(self.offsets[i]), int(self.offsets[i + 1])
            if end - start > length:
                start += int(rng.integers(end - start - length + 1))
            piece = self.audio[start: min(end, start + length)]
            out[b, : len(piece)] = piece.float() / 32767
        return out


class AudioCodecTask:
    """Trains an audio codec (any audio kind of CODECS) on crops of the speech train split."""

    def __init__(self, config: CodecTrainConfig, run_dir: Path | None = None, progress: bool = True) -> None:
        self.config = config
        cls, _ = CODECS[config.kind]
        self.model = start_from(cls(config.codec_config()), config.init_from)
        n = config.data.n_train
        cache = Path(run_dir) / f"speech_train_{n}.npz" if run_dir is not None else None
        self.clips = SpeechClips.load_or_make(n, cache, progress=progress)

    def crop_length(self, rng: np.random.Generator) -> int:
        """A whole number of codec frames, about U(crop_seconds) long."""
        lo, hi = self.config.data.crop_seconds
        hop = self.model.hop_length
        frames = max(1, round(rng.uniform(lo, hi) * self.model.sample_rate / hop))
        return frames * hop

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> Tensor:
        """Process `rank`'s rows of the step's global batch (all crops are drawn, so the draws do not depend
        on the process count)."""
        self.step = step  # the sigma warm-up of `loss` follows the step of the batch
        rng = np.random.default_rng([self.config.train.seed, step])
        return shard(self.clips.crops(rng, batch_size, self.crop_length(rng)), rank, world)

    def loss(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        delay, warmup = self.config.noise_delay_steps, self.config.noise_warmup_steps
        if self.config.kind != "audio_sigma_vae" or not (delay or warmup):
            return model.loss(batch)
        fraction = min(1.0, max(0, getattr(self, "step", 0) - delay) / max(1, warmup))
        loss, logs = model.loss(batch, noise_fraction=fraction)
        return loss, logs | {"noise_fraction": fraction}

    def export(self, model: nn.Module, out_dir: Path) -> None:
        model.eval()
        if hasattr(model, "set_latent_stats"):
            k = min(self.config.stats_utterances, len(self.clips))
            model.set_latent_stats([self.clips.wave(i) for i in range(k)], torch.Generator().manual_seed(0))
        save_codec(model, out_dir)


def train_codec(config_path: str | Path, out_dir: str | Path, resume: bool = False, num_processes: int = 1,
                **kwargs) -> Path:
    """Train from a YAML config; `num_processes` > 1 runs it in that many local processes."""
    if num_processes > 1:
        return launch(train_codec, (config_path, out_dir), dict(resume=resume, **kwargs), num_processes)
    config = load_yaml_config(config_path, CodecTrainConfig)
    state = process_state()
    torch.manual_seed(config.train.seed)  # the model's initial weights follow the config's seed
    with state.main_process_first():  # the main process synthesises the speech cache, the others read it
        if config.kind in AUDIO_KINDS:
            progress = kwargs.get("progress", True) and state.is_main_process
            task = AudioCodecTask(config, Path(out_dir), progress=progress)
        else:
            task = ImageCodecTask(config)
    return train(task, config.train, out_dir, resume=resume, **kwargs)
