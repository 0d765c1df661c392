"""Conversions between user pictures (PIL, files, arrays) and model tensors in [-1, 1]."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from latentlm.errors import LatentLMError


def to_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image -> [3, H, W] float in [-1, 1]."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)  # [H, W, 3]
    return torch.from_numpy(a).permute(2, 0, 1) / 127.5 - 1.0


def to_pil(x: Tensor) -> Image.Image:
    """[3, H, W] float in about [-1, 1] -> RGB PIL image (clamped)."""
    a = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(a.permute(1, 2, 0).cpu().numpy(), "RGB")


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [-1, 1], measured on the [0, 1] scale: [B, ...] -> [B]."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


ImageInput = Union[Image.Image, str, os.PathLike, np.ndarray, Tensor]


def load_image(source: ImageInput) -> Image.Image:
    """A PIL image, a file path, an [H, W(, C)] uint8 array or a [3, H, W] tensor in [-1, 1] -> RGB PIL.

    A missing, unreadable or non-picture file is a `LatentLMError` naming the file."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, Tensor):
        if source.ndim != 3 or source.shape[0] != 3:
            raise LatentLMError(f"an image tensor must be [3, H, W] in [-1, 1], got {list(source.shape)}")
        return to_pil(source)
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (str, os.PathLike)):
        return _from_file(Path(source))
    raise LatentLMError(f"an image must be a PIL image, a file path or an array, not {type(source).__name__}")


def _from_array(a: np.ndarray) -> Image.Image:
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)) or 0 in a.shape:
        raise LatentLMError(f"an image array must be [H, W] or [H, W, 1|3|4], got shape {list(a.shape)}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
            raise LatentLMError(f"an image array must be uint8 (0-255) or float in [0, 1], got {a.dtype}")
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(a.squeeze(-1) if a.ndim == 3 and a.shape[2] == 1 else a).convert("RGB")


def _from_file(path: Path) -> Image.Image:
    if not path.is_file():
        raise LatentLMError(f"image file {path} does not exist; give the path of a PNG or JPEG picture")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise LatentLMError(f"{path} is not a readable picture ({type(e).__name__}); give a PNG or JPEG file") from None


def fit(image: Image.Image, size: int) -> Tensor:
    """Resize (without cropping, as Kosmos-2 does) to size x size: -> [3, size, size] in [-1, 1]."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return to_tensor(image)
