"""Session overhead per request on the shipped `shapes-tiny`: planning, checking and the trace, against the
workflow's own time, written into BENCHMARKS.md.

Each request goes through `Session.run` whole. Inside it, the workflow's own `run` (the model work:
`generate_images` for text-to-image; the VAE encode and greedy decoding for caption) is timed by a
wrapper around it. The overhead of a request is whole minus own: the planner, the vocabulary check,
loading the picture passed in, pydantic validation of the inputs, the step record, merging outputs into
the Result and remembering them. Planning and the check are also timed alone, many times over, since
they are the parts a longer request makes longer. Medians per request; one warm process.

Bar (issue 20): overhead <= 2% of the workflow's own time.

    .venv/bin/python benchmarks/session_overhead.py            # writes BENCHMARKS.md
    .venv/bin/python benchmarks/session_overhead.py --quick    # a few runs, prints only
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import contextmanager

import torch
from report import machine, table, write_section

from latentlm.data.shapes import scene_for
from latentlm.model import LatentLM
from latentlm.workflows.registry import REGISTRY
from latentlm.workflows.session import Session

BAR = 0.02
REQUESTS = [  # (label, request, needs a picture)
    ("text-to-image", "draw a red circle above a blue square", False),
    ("caption", "describe this picture", True),
    ("text-to-image + caption", "draw a red circle and describe it", False),
]


@contextmanager
def threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def own_time(spent: list[float]):
    """Time every registered workflow's own `run` into `spent` (the instance attribute shadows the method)."""
    originals = {}
    for workflow in REGISTRY.values():
        originals[workflow] = workflow.run

        def timed(*args, _run=workflow.run, **kwargs):
            start = time.perf_counter()
            try:
                return _run(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - start)

        workflow.run = timed
    try:
        yield
    finally:
        for workflow in originals:
            del workflow.run


def measure(session: Session, request: str, picture, reps: int) -> dict:
    """Median whole, own and overhead seconds of `reps` runs of `request` (after one warm-up run)."""
    session.run(request, image=picture, seed=0)
    wholes, owns, overheads = [], [], []
    for i in range(reps):
        spent: list[float] = []
        with own_time(spent):
            start = time.perf_counter()
            session.run(request, image=picture, seed=i)
            whole = time.perf_counter() - start
        wholes.append(whole)
        owns.append(sum(spent))
        overheads.append(whole - sum(spent))
    return {"whole": statistics.median(wholes), "own": statistics.median(owns),
            "overhead": statistics.median(overheads),
            "share": statistics.median(o / w for o, w in zip(overheads, owns))}


def micro(session: Session, request: str, picture, n: int = 2000) -> tuple[float, float]:
    """Microseconds per `Session.plan` and per `Session.vet` of its steps (warm)."""
    the_plan = session.plan(request, picture)
    session.vet(the_plan.steps)
    start = time.perf_counter()
    for _ in range(n):
        session.plan(request, picture)
    plan_us = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for _ in range(n):
        session.vet(the_plan.steps)
    return plan_us, (time.perf_counter() - start) / n * 1e6


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-tiny")
    ap.add_argument("--quick", action="store_true", help="2 runs per request; print only")
    ap.add_argument("--reps", type=int, default=9, help="runs per request and thread setting (median)")
    args = ap.parse_args()
    reps = 2 if args.quick else args.reps
    session = Session(LatentLM.from_pretrained(args.model))
    picture = scene_for("test", 0).render()
    nt = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    rows, worst = [], 0.0
    for n in sorted({nt, 1}, reverse=True):
        with threads(n):
            for label, request, needs_picture in REQUESTS:
                image = picture if needs_picture else None
                r = measure(session, request, image, reps)
                plan_us, vet_us = micro(session, request, image)
                worst = max(worst, r["share"])
                rows.append([label, f"`{request}`", n, ms(r["own"]), ms(r["whole"]), ms(r["overhead"]),
                             f"{r['share'] * 100:.2f}%", f"{plan_us:.0f}", f"{vet_us:.0f}"])
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
    load_after = os.getloadavg()[0]
    busy = load_before > 0.5 * (os.cpu_count() or 1)
    headers = ["workflow(s)", "request", "threads", "workflow's own (ms)", "Session.run (ms)", "overhead (ms)",
               "overhead / own", "plan (us)", "check (us)"]
    body = f"""## Session overhead per request (issue 20)

Machine: {machine()}. Load average (1 min) {load_before:.2f} before the run, {load_after:.2f} after it{
        " (the machine was busy: not idle figures)" if busy else ""}.

Shipped `shapes-tiny`, warm process, default sampling settings; the caption reads a rendered 64x64 test scene
passed as a PIL picture. Per request, the median of {reps} runs (seeds 0..{reps - 1}, after a warm-up run):
"workflow's own" is the time inside the workflows' `run` (the model work), "Session.run" the whole call,
"overhead" their difference per run (planning, the vocabulary check, loading the picture, pydantic
validation, the step records, the Result, the memory). "plan" and "check" are `Session.plan` and
`Session.vet` alone, averaged over 2,000 calls.

{table(headers, rows)}

- Largest overhead over the workflow's own time: **{worst * 100:.2f}%** (bar <= {BAR * 100:.0f}%): \
{"met" if worst <= BAR else "missed"}.

Reproduce: `.venv/bin/python benchmarks/session_overhead.py` (`--quick`: a smoke run that prints only).
"""
    print(body)
    if not args.quick:
        write_section("session-overhead", body)


if __name__ == "__main__":
    main()
