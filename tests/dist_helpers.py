"""Module-level tasks and worker functions for the multi-process training tests: spawned processes import
them by name, so they cannot live inside a test function."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from latentlm.checkpoint import atomic_dir, save_weights, write_checksums
from latentlm.errors import LatentLMError
from latentlm.training.trainer import OptimConfig, shard, train


class RegressionTask:
    """A small MLP fitted to a fixed linear map. The loss draws no random numbers, so the only difference
    between one process on the whole batch and two on half each is the order of floating-point sums."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))
        self.target = torch.randn(8, 4, generator=torch.Generator().manual_seed(1234))

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        x = torch.randn(batch_size, 8, generator=torch.Generator().manual_seed(step))
        return shard(torch.cat([x, x @ self.target], 1), rank, world)  # [b, 12]: inputs, targets

    def loss(self, model: nn.Module, batch: torch.Tensor):
        loss = F.mse_loss(model(batch[:, :8]), batch[:, 8:])
        return loss, {"mse": loss.item()}

    def export(self, model: nn.Module, out_dir: Path) -> None:
        with atomic_dir(out_dir) as tmp:
            save_weights(model, tmp)
            write_checksums(tmp)


def regression_config(**changes) -> OptimConfig:
    base = dict(steps=30, batch_size=8, lr=0.01, warmup_steps=3, log_every=1, save_every=10, seed=0)
    return OptimConfig(**(base | changes))


def train_regression(run_dir: Path, resume: bool = False, stop_after: int | None = None, **changes) -> Path:
    return train(RegressionTask(), regression_config(**changes), run_dir, resume=resume, stop_after=stop_after,
                 progress=False)


def two_process_checks(root: Path) -> dict:
    """Run in each of two processes: 30 steps of the regression on half the batch each, then the user errors
    that only several processes can meet. Returns what rank 0 saw."""
    final = train_regression(root / "two")
    errors = {}
    for name, changes in {"odd_batch": dict(batch_size=7), "fsdp": dict(distributed="fsdp")}.items():
        try:
            train_regression(root / name, **changes)
        except LatentLMError as e:
            errors[name] = f"{type(e).__name__}: {e}"
    return {"final": final, "errors": errors}


def cli_logged(argv: list[str], log: str) -> None:
    """`latentlm ARGV` with stdout and stderr appended to `log`: the target of the kill trials' processes."""
    import os

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(1)
    from latentlm.cli.main import main

    main(argv)


def fail(kind: str) -> None:
    """A launched process that fails: with a user error on rank 1 only, or with a bug on every rank."""
    import os

    from latentlm.errors import ConfigError

    if kind == "user" and os.environ["RANK"] == "1":
        raise ConfigError("train.steps: rank 1 says no")
    if kind == "bug":
        raise ZeroDivisionError("a bug")
