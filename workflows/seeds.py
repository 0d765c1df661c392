"""Seeds of a run's steps, and of the model calls inside a step (in-context demonstrations).

Step i of a run uses `step_seed(seed, i)`: step 0 the run's seed itself (so a one-step run draws
exactly what `draw(prompt, seed)` draws), step i > 0 the first 8 bytes of sha256(f"{seed}:{i}") as a
big-endian integer with the top bit cleared, in [0, 2**63 - 1]. The same scheme derives the seeds of
demonstration j inside a step: `step_seed(step's seed, j + 1)`.
"""
from __future__ import annotations

import hashlib

from latentlm.errors import LatentLMError

MAX_SEED = 2**63 - 1


def check_seed(seed: object, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise LatentLMError(f"{name} must be an integer, not {type(seed).__name__}")
    if not 0 <= seed <= MAX_SEED:
        raise LatentLMError(f"{name}={seed} is out of range: use 0 <= {name} <= 2**63 - 1")
    return seed


def step_seed(seed: int, index: int) -> int:
    """The seed of step `index` of a run with `seed` (see the module doc)."""
    if index == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & MAX_SEED
