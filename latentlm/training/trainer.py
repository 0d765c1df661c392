"""One training loop for every model we train, driven by accelerate.

A task supplies the model, a batch for a given step, the loss, and an export of the trained model. The
loop owns optimisation, mixed precision, gradient accumulation, several processes (DDP, or FSDP on GPUs,
through accelerate), logging, checkpoints and `--resume`, so that CPU and multi-GPU runs share it.

Data: the global batch of a step (`batch_size` rows) is a pure function of (seed, step), and process
`rank` of `world` trains on rows rank*b .. (rank+1)*b - 1 of it (b = batch_size / world, see `shard`).
So a resumed run sees exactly the batches it would have seen, one process sees the batches it always
did, and N processes together see the batch one process would.

Processes: only the main process writes metrics.jsonl, the progress bar, the checkpoint's shared files
and the exported model; every process joins the collectives (saving, loading, the logged means, the
stop decision of --max-minutes).
"""
from __future__ import annotations

import atexit
import copy
import inspect
import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import (DataLoaderConfiguration, DistributedDataParallelKwargs, DistributedType, broadcast,
                              reduce, set_seed)
from diffusers.optimization import get_scheduler
from pydantic import BaseModel, Field, model_validator
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentlm.errors import CheckpointError, ConfigError
from latentlm.training.checkpoints import (checkpoints, describe, load_checkpoint, on_main, remove_leftovers,
                                           save_checkpoint)
from latentlm.training.ema import EMA


class OptimConfig(BaseModel):
    """Optimisation and bookkeeping of a training run."""

    steps: int = Field(1000, ge=1)  # the length of the learning-rate schedule
    # End the run, and export it, at this step of the `steps`-long schedule (a run taken off part-way through
    # its schedule, repeatably); None: at `steps`.
    end_step: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)  # the global batch: split evenly over the processes
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
    # Several processes: "ddp" keeps a replica of the model in each; "fsdp" shards parameters, gradients and
    # optimizer state over them (accelerate's FSDP plugin, GPUs only). One process trains the same either way.
    distributed: Literal["ddp", "fsdp"] = "ddp"
    # Export an exponential moving average of the weights with this decay (e.g. 0.999: about the last 1000
    # steps; training.ema) instead of the last step's; None: the last step's. Not with FSDP.
    ema_decay: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _end_within_the_schedule(self) -> "OptimConfig":
        if self.end_step is not None and self.end_step > self.steps:
            raise ValueError(f"end_step {self.end_step} is past the schedule's {self.steps} steps: use at most steps")
        return self

    @property
    def last_step(self) -> int:
        return self.steps if self.end_step is None else self.end_step


class TrainTask(Protocol):
    model: nn.Module

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> Any:
        """`shard(rank, world)` of the global batch of `batch_size` rows for `step`."""

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]: ...

    def export(self, model: nn.Module, out_dir: Path) -> None: ...


def shard(rows, rank: int, world: int):
    """Rows rank*b .. (rank+1)*b - 1 of a global batch (a list or a tensor), b = len(rows) / world."""
    if len(rows) % world:
        raise ConfigError(f"a batch of {len(rows)} rows does not split over {world} processes: make the batch "
                          f"size a multiple of the process count")
    b = len(rows) // world
    return rows[rank * b:(rank + 1) * b]


_CLOSING: list[bool] = []  # non-empty once the process group's closing at exit is registered


def process_state() -> PartialState:
    """accelerate's view of this process (rank, process count); joins the process group under a launcher.

    Call it before building a task: `process_state().main_process_first()` lets the main process fill
    the run folder's caches before the others read them. Under several processes the process group is
    closed when the process exits (torch warns otherwise), so a process may train more than once."""
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes > 1 and not _CLOSING:
        atexit.register(state.destroy_process_group)
        _CLOSING.append(True)
    return state


class LossModule(nn.Module):
    """The model with the task's loss as its forward, so that DDP and FSDP see the whole step inside their
    forward (gradient synchronisation and parameter gathering hook into it).

    With `plain_keys` its state dict is the model's own, without a `model.` prefix, so checkpoints load
    under any process count, and those saved before this wrapper existed load too."""

    def __init__(self, model: nn.Module, loss: Callable, plain_keys: bool = True) -> None:
        super().__init__()
        self.model = model
        self.task_loss = loss
        if plain_keys:
            self.register_state_dict_post_hook(_drop_model_prefix)
            self.register_load_state_dict_pre_hook(_add_model_prefix)

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        return self.task_loss(self.model, batch)


def _drop_model_prefix(module, state_dict, prefix, local_metadata) -> None:
    """Every key under `prefix` belongs to the wrapper's only child, `model`: drop that level."""
    for key in [k for k in state_dict if k.startswith(prefix + "model.")]:
        state_dict[prefix + key[len(prefix) + len("model."):]] = state_dict.pop(key)


