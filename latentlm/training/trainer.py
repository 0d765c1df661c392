"""One training loop for every model we train, driven by accelerate.

A task supplies the model, a batch for a given step (data is a pure function of the step, so a
resumed run sees exactly the batches it would have seen), the loss, and an export of the trained
model. The loop owns optimisation, mixed precision, gradient accumulation, logging, checkpoints and
`--resume`, so that CPU and multi-GPU runs share it.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from pydantic import BaseModel, Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentlm.errors import CheckpointError, ConfigError


class OptimConfig(BaseModel):
    """Optimisation and bookkeeping of a training run."""

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    schedule: str = "cosine"  # any diffusers.optimization scheduler name
    grad_clip: float = Field(1.0, gt=0)
    grad_accum: int = Field(1, ge=1)
    mixed_precision: str = Field("no", pattern="^(no|bf16|fp16)$")
    seed: int = 0
    log_every: int = Field(10, ge=1)
    save_every: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1)


class TrainTask(Protocol):
    model: nn.Module

    def batch(self, step: int, batch_size: int) -> Any: ...

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]: ...

    def export(self, model: nn.Module, out_dir: Path) -> None: ...


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step_*"))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past `step`, so a resumed run's log has no duplicates."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _save(accelerator: Accelerator, run_dir: Path, step: int, keep: int) -> None:
    final = run_dir / "checkpoints" / f"step_{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    (tmp / "trainer.json").write_text(json.dumps({"step": step}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in _checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _resume(accelerator: Accelerator, run_dir: Path) -> int:
    ckpts = [c for c in _checkpoints(run_dir) if not c.name.endswith(".tmp")]
    if not ckpts:
        raise CheckpointError(f"--resume: no checkpoint under {run_dir / 'checkpoints'}; start without --resume")
    last = ckpts[-1]
    try:
        accelerator.load_state(str(last))
        return json.loads((last / "trainer.json").read_text())["step"]
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"--resume: checkpoint {last} is unreadable ({e}); delete it to use an older one") from None


def train(
    task: TrainTask,
    optim: OptimConfig,
    run_dir: str | Path,
    resume: bool = False,
    stop_after: int | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
) -> Path:
    """Train `task.model` to `optim.steps`, then export it to `run_dir/final`; returns that path.

    `stop_after` and `max_minutes` end this invocation early (with a checkpoint) so that a long run
    can continue later with `resume=True`.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and _checkpoints(run_dir) and not resume:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    set_seed(optim.seed)
    accelerator = Accelerator(gradient_accumulation_steps=optim.grad_accum, mixed_precision=optim.mixed_precision)
    model = task.model
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr, betas=(0.9, 0.95),
    )
    sched = get_scheduler(optim.schedule, opt, num_warmup_steps=optim.warmup_steps, num_training_steps=optim.steps)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    metrics_path = run_dir / "metrics.jsonl"
    step = _resume(accelerator, run_dir) if resume else 0
    _truncate_metrics(metrics_path, step) if resume else metrics_path.unlink(missing_ok=True)

    end = optim.steps if stop_after is None else min(optim.steps, step + stop_after)
    deadline = time.monotonic() + 60 * max_minutes if max_minutes else None
    bar = tqdm(total=optim.steps, initial=step, desc="train", disable=not progress, dynamic_ncols=True)
    model.train()
    t0 = time.monotonic()
    while step < end:
        for micro in range(optim.grad_accum):
            with accelerator.accumulate(model):
                loss, logs = task.loss(model, task.batch(step * optim.grad_accum + micro, optim.batch_size))
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), optim.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % optim.log_every == 0 or step == end:
            rec = {"step": step, "loss": loss.item(), "lr": sched.get_last_lr()[0], "elapsed_s": time.monotonic() - t0}
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec | logs) + "\n")
        out_of_time = deadline is not None and time.monotonic() > deadline
        if step % optim.save_every == 0 or step == end or out_of_time:
            _save(accelerator, run_dir, step, optim.keep_checkpoints)
        if out_of_time:
            break
    bar.close()
    if step >= optim.steps:
        final = run_dir / "final"
        task.export(accelerator.unwrap_model(model), final)
        return final
    return run_dir / "checkpoints" / f"step_{step:07d}"
