"""Training throughput and memory of the shipped model's config with 1 and with 2 processes on this machine,
written into BENCHMARKS.md.

The config is `latentlm/configs/shapes-tiny.yaml` (6 M parameters, global batch 32, fp32) with the shipped
model's tokenizer and image codec, and `data.n_train` cut to 512 scenes so that encoding the scene cache
does not dominate (a step's cost does not depend on it). Each setting runs in a fresh process tree:
1 process with all cores' threads, or 2 processes (`--num-processes 2`, DDP over gloo) with half the
threads and half the batch each. Steps/s is timed from the trainer's own clock over the steps after the
first `WARMUP`; peak RSS is each training process's maximum resident set (ru_maxrss). One process is run
with all cores' threads and with one thread (on a busy machine threads that wait on each other cost more
than processes do), and the settings alternate over `--rounds` so that a change of load shows.

    .venv/bin/python benchmarks/training.py              # writes BENCHMARKS.md
    .venv/bin/python benchmarks/training.py --quick      # 4 steps, prints only
    .venv/bin/python benchmarks/training.py --loss-steps 300   # the loss curves of 1 and 2 processes

`--loss-steps N` trains the same config (with 4096 scenes) N steps with 1 process and with 2, and compares
their losses at the same steps (issue 22's bar: within 2%).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from report import machine, table, write_section

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "latentlm" / "configs" / "shapes-tiny.yaml"
SHIPPED = ROOT / "latentlm" / "pretrained" / "shapes-tiny"
WARMUP = 2


def bench_config(path: Path, steps: int, n_train: int = 512) -> Path:
    config = yaml.safe_load(CONFIG.read_text())
    config |= {"tokenizer": str(SHIPPED / "tokenizer.model"), "codec": str(SHIPPED / "image_codec")}
    config["data"]["n_train"] = n_train
    config["train"] |= {"steps": steps, "log_every": 1, "save_every": steps}
    path.write_text(yaml.safe_dump(config))
    return path


def measured_train(config: Path, run: Path) -> Path:
    """train_lm in this process, then its peak RSS into run/rss_<rank>.json (rank from the launcher)."""
    from latentlm.training.lm import train_lm

    final = train_lm(config, run, progress=False)
    rank = os.environ.get("RANK", "0")
    (run / f"rss_{rank}.json").write_text(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
    return final


def worker(config: Path, run: Path, processes: int, threads: int) -> None:
    """One setting, in a fresh process: 1 process trains here (with `threads`), 2 are launched from here."""
    if processes == 1:
        import torch

        torch.set_num_threads(threads)
        measured_train(config, run)
    else:
        from latentlm.training.launch import launch

        launch(measured_train, (config, run), num_processes=processes)


def run_setting(config: Path, workdir: Path, processes: int, threads: int) -> dict:
    run = workdir / f"run{processes}"
    shutil.rmtree(run, ignore_errors=True)
    subprocess.run([sys.executable, __file__, "--worker", str(processes), str(threads), str(config), str(run)],
                   check=True)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["step"] > WARMUP]
    seconds = timed[-1]["elapsed_s"] - records[WARMUP - 1]["elapsed_s"]
    batch = yaml.safe_load(config.read_text())["train"]["batch_size"]
    rss = [json.loads(p.read_text()) for p in sorted(run.glob("rss_*.json"))]
    return {"processes": processes, "threads": threads, "steps_per_s": len(timed) / seconds, "examples_per_s": len(timed) * batch / seconds,
            "rss_each_mb": [r / 2**20 for r in rss], "loss": sum(r["loss"] for r in timed) / len(timed)}


LOSS_WINDOW = 25  # steps per mean in the loss comparison (one step's loss is one batch's noise draw)


def compare_losses(steps: int) -> None:
    """1 process vs 2 on the same global batches: mean loss over windows of LOSS_WINDOW steps."""
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-training-loss-") as tmp:
        config = bench_config(Path(tmp) / "shapes-tiny.yaml", steps, n_train=4096)
        curves = {}
        for processes, threads in ((1, cores), (2, max(1, cores // 2))):
            run_setting(config, Path(tmp), processes, threads)
            lines = (Path(tmp) / f"run{processes}" / "metrics.jsonl").read_text().splitlines()
            curves[processes] = {r["step"]: r["loss"] for r in map(json.loads, lines)}
    rows, worst = [], 0.0
    for end in range(LOSS_WINDOW, steps + 1, LOSS_WINDOW):
        window = range(end - LOSS_WINDOW + 1, end + 1)
        one, two = (statistics.mean(curves[p][s] for s in window) for p in (1, 2))
        worst = max(worst, abs(two - one) / one)
        rows.append([f"{window.start}-{end}", f"{one:.5f}", f"{two:.5f}", f"{(two - one) / one:+.2e}"])
    last = max(curves[1])
    step_rel = abs(curves[2][last] - curves[1][last]) / curves[1][last]
    body = f"""## Training loss: 2 processes vs 1 on the shipped model's config (issue 22)

