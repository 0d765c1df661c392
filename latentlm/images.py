"""Conversions between PIL images and model tensors in [-1, 1]."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor


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
