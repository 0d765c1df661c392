"""Quality of the shipped `shapes-tiny` model (issues 2 and 18), written into BENCHMARKS.md.

Text-to-image sampling settings are chosen on the val split; every reported figure is on the test split.

    .venv/bin/python benchmarks/shapes_tiny.py [--model shapes-tiny] [--run RUN_DIRS...]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from report import machine, table, write_section

from latentlm.data.rendered import render_scenes
from latentlm.evaluation.codec import eval_codec
from latentlm.evaluation.plain_renderer import render_plain
from latentlm.evaluation.t2i import eval_t2i
from latentlm.evaluation.understanding import eval_caption, eval_ground, eval_vqa
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


SWEEP = [(cfg, temperature) for cfg in (1.5, 2.0, 3.0) for temperature in (0.7, 0.85, 1.0)]


def choose_sampling(model: LatentLM, n: int) -> tuple[tuple[float, float], str]:
    """CFG x temperature on the val split (seed 0): the setting with the best single + pair adherence.

    Only val prompts take part in the choice; the test split is used once, to report."""
    rows, scores = [], {}
    for cfg, temperature in SWEEP:
        r = eval_t2i(model, n, n, steps=20, cfg_scale=cfg, seed=0, temperature=temperature, progress=False, split="val")
        scores[(cfg, temperature)] = r["single_adherence"] + r["pair_adherence"]
        rows.append([cfg, temperature, f"{100 * r['single_adherence']:.1f}%", f"{100 * r['pair_adherence']:.1f}%"])
    best = max(scores, key=scores.get)
    text = (f"### Sampling settings, chosen on the val split (seed 0, {2 * n} prompts)\n\n"
            + table(["CFG", "temperature", "single", "pair"], rows)
            + f"\n\nChosen: CFG {best[0]}, temperature {best[1]} (best single + pair on val).\n")
    return best, text


def understanding(model: LatentLM) -> tuple[list[list], dict]:
    """Caption, question and grounding figures on the test split, for both renderers."""
    reports = {}
    for name, render in (("shapes", render_scenes), ("plain", render_plain)):
        reports[name] = {
            "caption": eval_caption(model, n=400, split="test", progress=False, render=render),
            "caption_prompt": eval_caption(model, n=400, split="test", progress=False, render=render, via_boxes=False),
            "vqa": eval_vqa(model, n=420, split="test", progress=False, render=render),
            "ground": eval_ground(model, n=300, split="test", progress=False, render=render),
        }
    rows = []
    for label, bar, get in UNDERSTANDING_BARS:
        a, b = get(reports["shapes"]), get(reports["plain"])
        rows.append([label, bar, f"{100 * a:.1f}%", f"{100 * b:.1f}%"])
    return rows, reports


UNDERSTANDING_BARS = [
    ("caption, single-object scenes", ">= 97%", lambda r: r["caption"]["single"]),
    ("caption, two-object scenes", ">= 85%", lambda r: r["caption"]["pair"]),
    ("(caption, two-object scenes, from the plain caption prompt instead of via boxes)", "-",
     lambda r: r["caption_prompt"]["pair"]),
    ("question answering, all kinds", ">= 90% each", lambda r: r["vqa"]["accuracy"]),
    ("question answering, weakest kind", ">= 90%", lambda r: r["vqa"]["min_kind"]),
    ("phrase grounding, IoU >= 0.5", ">= 90%", lambda r: r["ground"]["phrase_grounding"]),
    ("grounded captions, every object boxed at IoU >= 0.5", ">= 85%", lambda r: r["ground"]["grounded_caption"]),
]


def task_mix(config: Path) -> str:
    import yaml

    if not config.exists():
        return "n/a"
    tasks = yaml.safe_load(config.read_text())["data"]["tasks"]
    total = sum(tasks.values())
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in tasks.items())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shapes-tiny")
    ap.add_argument("--run", type=Path, nargs="+",
                    default=[Path("runs/shapes-tiny"), Path("runs/shapes-tiny-2"), Path("runs/shapes-tiny-3")],
                    help="The LM's run folders, one per training stage.")
    ap.add_argument("--codec-run", type=Path, default=Path("runs/vae"))
    ap.add_argument("--val-prompts", type=int, default=120, help="prompts of each kind in the val sweep")
    args = ap.parse_args()

    model = LatentLM.from_pretrained(args.model)
    (cfg, temperature), sweep_text = choose_sampling(model, args.val_prompts)
    t0 = time.perf_counter()
    t2i = eval_t2i(model, 120, 120, steps=20, cfg_scale=cfg, seed=0, temperature=temperature, split="test")
    t2i_s = time.perf_counter() - t0
    seed1 = eval_t2i(model, 120, 120, steps=20, cfg_scale=cfg, seed=1, temperature=temperature, split="test")
    codec = eval_codec(model.codecs["image"], n=256, split="test")
    rows, reports = understanding(model)
    defaults = "the package defaults" if (cfg, temperature) == (DEFAULT_CFG, DEFAULT_TEMPERATURE) else (
        f"NOT the package defaults (CFG {DEFAULT_CFG}, temperature {DEFAULT_TEMPERATURE}): update sampling_defaults.py")
    body = f"""## shapes-tiny: quality bars (issues 2 and 18)

