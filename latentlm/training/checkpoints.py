"""Training checkpoints: everything a run needs to continue exactly, written so that a kill never leaves a
half-written one that `--resume` could take for valid.

A checkpoint `run/checkpoints/step_NNNNNNN/` holds accelerate's `save_state` (weights, optimizer, scheduler,
one RNG file per process), `trainer.json` (the step, the process count, the distributed mode) and
`checksums.json` (the SHA-256 of every file, as exported models have). Every process writes into a hidden
temporary folder; once all are done the main process adds the manifest and renames the folder into place.
`--resume` takes the newest `step_*` folder, checks its files, then loads it. Folders saved before the
manifest existed (`trainer.json` = `{"step": N}`) still resume.

Every function here is called by all processes at the same point: each contains the collectives its
processes must join, and a failure on one process (a full disk) becomes the same error on all of them.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed

from latentlm.checkpoint import verify_dir, verify_file, write_checksums
from latentlm.errors import CheckpointError, LatentLMError

STATE_FILE = "trainer.json"
_NAME = re.compile(r"step_(\d{7,})")
_LEFTOVERS = (".tmp-step_*", ".old-step_*", "step_*.tmp")  # interrupted saves (the last: older trainers)


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first (temporary folders of unfinished saves are not among them)."""
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.glob("step_*") if _NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)))


def remove_leftovers(run_dir: Path) -> None:
    """Delete what interrupted saves and exports left behind (hidden temporary folders)."""
    root = Path(run_dir) / "checkpoints"
    for pattern in _LEFTOVERS:
        for path in root.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)
    for path in Path(run_dir).glob(".final.*"):  # latentlm.checkpoint.atomic_dir's temporaries of final/
        shutil.rmtree(path, ignore_errors=True)


def on_main(accelerator: Accelerator, fn: Callable[[], object]) -> Exception | None:
    """Run `fn` on the main process; every process gets its OSError or user error (None if it succeeded)."""
    error = None
    if accelerator.is_main_process:
        try:
            fn()
        except (OSError, LatentLMError) as e:
            error = e
    return broadcast_object_list([error])[0] if accelerator.num_processes > 1 else error


def describe(e: Exception, kept: str) -> str:
    """The end of a failed write's message: '(reason); KEPT: fix and continue with --resume'."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
    fix = "free space" if isinstance(e, OSError) and e.errno == errno.ENOSPC else "fix that"
    return f"({reason}); {kept}: {fix} and continue with --resume"


def _publish(tmp: Path, final: Path, meta: dict, keep: int) -> None:
    """Main process: manifest, rename into place, then drop checkpoints beyond the newest `keep`."""
    (tmp / STATE_FILE).write_text(json.dumps(meta) + "\n")
    for folder in [tmp, *(p for p in sorted(tmp.rglob("*")) if p.is_dir())]:
        write_checksums(folder)
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoints(final.parent.parent)[:-keep]:
        trash = stale.with_name(f".old-{stale.name}")
        os.replace(stale, trash)  # hidden first: a kill while deleting leaves no partial step_* folder
        shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, keep: int, meta: dict) -> Path:
    """Save the full training state of `step`; a failure (e.g. a full disk) leaves earlier checkpoints intact."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    error = None
    try:
        accelerator.save_state(str(tmp))  # each process: its RNG file; the main one: weights, optimizer, scheduler
    except OSError as e:
        error = e
    errors = gather_object([error]) if accelerator.num_processes > 1 else [error]
    error = next((e for e in errors if e is not None), None)
    if error is None:
        error = on_main(accelerator, lambda: _publish(tmp, final, meta | {"step": step}, keep))
    if error is not None:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = checkpoints(run_dir)
        kept = f"{previous[-1].name} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(f"could not save the checkpoint of step {step} in {root} "
                              + describe(error, kept)) from None
    return final


def _saved_meta(ckpt: Path) -> dict:
    path = ckpt / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {ckpt} is incomplete; delete it to resume from an older one")
    verify_file(path)
    try:
        meta = json.loads(path.read_text())
        int(meta["step"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({type(e).__name__}); delete {ckpt} to resume from an older one") \
            from None
    return {"world_size": 1, "distributed": "ddp"} | meta  # older checkpoints: one process


def _check_layout(ckpt: Path, meta: dict, world: int, sharded: bool) -> None:
    """Replicated states (one process, DDP) resume under any process count; FSDP shards only under the same."""
    was_sharded = meta["distributed"] == "fsdp" and meta["world_size"] > 1
    if (was_sharded or sharded) and (was_sharded != sharded or meta["world_size"] != world):
        saved = f"{meta['world_size']} process(es), {'FSDP' if was_sharded else 'unsharded'}"
        now = f"{world} process(es), {'FSDP' if sharded else 'unsharded'}"
        raise CheckpointError(f"--resume: {ckpt} was saved by {saved} and this run is {now}; an FSDP checkpoint "
                              f"resumes only with its own process count and mode: use --num-processes "
                              f"{meta['world_size']} and train.distributed: {meta['distributed']}")


def newest_checkpoint(run_dir: Path, flag: str = "--resume") -> Path:
    """The run's newest complete checkpoint, or an error naming `flag`, the option that asked for it."""
    found = checkpoints(run_dir)
    if not found:
        hint = "start without --resume" if flag == "--resume" else "wait for the run's first save (train.save_every)"
        raise CheckpointError(f"{flag}: no checkpoint under {Path(run_dir) / 'checkpoints'}; {hint}")
    return found[-1]


def load_checkpoint(accelerator: Accelerator, run_dir: Path, seed: int, sharded: bool, flag: str = "--resume") -> int:
    """Restore the newest complete checkpoint (checked against its checksums first); returns its step.

    A process count other than the saved one is allowed for unsharded runs: the global batch is the same,
    and a process with no saved RNG state seeds from (seed, step, rank). `flag` names the option that asked,
    in errors."""
    last = newest_checkpoint(run_dir, flag)
    meta: dict = {}

    def check() -> None:  # the main process reads and hashes; the others wait for its verdict
        meta.update(_saved_meta(last))
        verify_dir(last)

    error = on_main(accelerator, check)
    if error is not None:
        raise error
    meta = broadcast_object_list([meta])[0] if accelerator.num_processes > 1 else meta
    world, rank = accelerator.num_processes, accelerator.process_index
    _check_layout(last, meta, world, sharded)
    try:
        accelerator.load_state(str(last))
    except Exception as e:  # noqa: BLE001 - any unreadable part (pickle, safetensors, shapes) is one user error
        raise CheckpointError(f"{flag}: {last} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              "delete it to resume from an older one") from None
    step = int(meta["step"])
    if not (last / f"random_states_{rank}.pkl").is_file():
        set_seed(seed + 1_000_003 * step + rank)
    if accelerator.is_main_process:
        note = "" if meta["world_size"] == world else f" (saved by {meta['world_size']} process(es), now {world})"
        print(f"{'resuming from' if flag == '--resume' else 'loading'} {last}{note}", file=sys.stderr, flush=True)
    return step
