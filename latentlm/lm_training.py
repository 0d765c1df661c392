"""`latentlm train`: train a LatentLM on the shapes world (text-to-image for now).

The image codec is frozen: the posterior means of the training scenes are encoded once and cached.
Each step draws the sigma-VAE noise afresh (z = mu + sigma * eps, sigma per sample), so the model
learns to continue from exactly the kind of latent it will sample.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch
from pydantic import BaseModel, Field, ValidationError
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentlm.backbones import BackboneConfig
from latentlm.checkpoint import load_codec, load_weights, read_config
from latentlm.codec_training import shapes_images
from latentlm.config_io import load_yaml_config
from latentlm.diffusion_head import DiffusionHeadConfig
from latentlm.errors import ConfigError
from latentlm.model import LatentLM
from latentlm.model_config import ModelConfig
from latentlm.sequence import Batch, Latent, Text, collate, frame
from latentlm.shapes import scene_for
from latentlm.tokenizer import TextTokenizer
from latentlm.trainer import OptimConfig, train


class LMDataConfig(BaseModel):
    n_train: int = Field(20_000, ge=1)
    size_drop: float = Field(0.3, ge=0, le=1)  # drop "small"/"large" from single-object captions


class LMTrainConfig(BaseModel):
    tokenizer: str  # path of tokenizer.model
    codec: str  # image codec checkpoint directory
    backbone: BackboneConfig = BackboneConfig()
    head: DiffusionHeadConfig = DiffusionHeadConfig()
    cfg_dropout: float = Field(0.1, ge=0, lt=1)
    text_loss_weight: float = Field(0.1, ge=0)
    data: LMDataConfig = LMDataConfig()
    train: OptimConfig = OptimConfig()
    # A saved LatentLM (e.g. runs/x/final) whose weights start this run: a second, fine-tuning stage.
    init_from: str | None = None


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


class TextToImageTask:
    def __init__(self, config: LMTrainConfig, cache_dir: Path) -> None:
        self.config = config
        self.tokenizer = TextTokenizer(config.tokenizer)
        self.codec = load_codec(config.codec)
        model_config = ModelConfig(
            vocab_size=self.tokenizer.vocab_size, latent_dim=self.codec.latent_dim,
            image_tokens=self.codec.tokens_per_image, max_slots=self.codec.tokens_per_image,
            backbone=config.backbone, head=config.head, cfg_dropout=config.cfg_dropout,
            text_loss_weight=config.text_loss_weight,
        )
        self.model = LatentLM(model_config, self.tokenizer, {"image": self.codec})
        if config.init_from:
            self._init_from(Path(config.init_from), model_config)
        self.mu = self._cached_means(Path(cache_dir) / "scene_means.pt")
        self.captions = [scene_for("train", i).caption for i in range(config.data.n_train)]

    def _init_from(self, directory: Path, model_config: ModelConfig) -> None:
        """Load a trained LatentLM's weights; its architecture must be the one this config builds."""
        saved = ModelConfig.model_validate(read_config(directory))
        arch = {"vocab_size", "latent_dim", "image_tokens", "max_slots", "backbone", "head"}
        ours, theirs = model_config.model_dump(include=arch), saved.model_dump(include=arch)
        diff = sorted(k for k in arch if ours[k] != theirs[k])
        if diff:
            raise ConfigError(
                f"init_from: {directory} holds a model whose {', '.join(diff)} differ from this config's; "
                "start from a checkpoint of the same architecture (and tokenizer), or drop init_from"
            )
        load_weights(self.model, directory, exclude=("codecs.",))

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

    def batch(self, step: int, batch_size: int) -> Batch:
        """A pure function of (seed, `step`): the same step always gives the same batch.

        Seed 0 walks the scenes from the first; another seed (a second stage) starts elsewhere and
        draws other noise and caption variants."""
        n, tok = self.config.data.n_train, self.tokenizer
        key = step + self.config.train.seed * 1_000_003
        rng = random.Random(key)
        gen = torch.Generator().manual_seed(key)
        first = self.config.train.seed * 7_919
        idx = torch.tensor([(first + step * batch_size + j) % n for j in range(batch_size)])  # [B]
        z = self.codec.normalize(self.codec.perturb(self.mu[idx], gen))  # [B, N, D]
        seqs = []
        for j, i in enumerate(idx.tolist()):
            drop = rng.random() < self.config.cfg_dropout
            text = [] if drop else tok.encode(caption_variant(self.captions[i], rng, self.config.data.size_drop))
            seqs.append([Text([tok.bos_id] + text), *frame("image", z[j], tok.token_id), Text([tok.eos_id])])
        return collate(seqs, self.codec.latent_dim, tok.pad_id)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        return model.loss(batch)

    def export(self, model: nn.Module, out_dir: Path) -> None:
        model.save_pretrained(out_dir)


def train_lm(
    config_path: str | Path, out_dir: str | Path, resume: bool = False, backbone: str | None = None, **kwargs
) -> Path:
    """Train from a YAML config; `backbone` overrides the config's backbone kind."""
    config = load_yaml_config(config_path, LMTrainConfig)
    if backbone is not None:
        try:  # validated again: a field of the old kind may not suit the new one (n_kv_heads for retnet)
            config.backbone = BackboneConfig(**(config.backbone.model_dump() | {"kind": backbone}))
        except ValidationError as err:
            raise ConfigError(f"--backbone {backbone}: {err.errors()[0]['msg']}; change the config's backbone "
                              "section to suit it") from None
    torch.manual_seed(config.train.seed)  # the model's initial weights follow the config's seed
    task = TextToImageTask(config, Path(out_dir))
    return train(task, config.train, out_dir, resume=resume, **kwargs)
