"""An exponential moving average of a model's trainable weights, which diffusion models sample from.

MAR and DiT export EMA weights: the per-token diffusion head's samples depend on the weights' noise more
than a loss shows, and an average over the last ~1 / (1 - decay) steps smooths it. The average lives
beside the model (one fp32 copy of the trainable parameters), updates once per optimizer step, is saved
and restored with the run's checkpoints (accelerate's `register_for_checkpointing`), and is swapped into
the model for the export (`applied`).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from latentlm.errors import CheckpointError


class EMA:
    """shadow <- decay * shadow + (1 - decay) * weight, for each trainable parameter of `model`."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema decay {decay}: use a number between 0 and 1, e.g. 0.999")
        self.decay = decay
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = [params[name].detach().clone() for name in self.names]

    def _params(self, model: nn.Module) -> list[Tensor]:
        params = dict(model.named_parameters())
        return [params[name] for name in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for shadow, param in zip(self.shadow, self._params(model)):
            shadow.lerp_(param.detach(), 1 - self.decay)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """The model with the averaged weights in place of its own for the block, then its own again."""
        params = self._params(model)
        with torch.no_grad():
            own = [p.detach().clone() for p in params]
            for param, shadow in zip(params, self.shadow):
                param.copy_(shadow)
        try:
            yield model
        finally:
            with torch.no_grad():
                for param, saved in zip(params, own):
                    param.copy_(saved)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "names": list(self.names), "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if state["names"] != self.names:
            raise CheckpointError("the checkpoint's EMA weights are of other parameters than this model's: resume "
                                  "the run with the config it was started with")
        self.decay = state["decay"]
        for shadow, saved in zip(self.shadow, state["shadow"]):
            shadow.copy_(saved)
