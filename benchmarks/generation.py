"""Interactive speed of the shipped `shapes-tiny` model: pictures and captions, written into BENCHMARKS.md.

One picture is 64 latents x 20 DPM-Solver++ steps of the diffusion head (a tiny MLP on [2, 256] rows,
guided) plus 64 one-token backbone steps and a VAE decode, so its time is per-call overhead and thread
hand-offs, not arithmetic. Measured in one warm process, side by side:

- before: the code before the fast path, kept as `sample_image_latents_reference` (a new diffusers
  scheduler and the whole head MLP per step) + the decode, at the process's thread setting (torch's
  default: one thread per core); and the same code in one thread (what OMP_NUM_THREADS=1 gave);
- after: `generate_images` (one `LatentSampler` per batch, one thread at small batch), fused: each latent's
  20 steps (head MLP + solver) in one C++ call (`FusedLatentLoop`, kernels/adaln_head), its "head" phase
  holding the solver too; and step by step (`FUSED_SAMPLING = False`): the head op by op and diffusers'
  `step` per step, bit-exact with the old code.

Each under two loads: nothing of ours beside it, and one busy process beside it (a single-threaded
numpy matmul loop, started here). Times are split into backbone (prefill + one step per latent), head
(the MLP), solver (diffusers' `step` and the starting noise), decode (VAE decode + PIL) by timers
around each phase (`PhaseClock`). A caption (`latentlm.understanding.caption`, not changed here) is
timed at the process's threads and in one thread for comparison.

    .venv/bin/python benchmarks/generation.py            # writes BENCHMARKS.md (the machine should be idle)
    .venv/bin/python benchmarks/generation.py --quick    # smoke run: 4 solver steps, batch 4; prints only
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import torch
from report import machine, table, write_section

from latentlm import diffusion_head, generation
from latentlm.data.rendered import shapes_images
from latentlm.diffusion_head import PhaseClock
from latentlm.errors import PromptError
from latentlm.generation import generate_images, sample_image_latents_reference
from latentlm.images import to_pil
from latentlm.model import LatentLM
from latentlm.sampling_defaults import DEFAULT_CFG, DEFAULT_STEPS, DEFAULT_TEMPERATURE
from latentlm.understanding import caption

PROMPT = "a red circle above a blue square"
PROMPTS = ["a red circle above a blue square", "a green triangle", "a blue square left of a yellow circle",
           "a purple circle", "a red square below a green circle", "a yellow triangle right of a blue circle",
           "an orange square", "a blue triangle above a red circle"]
PHASES = ("backbone", "head", "solver", "decode")
BUSY_LOOP = ("import numpy as np\n"
             "a = np.random.rand(512, 512)\n"
             "while True:\n"
             "    a = (a @ a) * (1.0 / 512)\n")


@contextmanager
def busy_process(on: bool):
    """One CPU-bound single-threaded process beside the measurement (numpy matmuls), or nothing."""
    if not on:
        yield
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], env=env)
    time.sleep(1.0)  # let it start spinning
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def threads(n: int | None):
    """Run with n intra-op threads (None: leave the process's setting)."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def picture_before(model: LatentLM, prompts: list[str], steps: int, seed: int, clock: PhaseClock):
    """The code before this change: the reference sampling loop, then decode, at the current threads."""
    generator = torch.Generator().manual_seed(seed)
    z = sample_image_latents_reference(model, prompts, steps, DEFAULT_CFG, generator, DEFAULT_TEMPERATURE, clock)
    clock.lap("other")
    codec = model.codecs["image"]
    with torch.no_grad():
        images = [to_pil(p) for p in codec.decode(codec.denormalize(z))]
    clock.lap("decode")
    return images


def picture_after(model: LatentLM, prompts: list[str], steps: int, seed: int, clock: PhaseClock):
    return generate_images(model, prompts, steps, DEFAULT_CFG, seed, DEFAULT_TEMPERATURE, clock=clock)


@contextmanager
def setting(module, name: str, value):
    """module.name = value for the block, then the old value back."""
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def timed(fn, reps: int) -> dict:
    """Median wall time of `reps` calls (phases from the median call), process CPU time, the last output."""
    runs = []
    for _ in range(reps):
        clock = PhaseClock()
        cpu, start = time.process_time(), time.perf_counter()
        out = fn(clock)
        runs.append({"total": time.perf_counter() - start, "cpu": time.process_time() - cpu, **clock.seconds})
    runs.sort(key=lambda r: r["total"])
    return {**runs[len(runs) // 2], "min": runs[0]["total"], "reps": reps, "output": out}


def caption_run(model: LatentLM, pixels: torch.Tensor, clock: PhaseClock) -> list[str]:
    """`caption`, with its VAE encode timed inside it ("encode"); the rest is backbone and LM head."""
    codec = model.codecs["image"]
    encode, spent = codec.encode, [0.0]

    def timed_encode(*args, **kwargs):
        start = time.perf_counter()
        try:
            return encode(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    codec.encode = timed_encode  # an instance attribute over the method, for this call only
    try:
        start = time.perf_counter()
        out = caption(model, pixels)
        clock.seconds["caption"] = time.perf_counter() - start
    finally:
        del codec.encode
    clock.seconds["encode"] = spent[0]
    return out


def fmt(s: float | None) -> str:
    return "-" if s is None else f"{s:.3f}" if s < 10 else f"{s:.1f}"


IDLE, BUSY = "nothing", "one busy process"
STEPWISE, INEXACT = "after, step by step", "after, step by step, EXACT_MODULATIONS = False"


def max_pixel_difference(a: list, b: list) -> int:
    """The largest difference of two lists of PIL pictures, in 8-bit levels."""
    return max(int((torch.tensor(list(i.tobytes())) - torch.tensor(list(j.tobytes()))).abs().max())
               for i, j in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-tiny")
    ap.add_argument("--quick", action="store_true", help="4 solver steps, batch 4, one run each; print only")
    ap.add_argument("--reps", type=int, default=3, help="runs per measurement of the fast path (median)")
    ap.add_argument("--one-thread-only", action="store_true",
                    help="skip the pictures at the default threads (the old code, and the fast path with its "
                         "one-thread rule off): on a loaded machine they take minutes per picture")
    args = ap.parse_args()
    steps = 4 if args.quick else DEFAULT_STEPS
    batch = 4 if args.quick else 16
    reps = 1 if args.quick else args.reps
    model = LatentLM.from_pretrained(args.model)
    nt = torch.get_num_threads()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    pixels = shapes_images("test", [0])
    load_before = os.getloadavg()[0]
    picture_after(model, [PROMPT], steps, 0, PhaseClock())  # warm-up
    try:
        caption(model, pixels)
        reads = True
    except PromptError:  # a model trained to draw only: no caption rows
        reads = False

    # (path, threads, label): the old code at the default threads and in one thread, the fast path
    variants = [("before", nt, f"before, {nt} threads"), ("before", 1, "before, 1 thread"),
                ("after", None, "after, fused (1 thread at this batch)")]
    if args.one_thread_only:
        variants = variants[1:]
    rows, res = [], {}

    def row(workload: str, load: str, label: str, r: dict, n: int) -> None:
        rows.append([workload, load, label, fmt(r["total"]), f"{n / r['total']:.2f}", fmt(r["cpu"]),
                     *(fmt(r.get(p)) for p in PHASES), fmt(r.get("other", 0.0))])
        print(" | ".join(rows[-1]), flush=True)

    for load in (IDLE, BUSY):
        with busy_process(load == BUSY):
            for path, n, label in variants:
                fn = picture_after if path == "after" else picture_before
                runs = reps if path == "after" else 1  # the old code can take a minute beside a busy process
                with threads(n):
                    res[load, label, 1] = timed(lambda clock: fn(model, [PROMPT], steps, 0, clock), runs)
                    row("1 picture, batch 1", load, label, res[load, label, 1], 1)
                    res[load, label, batch] = timed(lambda clock: fn(model, prompts, steps, 1, clock), 1)
                    row(f"{batch} pictures, batch {batch}", load, label, res[load, label, batch], batch)
            # the fast path step by step (bit-exact with the old code), and with the modulations of a latent's
            # steps in one product (not bit-identical)
            with setting(diffusion_head, "FUSED_SAMPLING", False):
                for label, exact in ((STEPWISE, True), (INEXACT, False)):
                    with setting(diffusion_head, "EXACT_MODULATIONS", exact):
                        res[load, label, 1] = timed(lambda clock: picture_after(model, [PROMPT], steps, 0, clock), reps)
                    row("1 picture, batch 1", load, label, res[load, label, 1], 1)
            if not args.one_thread_only:  # the fast path at the default threads, to set ONE_THREAD_PICTURES
                label, saved = f"after, one-thread rule off ({nt} threads)", generation.ONE_THREAD_PICTURES
                generation.ONE_THREAD_PICTURES = 0
                try:
                    res[load, label, batch] = timed(lambda clock: picture_after(model, prompts, steps, 1, clock), 1)
                finally:
                    generation.ONE_THREAD_PICTURES = saved
                row(f"{batch} pictures, batch {batch}", load, label, res[load, label, batch], batch)
            for n in (nt, 1) if reads else ():
                with threads(n):
                    r = res[load, "caption", n] = timed(lambda clock: caption_run(model, pixels, clock), reps)
                rows.append(["caption, batch 1", load, f"{n} thread{'s' if n > 1 else ''}", fmt(r["caption"]),
                             f"{1 / r['caption']:.2f}", fmt(r["cpu"]), fmt(r["caption"] - r["encode"]), "-", "-",
                             "-", fmt(r["encode"])])
                print(" | ".join(rows[-1]), flush=True)
    load_after = os.getloadavg()[0]

    def t(load, label, n=1):
        return res[load, label, n]["total"]

    def same(a: list, b: list) -> str:  # the same pictures, PIL bytes
        return "yes" if [i.tobytes() for i in a] == [i.tobytes() for i in b] else "NO"

    fast, old1, oldn = variants[-1][2], "before, 1 thread", f"before, {nt} threads"
    inexact = INEXACT
    lines = [
        f"- One picture at batch 1, fast path: **{t(IDLE, fast):.3f} s** with nothing of ours beside it "
        f"(bar <= 0.5 s); {t(BUSY, fast):.3f} s beside one busy process, **{t(BUSY, fast) / t(IDLE, fast):.2f}x** "
        f"(bar <= 3x).",
        f"- Fused vs step by step (each latent's steps in one C++ call vs op by op and diffusers' `step`): "
        f"{t(IDLE, STEPWISE):.3f} s -> {t(IDLE, fast):.3f} s per picture, {t(IDLE, STEPWISE) / t(IDLE, fast):.2f}x; "
        f"beside a busy process {t(BUSY, STEPWISE) / t(BUSY, fast):.2f}x.",
        f"- Fast path vs the old code in one thread (what OMP_NUM_THREADS=1 gave): "
        f"{t(IDLE, old1) / t(IDLE, fast):.2f}x faster per picture; beside a busy process "
        f"{t(BUSY, old1) / t(BUSY, fast):.2f}x.",
    ]
    if args.one_thread_only:
        lines.append("- Pictures at the default threads not measured in this run (`--one-thread-only`).")
    else:
        off = f"after, one-thread rule off ({nt} threads)"
        lines += [
            f"- Fast path vs the old code at the default {nt} threads: {t(IDLE, oldn) / t(IDLE, fast):.1f}x faster "
            f"per picture; beside a busy process {t(BUSY, oldn) / t(BUSY, fast):.1f}x (the old code: "
            f"{t(IDLE, oldn):.2f} s, beside a busy process {t(BUSY, oldn):.2f} s).",
            f"- {batch} pictures at batch {batch}, fast path: {batch / t(IDLE, fast, batch):.2f} pictures/s in one "
            f"thread, {batch / t(IDLE, off, batch):.2f} at {nt} threads; beside a busy process "
            f"{batch / t(BUSY, fast, batch):.2f} and {batch / t(BUSY, off, batch):.2f} "
            f"(`ONE_THREAD_PICTURES` = {generation.ONE_THREAD_PICTURES}).",
        ]
    if reads:
        cap = {(load, n): res[load, "caption", n]["caption"] for load in (IDLE, BUSY) for n in (nt, 1)}
        lines.append(
            f"- Caption at batch 1 (not changed here): {cap[IDLE, nt]:.3f} s at {nt} threads, {cap[IDLE, 1]:.3f} s "
            f"in one thread; beside a busy process {cap[BUSY, nt]:.3f} s and {cap[BUSY, 1]:.3f} s.")
    else:
        lines.append(f"- No captions: `{args.model}` was trained to draw only.")
    out = {key: r.get("output") for key, r in res.items()}
    check = (f"- Same seed, same pictures (PIL bytes), old code in one thread vs the step-by-step path: batch 1 "
             f"{same(out[IDLE, old1, 1], out[IDLE, STEPWISE, 1])}")
    if not args.one_thread_only:
        check += f"; old code at {nt} threads vs it: {same(out[IDLE, oldn, 1], out[IDLE, STEPWISE, 1])}"
    check += (f". Fused (within fp32 rounding, not bit for bit) vs the old code in one thread: pixels differ by at "
              f"most {max_pixel_difference(out[IDLE, old1, 1], out[IDLE, fast, 1])} levels at batch 1, "
              f"{max_pixel_difference(out[IDLE, old1, batch], out[IDLE, fast, batch])} at batch {batch}")
    lines.append(check + ".")
    lines.append(
        f"- With `EXACT_MODULATIONS = False` (one matrix product for the modulations of a latent's {steps} steps): "
        f"{t(IDLE, inexact):.3f} s per picture step by step, {t(BUSY, inexact):.3f} s beside a busy process; the "
        f"same picture as the exact step-by-step path: {same(out[IDLE, inexact, 1], out[IDLE, STEPWISE, 1])}.")
    busy_note = " (the machine was busy: not idle figures)" if load_before > 0.5 else ""
    body = f"""## Generation speed: pictures and captions (interactive use)

Machine: {machine()}. Load average (1 min) {load_before:.2f} before the run, {load_after:.2f} after it{busy_note}.

Shipped `{args.model}`, warm process, {steps} DPM-Solver++ steps, CFG {DEFAULT_CFG}, temperature \
{DEFAULT_TEMPERATURE}; one picture: "{PROMPT}", seed 0; the batch of {batch} cycles {len(PROMPTS)} prompts. \
"beside it": nothing of ours, or one busy process (a single-threaded numpy matmul loop). Wall seconds per \
call ({"one run" if reps == 1 else f"median of {reps} runs of the fast path at batch 1, one run otherwise"}); \
"per s": pictures or captions per second; "cpu": this process's CPU seconds; the phases are wall time. \
Before: the straightforward loop (`sample_image_latents_reference`) + decode, at the threads named; after: \
`generate_images`, fused (each latent's steps in one C++ call: "head" holds the solver too) or step by step \
(`FUSED_SAMPLING = False`). Caption rows: "backbone" is the caption minus its VAE encode (prefill, greedy steps, \
LM head), "other" the encode.

{table(["workload", "beside it", "path", "wall (s)", "per s", "cpu (s)", *PHASES, "other"], rows)}

{chr(10).join(lines)}

Reproduce: `.venv/bin/python benchmarks/generation.py` on an idle machine (`--quick`: a smoke run).
"""
    print(body)
    if not args.quick:
        write_section("generation", body)


if __name__ == "__main__":
    main()