Machine: {machine()}.

One model draws and reads. Text-to-image settings were chosen on the val split (below) and are {defaults};
every figure here is on the test split, which took no part in any choice.

| measure | bar | measured |
|---|---|---|
| single-object prompt adherence ({t2i['n_single']} test prompts, seed 0, {t2i['steps']} DPM-Solver++ steps, CFG {cfg}, temperature {temperature}) | >= 92% | {100 * t2i['single_adherence']:.1f}% |
| two-object prompts with a relation ({t2i['n_pair']} test prompts) | >= 75% | {100 * t2i['pair_adherence']:.1f}% |
| sigma-VAE reconstruction PSNR, test split ({codec['n']} pictures) | >= 30 dB | {codec['psnr_db']:.2f} dB (min {codec['psnr_min_db']:.2f}) |

- The same with seed 1: single {100 * seed1['single_adherence']:.1f}%, pair {100 * seed1['pair_adherence']:.1f}%.
- Evaluation time: {t2i_s:.0f} s for {t2i['n_single'] + t2i['n_pair']} pictures.

### Reading pictures (test split; `latentlm eval caption|vqa|ground`)

"plain": the same scenes drawn by `latentlm.evaluation.plain_renderer` (anti-aliased, written from the spec
alone); the bar there is the same within 5 points.

{table(["measure", "bar", "shapes renderer", "plain renderer"], rows)}

- Question accuracy per kind (shapes renderer): {', '.join(f'{k} {100 * v:.1f}%' for k, v in reports['shapes']['vqa']['per_kind'].items())}.
- Per kind (plain renderer): {', '.join(f'{k} {100 * v:.1f}%' for k, v in reports['plain']['vqa']['per_kind'].items())}.
- Scenes: captions {reports['shapes']['caption']['n_single']} single + {reports['shapes']['caption']['n_pair']} pairs; questions {reports['shapes']['vqa']['n']}; grounding {reports['shapes']['ground']['n']}.

### Model and training

- LatentLM parameters: {model.num_parameters() / 1e6:.2f} M; codec parameters: {sum(p.numel() for p in model.codecs['image'].parameters()) / 1e6:.2f} M.
- Task mix of stage 3 (`latentlm/configs/shapes-tiny-stage3.yaml`): {task_mix(Path('latentlm/configs/shapes-tiny-stage3.yaml'))}.
- LatentLM training: {'; then '.join(f'{run}: {training_time(run)}' for run in args.run)}.
- sigma-VAE training: {training_time(args.codec_run)}.

Reproduce: `make shapes-tiny`, then `.venv/bin/python benchmarks/shapes_tiny.py --run RUN_DIRS...`.

{sweep_text}"""
    write_section("shapes-tiny", body)
    print(body)
    print(json.dumps(reports, indent=1)[:4000])


if __name__ == "__main__":
    main()
