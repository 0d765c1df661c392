"""Which demonstrations go before a query: a fixed set per task, or the pictures nearest the query's.

"similar" follows KATE (Liu et al., "What Makes Good In-Context Examples for GPT-3?", 2022): pick the
k candidates closest to the query. Closeness here is the mean squared difference of the two pictures
seen small (RGB at 32 x 32): in the shapes world, pictures close in that sense hold objects of like
colour, size and place, so a nearby demonstration shows the reading the query needs. Only the query's
picture is used, never its answer.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

SELECTIONS = ("fixed", "similar")
FEATURE_SIDE = 32


def picture_features(picture: Image.Image) -> np.ndarray:
    """The picture as RGB at 32 x 32, floats in [0, 1], flattened: [3 * 32 * 32]."""
    small = picture.convert("RGB").resize((FEATURE_SIDE, FEATURE_SIDE), Image.BILINEAR)
    return np.asarray(small, dtype=np.float32).reshape(-1) / 255.0


def nearest(query: Image.Image, candidates: Sequence[np.ndarray], k: int | None = None) -> list[int]:
    """Indices of `candidates` (from `picture_features`) from the nearest to the query's picture; ties go
    to the lower index, so the order is deterministic. The first `k` (all when None)."""
    if not candidates:
        return []
    q = picture_features(query)  # [F]
    distances = ((np.stack(candidates) - q) ** 2).mean(axis=1)  # [N]
    order = np.argsort(distances, kind="stable")
    return [int(i) for i in order[:k]]
