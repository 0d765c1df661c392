"""Quality of the shipped `shapes-tiny` model (issue 2 bars), written into BENCHMARKS.md.

    .venv/bin/python benchmarks/shapes_tiny.py [--model shapes-tiny] [--run runs/shapes-tiny]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from report import machine, write_section

from latentlm.evaluation import eval_codec, eval_t2i
from latentlm.model import LatentLM


def training_time(run: Path) -> str:
    path = run / "metrics.jsonl"
    if not path.exists():
        return "n/a (run folder not present)"
    last = json.loads(path.read_text().splitlines()[-1])
    return f"{last['elapsed_s'] / 60:.0f} min for the last invocation ({last['step']} steps)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-tiny")
    ap.add_argument("--run", type=Path, default=Path("runs/shapes-tiny"))
    ap.add_argument("--codec-run", type=Path, default=Path("runs/vae"))
    ap.add_argument("--cfg", type=float, default=3.0)
    args = ap.parse_args()

    model = LatentLM.from_pretrained(args.model)
    t0 = time.perf_counter()
    t2i = eval_t2i(model, 120, 120, steps=20, cfg_scale=args.cfg, seed=0)
    t2i_s = time.perf_counter() - t0
    codec = eval_codec(model.codecs["image"], n=256, split="test")
    body = f"""## shapes-tiny: quality bars (issue 2)

Machine: {machine()}.

| measure | bar | measured |
|---|---|---|
| single-object prompt adherence ({t2i['n_single']} held-out prompts, seed 0, {t2i['steps']} DPM-Solver++ steps, CFG {t2i['cfg_scale']}) | >= 90% | {100 * t2i['single_adherence']:.1f}% |
| two-object prompts with a relation: adherence ({t2i['n_pair']} prompts) | >= 60% | {100 * t2i['pair_adherence']:.1f}% |
| sigma-VAE reconstruction PSNR, test split ({codec['n']} pictures) | >= 30 dB | {codec['psnr_db']:.2f} dB (min {codec['psnr_min_db']:.2f}) |

- Evaluation time: {t2i_s:.0f} s for {t2i['n_single'] + t2i['n_pair']} pictures.
- LatentLM parameters: {model.num_parameters() / 1e6:.2f} M; codec parameters: {sum(p.numel() for p in model.codecs['image'].parameters()) / 1e6:.2f} M.
- LatentLM training: {training_time(args.run)}; sigma-VAE training: {training_time(args.codec_run)}.

Reproduce: `make shapes-tiny`, then `.venv/bin/python benchmarks/shapes_tiny.py`.
"""
    write_section("shapes-tiny", body)
    print(body)


if __name__ == "__main__":
    main()
