"""Evaluation of the image codec: reconstruction PSNR on held-out scenes."""
from __future__ import annotations

import torch

from latentlm.images import psnr
from latentlm.data.rendered import shapes_images


@torch.no_grad()
def eval_codec(codec: torch.nn.Module, n: int = 256, split: str = "test", batch_size: int = 64) -> dict:
    """PSNR (dB, on [0, 1] pixels) of decode(mu) over the first `n` scenes of `split`."""
    values = []
    for start in range(0, n, batch_size):
        x = shapes_images(split, list(range(start, min(n, start + batch_size))))
        values.append(psnr(codec.decode(codec.encode(x)), x))
    v = torch.cat(values)
    return {"psnr_db": v.mean().item(), "psnr_min_db": v.min().item(), "n": n, "split": split}