def _add_model_prefix(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    """The inverse of `_drop_model_prefix` before loading."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[prefix + "model." + key[len(prefix):]] = state_dict.pop(key)


def _accelerator(optim: OptimConfig, world: int) -> Accelerator:
    fsdp = optim.distributed == "fsdp" and world > 1
    plugin = None
    if fsdp:
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT",
                                                auto_wrap_policy="size_based_wrap", min_num_params=1_000_000,
                                                reshard_after_forward=True)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=optim.grad_accum, mixed_precision=optim.mixed_precision,
        # the global batch is split, not multiplied: one scheduler step per optimizer step, whatever `world`
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        # a step's tasks may leave a head unused (a batch with no picture to draw): DDP must allow that
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        fsdp_plugin=plugin,
    )
    if fsdp and accelerator.distributed_type != DistributedType.FSDP:
        raise ConfigError(f"train.distributed: fsdp needs GPUs: accelerate applies its FSDP plugin only to GPU "
                          f"processes, and these are {accelerator.distributed_type.value}; use "
                          "train.distributed: ddp")
    return accelerator


def _optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr, betas=(0.9, 0.95),
    )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past `step` (and a line a kill cut short), so a resumed run's log has no duplicates."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def _means(accelerator: Accelerator, values: list[float]) -> list[float]:
    """Means over the processes (one process: the values themselves)."""
    if accelerator.num_processes == 1:
        return values
    return reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), "mean").tolist()


def _agree(accelerator: Accelerator, flag: bool) -> bool:
    """The main process's decision on every process (clocks differ; all must stop after the same step)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(broadcast(torch.tensor([int(flag)], device=accelerator.device), from_process=0).item())


def _batches(task: TrainTask, batch_size: int, rank: int, world: int) -> Callable[[int], Any]:
    """step -> this process's batch. One process asks for the whole batch, as the loop always did, so a task
    that does not shard (no `rank`, `world` arguments) still trains in one process."""
    if world == 1:
        return lambda i: task.batch(i, batch_size)
    if "world" not in inspect.signature(task.batch).parameters:
        raise ConfigError(f"{type(task).__name__} cannot split its batches over processes yet; train it with one "
                          "process")
    return lambda i: task.batch(i, batch_size, rank, world)


def _to_device(batch: Any, device: torch.device) -> Any:
    return batch.to(device) if hasattr(batch, "to") else batch


def _export(accelerator: Accelerator, task: TrainTask, model: nn.Module, template: nn.Module | None,
            sharded: bool, final: Path) -> None:
    """The main process exports the trained model; under FSDP all processes first gather its weights
    (into `template`, the main process's copy of the model made before FSDP changed it in place)."""
    gathered = accelerator.get_state_dict(model) if sharded else None

    def export() -> None:
        inner = accelerator.unwrap_model(model).model
        if gathered is not None:
            template.load_state_dict({k.removeprefix("model."): v for k, v in gathered.items()})
            inner = template
        task.export(inner.to("cpu"), final)

    error = on_main(accelerator, export)
    if isinstance(error, OSError):
        raise CheckpointError(f"could not export the model to {final} "
                              + describe(error, "the run's last checkpoint is intact")) from None
    if error is not None:
        raise error


def export_newest(task: TrainTask, optim: OptimConfig, run_dir: Path, out: Path) -> Path:
    """Export the newest checkpoint of `run_dir` to `out` as a model folder, with the run's moving-average
    weights where it keeps them (as its final export would be), and return `out`.

    For trying a run mid-way: it may still be training, so nothing in its folder is written or removed
    (no leftover cleanup, no metrics truncation). One process."""
    if process_state().num_processes > 1:
        raise ConfigError("--export-to runs in one process: drop --num-processes")
    if out.resolve() == (run_dir / "final").resolve():
        raise ConfigError(f"--export-to {out}: that is the run's own final folder; choose another")
    set_seed(optim.seed)
    accelerator, model, _, _, template = _prepare(task, optim, 1)
    sharded = accelerator.distributed_type == DistributedType.FSDP
    ema = _ema(accelerator, model, optim, sharded)
    load_checkpoint(accelerator, run_dir, optim.seed, sharded, flag="--export-to")
    with ema.applied(accelerator.unwrap_model(model).model) if ema is not None else nullcontext():
        _export(accelerator, task, model, template, sharded, out)
    return out


def _prepare(task: TrainTask, optim: OptimConfig, world: int):
    """The accelerator and the prepared model (with the task's loss as its forward), optimizer and scheduler;
    under FSDP also the main process's unsharded copy of the model, for the export."""
    accelerator = _accelerator(optim, world)
    sharded = accelerator.distributed_type == DistributedType.FSDP
    template = copy.deepcopy(task.model).cpu() if sharded and accelerator.is_main_process else None
    opt = _optimizer(task.model, optim)
    sched = get_scheduler(optim.schedule, opt, num_warmup_steps=optim.warmup_steps, num_training_steps=optim.steps)
    model, opt, sched = accelerator.prepare(LossModule(task.model, task.loss, plain_keys=not sharded), opt, sched)
    return accelerator, model, opt, sched, template


def _ema(accelerator: Accelerator, model: nn.Module, optim: OptimConfig, sharded: bool) -> EMA | None:
    """The run's moving average of the weights (train.ema_decay), saved and restored with its checkpoints."""
    if optim.ema_decay is None:
        return None
    if sharded:
        raise ConfigError("train.ema_decay keeps a whole copy of the weights, which FSDP shards: use "
                          "train.distributed: ddp, or drop ema_decay")
    ema = EMA(accelerator.unwrap_model(model).model, optim.ema_decay)
    accelerator.register_for_checkpointing(ema)
    return ema


def _log(accelerator: Accelerator, path: Path, step: int, loss: Tensor, logs: dict, lr: float, t0: float) -> None:
    """One metrics.jsonl line: the means over the processes, written by the main process."""
    names = list(logs)
    values = _means(accelerator, [loss.item(), *(logs[k] for k in names)])
    rec = {"step": step, "loss": values[0], "lr": lr, "elapsed_s": time.monotonic() - t0}
    if accelerator.is_main_process:
        with open(path, "a") as f:
            f.write(json.dumps(rec | dict(zip(names, values[1:]))) + "\n")


def train(
    task: TrainTask,
    optim: OptimConfig,
    run_dir: str | Path,
    resume: bool = False,
    stop_after: int | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
    export_to: str | Path | None = None,
) -> Path:
    """Train `task.model` to `optim.last_step`, then export it to `run_dir/final`; returns that path.

    `stop_after` and `max_minutes` end this invocation early (with a checkpoint) so that a long run
    can continue later with `resume=True`. `export_to` trains nothing: it exports the run's newest
    checkpoint there (see `export_newest`). Under a launcher every process calls this.
    """
    run_dir = Path(run_dir)
    if export_to is not None:
        return export_newest(task, optim, run_dir, Path(export_to))
    if run_dir.exists() and checkpoints(run_dir) and not resume:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another directory")
    state = process_state()
    rank, world = state.process_index, state.num_processes
    if optim.batch_size % world:
        raise ConfigError(f"train.batch_size {optim.batch_size} does not split over {world} processes: use a "
                          f"multiple of {world}")
    batch_for = _batches(task, optim.batch_size, rank, world)
    run_dir.mkdir(parents=True, exist_ok=True)
    set_seed(optim.seed + rank)  # process 0 draws as a single process does
    accelerator, model, opt, sched, template = _prepare(task, optim, world)
    main, sharded = accelerator.is_main_process, accelerator.distributed_type == DistributedType.FSDP
    ema = _ema(accelerator, model, optim, sharded)
    if main:
        remove_leftovers(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    step = load_checkpoint(accelerator, run_dir, optim.seed, sharded) if resume else 0
    if main:
        _truncate_metrics(metrics_path, step) if resume else metrics_path.unlink(missing_ok=True)
    meta = {"world_size": world, "distributed": "fsdp" if sharded else "ddp"}

    end = optim.last_step if stop_after is None else min(optim.last_step, step + stop_after)
    deadline = time.monotonic() + 60 * max_minutes if max_minutes else None
    bar = tqdm(total=optim.last_step, initial=step, desc="train", disable=not progress or not main, dynamic_ncols=True)
    model.train()
    t0 = time.monotonic()
    while step < end:
        for micro in range(optim.grad_accum):
            with accelerator.accumulate(model):
                loss, logs = model(_to_device(batch_for(step * optim.grad_accum + micro), accelerator.device))
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), optim.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(accelerator.unwrap_model(model).model)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % optim.log_every == 0 or step == end:
            _log(accelerator, metrics_path, step, loss, logs, sched.get_last_lr()[0], t0)
        out_of_time = _agree(accelerator, deadline is not None and time.monotonic() > deadline)
        if step % optim.save_every == 0 or step == end or out_of_time:
            save_checkpoint(accelerator, run_dir, step, optim.keep_checkpoints, meta)
        if out_of_time:
            break
    bar.close()
    result = run_dir / "checkpoints" / f"step_{step:07d}"
    if step >= optim.last_step:
        result = run_dir / "final"
        with ema.applied(accelerator.unwrap_model(model).model) if ema is not None else nullcontext():
            _export(accelerator, task, model, template, sharded, result)
    accelerator.wait_for_everyone()
    return result
