"""`--num-processes N`: run a training function in N local processes that form one process group.

The processes are started with `torch.multiprocessing` (spawn) and given the environment `torchrun` sets
(MASTER_ADDR, MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE), so accelerate inside them
joins them exactly as under `torchrun` or `accelerate launch`: gloo on CPUs, NCCL on GPUs (one GPU per
process). Spawning rather than re-running the command keeps user errors to one line: a worker that
raises a `LatentLMError` hands it back, and the parent raises it again.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from latentlm import errors
from latentlm.errors import ConfigError, LatentLMError


def is_main_process() -> bool:
    """False in processes 1.. of a launched group (RANK is set by torchrun, accelerate launch and `launch`):
    the command line prints its result once."""
    return os.environ.get("RANK", "0") == "0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the block (children spawned inside it inherit them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _worker(rank: int, fn: Callable, args: tuple, kwargs: dict, out: str, threads: int) -> None:
    """One process: its rank in the environment, then `fn`; rank 0 pickles the result, a user error is saved."""
    os.environ["RANK"] = os.environ["LOCAL_RANK"] = str(rank)
    import torch

    torch.set_num_threads(threads)
    try:
        result = fn(*args, **kwargs)
    except LatentLMError as e:
        Path(out, f"error_{rank}.json").write_text(json.dumps({"type": type(e).__name__, "message": str(e)}))
        sys.exit(2)
    if rank == 0:
        Path(out, "result.pkl").write_bytes(pickle.dumps(result))


def _user_error(out: Path) -> LatentLMError | None:
    """The lowest rank's saved user error, as the same exception class."""
    for path in sorted(out.glob("error_*.json"), key=lambda p: int(p.stem.split("_")[1])):
        saved = json.loads(path.read_text())
        cls = getattr(errors, saved["type"], LatentLMError)
        return (cls if isinstance(cls, type) and issubclass(cls, LatentLMError) else LatentLMError)(saved["message"])
    return None


def launch(fn: Callable, args: tuple = (), kwargs: dict | None = None, num_processes: int = 2) -> Any:
    """Run `fn(*args, **kwargs)` in `num_processes` local processes joined into one torch.distributed
    group, and return rank 0's result. `fn` and its arguments must be picklable (a module-level function).

    Each process gets cores // num_processes threads. Under `torchrun` or `accelerate launch` (WORLD_SIZE
    already set) this is an error: those launchers already started the processes."""
    if num_processes < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {num_processes}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--num-processes starts its own processes; under torchrun or accelerate launch leave it out")
    import torch
    import torch.multiprocessing as mp

    if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise ConfigError(f"--num-processes {num_processes}: this machine has {torch.cuda.device_count()} GPU(s); "
                          "use one process per GPU")
    threads = max(1, (os.cpu_count() or 1) // num_processes)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(num_processes),
           "LOCAL_WORLD_SIZE": str(num_processes), "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory(prefix="latentlm-launch-") as out, _environ(**env):
        try:
            mp.start_processes(_worker, args=(fn, args, kwargs or {}, out, threads), nprocs=num_processes,
                               start_method="spawn")
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            error = _user_error(Path(out))
            if error is not None:
                raise error from None
            raise RuntimeError(f"training process {e.error_index} failed (see its output above)") from None
        return pickle.loads(Path(out, "result.pkl").read_bytes())
