"""Quality of the shipped `shapes-tiny` model (issue 2 bars), written into BENCHMARKS.md.

    .venv/bin/python benchmarks/shapes_tiny.py [--model shapes-tiny] [--run runs/shapes-tiny]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from report import machine, table, write_section

from latentlm.evaluation import eval_codec, eval_t2i
from latentlm.model import LatentLM
from latentlm.sampling_defaults import DEFAULT_CFG, DEFAULT_TEMPERATURE


def training_time(run: Path) -> str:
    """Wall time summed over the run's invocations (elapsed_s restarts at each --resume)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return "n/a (run folder not present)"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    total, invocations = 0.0, 1
    for prev, row in zip(rows, rows[1:]):
        if row["elapsed_s"] < prev["elapsed_s"]:  # a resumed invocation started here
            total, invocations = total + prev["elapsed_s"], invocations + 1
    total += rows[-1]["elapsed_s"]
    return f"{total / 60:.0f} min over {invocations} invocation(s) ({rows[-1]['step']} steps)"


def sweep(model: LatentLM) -> str:
    """Adherence over a CFG x temperature grid (seed 0): how the sampling defaults were chosen."""
    rows = []
    for cfg in (2.0, 3.0):
        for temperature in (0.8, 0.85, 1.0):
            r = eval_t2i(model, 120, 120, steps=20, cfg_scale=cfg, seed=0, temperature=temperature, progress=False)
            rows.append([cfg, temperature, f"{100 * r['single_adherence']:.1f}%", f"{100 * r['pair_adherence']:.1f}%"])
    return "### Sampling settings (seed 0, 240 prompts)\n\n" + table(["CFG", "temperature", "single", "pair"], rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-tiny")
    ap.add_argument("--run", type=Path, nargs="+", default=[Path("runs/shapes-tiny"), Path("runs/shapes-tiny-2")],
                    help="The LM's run folders, one per training stage.")
    ap.add_argument("--codec-run", type=Path, default=Path("runs/vae"))
    ap.add_argument("--cfg", type=float, default=DEFAULT_CFG)
    ap.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    ap.add_argument("--sweep", action="store_true", help="also measure a CFG x temperature grid (about 5 min)")
    args = ap.parse_args()

    model = LatentLM.from_pretrained(args.model)
    t0 = time.perf_counter()
    t2i = eval_t2i(model, 120, 120, steps=20, cfg_scale=args.cfg, seed=0, temperature=args.temperature)
    t2i_s = time.perf_counter() - t0
    codec = eval_codec(model.codecs["image"], n=256, split="test")
    seed1 = eval_t2i(model, 120, 120, steps=20, cfg_scale=args.cfg, seed=1, temperature=args.temperature)
    body = f"""## shapes-tiny: quality bars (issue 2)

Machine: {machine()}.

| measure | bar | measured |
|---|---|---|
| single-object prompt adherence ({t2i['n_single']} held-out prompts, seed 0, {t2i['steps']} DPM-Solver++ steps, CFG {t2i['cfg_scale']}, temperature {t2i['temperature']}) | >= 90% | {100 * t2i['single_adherence']:.1f}% |
| two-object prompts with a relation: adherence ({t2i['n_pair']} prompts) | >= 60% | {100 * t2i['pair_adherence']:.1f}% |
| sigma-VAE reconstruction PSNR, test split ({codec['n']} pictures) | >= 30 dB | {codec['psnr_db']:.2f} dB (min {codec['psnr_min_db']:.2f}) |

- The same with seed 1: single {100 * seed1['single_adherence']:.1f}%, pair {100 * seed1['pair_adherence']:.1f}%.
- Evaluation time: {t2i_s:.0f} s for {t2i['n_single'] + t2i['n_pair']} pictures.
- LatentLM parameters: {model.num_parameters() / 1e6:.2f} M; codec parameters: {sum(p.numel() for p in model.codecs['image'].parameters()) / 1e6:.2f} M.
- LatentLM training: {'; then '.join(f'{run}: {training_time(run)}' for run in args.run)}.
- sigma-VAE training: {training_time(args.codec_run)}.

Reproduce: `make shapes-tiny`, then `.venv/bin/python benchmarks/shapes_tiny.py [--sweep]`.
"""
    if args.sweep:
        body += "\n" + sweep(model)
    write_section("shapes-tiny", body)
    print(body)


if __name__ == "__main__":
    main()
