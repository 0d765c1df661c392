"""`latentlm train-codec`: train the image sigma-VAE on the shapes world."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from latentlm.checkpoint import save_codec
from latentlm.codecs import ImageSigmaVAE, SigmaVAEConfig
from latentlm.config_io import load_yaml_config
from latentlm.errors import ConfigError
from latentlm.images import to_tensor
from latentlm.shapes import scene_for
from latentlm.trainer import OptimConfig, train


class ShapesDataConfig(BaseModel):
    n_train: int = Field(50_000, ge=1)  # scenes of the train split, cycled


class CodecTrainConfig(BaseModel):
    kind: Literal["image_sigma_vae"] = "image_sigma_vae"
    codec: dict = Field(default_factory=dict)  # SigmaVAEConfig fields
    data: ShapesDataConfig = ShapesDataConfig()
    train: OptimConfig = OptimConfig()
    stats_images: int = Field(512, ge=16)  # images used to measure the latent scale and bias

    def codec_config(self) -> SigmaVAEConfig:
        try:
            return SigmaVAEConfig(**self.codec)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"codec: {e}") from None


def shapes_images(split: str, indices: list[int]) -> Tensor:
    """Rendered scenes as a batch in [-1, 1]: [B, 3, 64, 64]."""
    return torch.stack([to_tensor(scene_for(split, i).render()) for i in indices])


class ImageCodecTask:
    def __init__(self, config: CodecTrainConfig) -> None:
        self.config = config
        self.model = ImageSigmaVAE(config.codec_config())

    def batch(self, step: int, batch_size: int) -> Tensor:
        n = self.config.data.n_train
        return shapes_images("train", [(step * batch_size + j) % n for j in range(batch_size)])

    def loss(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        return model.loss(batch)

    def export(self, model: nn.Module, out_dir: Path) -> None:
        model.eval()
        images = shapes_images("train", list(range(self.config.stats_images)))
        model.set_latent_stats(images, torch.Generator().manual_seed(0))
        save_codec(model, out_dir)


def train_codec(config_path: str | Path, out_dir: str | Path, resume: bool = False, **kwargs) -> Path:
    config = load_yaml_config(config_path, CodecTrainConfig)
    torch.manual_seed(config.train.seed)  # the model's initial weights follow the config's seed
    return train(ImageCodecTask(config), config.train, out_dir, resume=resume, **kwargs)
