"""kill -9 at random moments of a tiny training, 20 trials (issue 22): while training, while saving a
checkpoint, while exporting. After each kill, `--resume` continues from the last complete checkpoint,
no half-written checkpoint or model folder is ever read as valid, and every run, however often it was
killed, ends bit-identical to an uninterrupted one.

The training processes are forked from a forkserver that has imported latentlm once, so a trial costs
the training and not the imports; each is a separate process, killed with SIGKILL.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_tiny_lm_config
from dist_helpers import cli_logged
from latentlm.checkpoint import verify_dir
from latentlm.model import LatentLM
from latentlm.training.checkpoints import STATE_FILE, checkpoints

TRIALS = 20
PHASES = ("train", "save", "export")


def start(ctx, config: Path, run: Path, log: Path) -> multiprocessing.Process:
    argv = ["train", str(config), "-o", str(run), "--no-progress"] + (["--resume"] if checkpoints(run) else [])
    proc = ctx.Process(target=cli_logged, args=(argv, str(log)))
    proc.start()
    return proc


def wait_for(proc, condition, timeout: float = 300) -> bool:
    """Poll every millisecond until `condition()` holds (True) or the process has ended (False)."""
    end = time.monotonic() + timeout
    while proc.is_alive() and time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.001)
    return False


def fresh(folder: Path, pattern: str, since: float) -> bool:
    """A folder matching `pattern` that holds a file written after `since`: a save under way, not the
    leftover of the last kill (whose files are older, though deleting them touches the folder itself)."""
    for path in folder.glob(pattern):
        try:
            if any(f.stat().st_mtime >= since for f in path.iterdir()):
                return True
        except FileNotFoundError:
            pass
    return False


def metric_lines(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_in(proc, run: Path, phase: str, rng: random.Random, since: float) -> bool:
    """SIGKILL the process at a random moment of `phase`; False if it ended first.

    train: 0-0.2 s after the 1st-4th step this process logs; save: 0-20 ms into its 1st-3rd checkpoint
    save; export: 0-20 ms into writing final/."""
    if phase == "train":
        lines = metric_lines(run) + rng.randint(1, 4)  # the resumed run first trims the log to its step
        ready = wait_for(proc, lambda: metric_lines(run) >= lines)
        time.sleep(rng.uniform(0, 0.2))
    elif phase == "save":
        saves = rng.randint(1, 3)
        for i in range(saves):
            ready = wait_for(proc, lambda: fresh(run / "checkpoints", ".tmp-step_*", since))
            if i < saves - 1:  # let this save finish (renamed into place), then wait for the next
                wait_for(proc, lambda: not any((run / "checkpoints").glob(".tmp-step_*")))
                since = time.time()
        time.sleep(rng.uniform(0, 0.02))
    else:
        ready = wait_for(proc, lambda: fresh(run, ".final.*", since))
        time.sleep(rng.uniform(0, 0.02))
    if not (ready and proc.is_alive()):
        proc.join()
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    return True


def check_nothing_half_written(run: Path) -> None:
    """Every complete-looking checkpoint and model folder must verify and load."""
    for ckpt in checkpoints(run):
        verify_dir(ckpt)
        assert json.loads((ckpt / STATE_FILE).read_text())["step"] == int(ckpt.name.split("_")[1])
    if (run / "final").exists():
        LatentLM.from_pretrained(run / "final")


def metrics(run: Path) -> list[tuple]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_kill_minus_9_at_random_moments_then_resume(tmp_path, tiny_tokenizer_path, tiny_codec_dir):
    config = write_tiny_lm_config(tmp_path / "lm.yaml", tiny_tokenizer_path, tiny_codec_dir, steps=12)
    config.write_text(config.read_text().replace("save_every: 10", "save_every: 2"))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["dist_helpers", "latentlm.cli.main", "latentlm.training.lm", "latentlm.model"])
    proc = start(ctx, config, tmp_path / "reference", tmp_path / "reference.log")  # same threads as the trials
    proc.join()
    assert proc.exitcode == 0, (tmp_path / "reference.log").read_text()
    reference = load_file(str(tmp_path / "reference" / "final" / "model.safetensors"))
    rng = random.Random(22)
    kills, resumes, runs, run = [], 0, [], None
    while len(kills) < TRIALS or run is not None:
        if run is None:
            run = tmp_path / f"run{len(runs)}"
            runs.append(run)
        expected = checkpoints(run)[-1] if checkpoints(run) else None
        log = run.parent / f"{run.name}.{len(kills)}.{time.monotonic_ns()}.log"
        since = time.time() - 0.01
        proc = start(ctx, config, run, log)
        phase = PHASES[len(kills) % len(PHASES)]
        killed = len(kills) < TRIALS and kill_in(proc, run, phase, rng, since)
        if not killed:
            proc.join()
        text = log.read_text() if log.exists() else ""
        assert "error:" not in text and "Traceback" not in text, text  # no corrupt read, no crash
        resumed = [line for line in text.splitlines() if line.startswith("resuming from")]
        if expected is not None and resumed:
            assert resumed == [f"resuming from {expected}"], (resumed, expected)
            resumes += 1
        check_nothing_half_written(run)
        if killed:
            kills.append(phase)
            continue
        assert proc.exitcode == 0, text
        final = load_file(str(run / "final" / "model.safetensors"))
        assert all(torch.equal(final[k], reference[k]) for k in reference), run  # bit-identical
        assert metrics(run) == metrics(tmp_path / "reference")
        run = None
    assert len(kills) == TRIALS and set(kills) == set(PHASES)
    assert resumes >= TRIALS // 2, resumes  # relaunches that got as far as loading their checkpoint
