"""Shapes-world scenes rendered into model tensors."""
from __future__ import annotations

import torch
from torch import Tensor

from latentlm.data.shapes import Scene, scene_for
from latentlm.images import to_tensor


def render_scenes(scenes: list[Scene]) -> Tensor:
    """Scenes drawn by `latentlm.data.shapes`, as a batch in [-1, 1]: [B, 3, 64, 64]."""
    return torch.stack([to_tensor(scene.render()) for scene in scenes])


def shapes_images(split: str, indices: list[int]) -> Tensor:
    """The scenes `indices` of `split`, rendered: [B, 3, 64, 64] in [-1, 1]."""
    return render_scenes([scene_for(split, i) for i in indices])