Machine: {machine()}.

`latentlm/configs/shapes-tiny.yaml` with the shipped tokenizer and codec and 4096 training scenes, {steps}
steps from the same initial weights: 1 process with the whole global batch of 32 against `--num-processes 2`
(DDP over gloo) with 16 rows each. Each process's loss is its share of the global batch's mean and each row
draws its diffusion noise from its own seed (`sequence.shard_batch`), so both take the same steps up to
floating-point rounding. Mean training loss per window of {LOSS_WINDOW} steps:

{table(["steps", "1 process", "2 processes", "relative difference"], rows)}

- Largest relative difference of a window's mean: {worst:.2e}; at the last step ({last}) alone: {step_rel:.2e}
  (bar: within 2%).

Reproduce: `.venv/bin/python benchmarks/training.py --loss-steps {steps}`.
"""
    print(body)
    write_section("training-loss-2proc", body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loss-steps", type=int, help="compare the loss curves of 1 and 2 processes over N steps")
    ap.add_argument("--quick", action="store_true", help="4 steps, print only")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", nargs=4, metavar=("PROCESSES", "THREADS", "CONFIG", "RUN"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker[2]), Path(args.worker[3]), int(args.worker[0]), int(args.worker[1]))
        return
    if args.loss_steps:
        compare_losses(args.loss_steps)
        return
    steps, rounds = (4, 1) if args.quick else (args.steps, args.rounds)
    cores = os.cpu_count() or 1
    settings = [(1, cores), (1, 1), (2, max(1, cores // 2))]
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        config = bench_config(Path(tmp) / "shapes-tiny.yaml", steps)
        for round_ in range(1, rounds + 1):
            results += [run_setting(config, Path(tmp), n, t) | {"round": round_} for n, t in settings]
    load_after = os.getloadavg()[0]
    rows = [[r["round"], r["processes"], r["threads"], 32 // r["processes"], f"{r['steps_per_s']:.3f}",
             f"{r['examples_per_s']:.1f}", " + ".join(f"{m:.0f}" for m in r["rss_each_mb"]),
             f"{sum(r['rss_each_mb']):.0f}", f"{r['loss']:.4f}"] for r in results]

    def speed(processes: int, threads: int | None = None) -> float:
        return statistics.median(r["steps_per_s"] for r in results if r["processes"] == processes
                                 and threads in (None, r["threads"]))

    def rss(processes: int, threads: int | None = None) -> float:
        return statistics.median(sum(r["rss_each_mb"]) for r in results if r["processes"] == processes
                                 and threads in (None, r["threads"]))

    body = f"""## Training throughput: 1 vs 2 processes (issue 22)

Machine: {machine()}. Load average (1 min) {load_before:.2f} before the run, {load_after:.2f} after it{
        " (the machine was busy: not idle figures)" if load_before > 0.5 * (os.cpu_count() or 1) else ""}.

`latentlm/configs/shapes-tiny.yaml` (the shipped model's config: 6 M parameters, global batch 32, fp32)
with the shipped tokenizer and codec and 512 training scenes; {steps} steps, timed over the last
{steps - WARMUP} by the trainer's clock, in fresh processes, the settings alternating over {rounds}
round(s). 2 processes: `--num-processes 2` (DDP over gloo), each with half the batch and half the
threads. Peak RSS per training process (ru_maxrss). Loss: mean over the timed steps (the same global
batches).

{table(["round", "processes", "threads each", "rows per process", "steps/s", "examples/s",
        "peak RSS per process (MB)", "RSS total (MB)", "loss"], rows)}

- 2 processes / 1 process with all threads: {speed(2) / speed(1, cores):.2f}x the steps per second, for
  {rss(2) / rss(1, cores):.2f}x the memory (medians over the rounds).

Reproduce: `.venv/bin/python benchmarks/training.py` (`--quick`: 4 steps, prints only).
"""
    print(body)
    if not args.quick:
        write_section("training-throughput", body)


if __name__ == "__main__":
    main()
