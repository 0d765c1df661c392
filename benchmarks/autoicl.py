"""AutoICL measured (issue 21): does context help this model read pictures, and does self-made context?

    .venv/bin/python benchmarks/autoicl.py --model PATH --split val --n 100 [--json out.json]

Eval sets (the understanding evals' items and scoring, `latentlm.evaluation.understanding`):
- caption: a caption (via boxes, the default route) names every object and the relation;
- vqa: exact match, the seven question kinds taking turns;
- ground: the phrase's box at IoU >= 0.5;
each on the training renderer and on shifted pictures (`latentlm.evaluation.shifts`): the other
renderer, a colour shift of +-15 per channel, JPEG quality 30, objects 20% smaller.

Prompting conditions (`latentlm.workflows.autoicl`):
- direct: the query alone;
- gold: N true demonstrations of the query's task (same question kind) on train-split scenes, drawn
  with the same shift as the set (a fixed few-shot prompt per task);
- autoicl-gen: AutoICL generating mode (the model's own captions, drawings and answers, self-checked);
- autoicl-ret: AutoICL retrieving mode; the pool is unlabelled train-split pictures with the set's shift.
- gold-near, autoicl-ret-near: the same with demonstrations chosen per query, nearest its picture
  (`select="similar"`, `latentlm.workflows.demo_selection`): N of --gold-pool true demonstrations per
  task, or pool pictures looked at from the nearest on (the pool is then --near-pool pictures).
Demonstrations are cached per task kind within a row (a row = one eval set x shift x condition), so a
row's calls and seconds per query include making them once per kind, amortised over its queries.

Columns: accuracy, model calls per query, seconds per query, and demonstrations kept of those looked
at (summed over the row's fresh runs). Markdown on stdout; `--json` writes every figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from report import machine, table

from latentlm.data.shapes import Scene, scene_for, scene_rng
from latentlm.data.tasks import QUESTION_KINDS, ground_prompt
from latentlm.evaluation.shifts import SHIFTS, Shift
from latentlm.evaluation.understanding import (answer_is_right, box_is_right, caption_is_right, ground_items, scenes,
                                               vqa_items)
from latentlm.grounding import parse_grounded
from latentlm.understanding import answer_text
from latentlm.model import LatentLM
from latentlm.sampling_defaults import DEFAULT_CFG, DEFAULT_STEPS, DEFAULT_TEMPERATURE
from latentlm.workflows.autoicl import Demo, Prompting
from latentlm.workflows.icl_model import LatentLMForICL
from latentlm.workflows.icl_tasks import (CAPTION, GROUND, Query, caption_query, example_for, fits, ground_query,
                                          question_query)

EVAL_SETS = ("caption", "vqa", "ground")
CONDITIONS = ("direct", "gold", "autoicl-gen", "autoicl-ret", "gold-near", "autoicl-ret-near")
GOLD_START = 500_000  # train-split scenes for gold demonstrations start here, the pool at POOL_START
POOL_START = 600_000


# ---- items: (query, is the completion right?) ----------------------------------------------------------
def items(eval_set: str, shift: Shift, split: str, n: int) -> list[tuple[Query, Callable[[str], bool]]]:
    """The eval set's queries on shifted pictures, each with its scorer of the raw completion."""
    truth = [shift.scene(s) for s in scenes(split, n)]
    pictures = [shift.draw(s) for s in truth]
    if eval_set == "caption":
        return [(caption_query(p), lambda out, s=s: caption_is_right(parse_grounded(out).text, s))
                for p, s in zip(pictures, truth)]
    if eval_set == "vqa":
        return [(question_query(p, q.prompt), lambda out, q=q: answer_is_right(answer_text(out), q.answer))
                for p, (_, q) in zip(pictures, vqa_items(truth))]
    return [(ground_query(p, phrase), lambda out, o=obj, ph=phrase: box_is_right(ground_prompt(ph) + out, o.box))
            for p, (_, obj, phrase) in zip(pictures, ground_items(truth))]


def tasks_of(eval_set: str) -> list[str]:
    return {"caption": [CAPTION], "ground": [GROUND]}.get(eval_set, [f"vqa:{k}" for k in QUESTION_KINDS])


def gold_demos(eval_set: str, shift: Shift, n: int) -> list[Demo]:
    """N true demonstrations per task of the set, on train-split scenes that fit the task, with the shift."""
    demos = []
    for t, task in enumerate(tasks_of(eval_set)):
        picked: list[Scene] = []
        i = GOLD_START + 1000 * t
        while len(picked) < n:
            scene = shift.scene(scene_for("train", i))
            i += 1
            if fits(task, scene):
                picked.append(scene)
        for scene in picked:
            example = example_for(task, scene, scene_rng(scene.seed, "gold"))
            demos.append(Demo(shift.draw(scene), example.prompt, example.answer, task=task, truth=example.answer))
    return demos


def strategy(condition: str, eval_set: str, shift: Shift, args) -> Prompting:
    if condition == "direct":
        return Prompting("direct")
    if condition == "gold":
        return Prompting("fewshot", gold_demos(eval_set, shift, args.icl_n))
    if condition == "gold-near":
        return Prompting("fewshot", gold_demos(eval_set, shift, args.gold_pool), n=args.icl_n, select="similar")
    near = condition == "autoicl-ret-near"
    prompting = Prompting("autoicl", n=args.icl_n, select="similar" if near else "fixed")
    if condition.startswith("autoicl-ret"):
        size = args.near_pool if near else args.pool
        prompting.set_pool(shift.pictures([scene_for("train", POOL_START + i) for i in range(size)]))
    return prompting


def row(model: LatentLMForICL, eval_set: str, shift: Shift, condition: str, args) -> dict:
    """One row: every query of the set under the condition; accuracy and cost per query."""
    prompting = strategy(condition, eval_set, shift, args)
    right, calls, kept, looked = 0, 0, 0, 0
    start = time.perf_counter()
    queries = items(eval_set, shift, args.split, args.n)
    for query, is_right in queries:
        outcome = prompting.answer(model, query, args.seed)
        right += bool(is_right(outcome.output))
        calls += outcome.info["calls"]
        if outcome.info.get("cache") != "hit" and condition.startswith("autoicl"):
            kept, looked = kept + len(outcome.kept), looked + len(outcome.demos)
    seconds = time.perf_counter() - start
    n = len(queries)
    return {"set": eval_set, "pictures": shift.name, "condition": condition, "n": n, "accuracy": right / n,
            "calls_per_query": calls / n, "seconds_per_query": seconds / n, "kept": kept, "looked_at": looked}


def markdown(rows: list[dict], args, where: str) -> str:
    body = [[r["set"], r["pictures"], r["condition"], f"{100 * r['accuracy']:.1f}%", f"{r['calls_per_query']:.2f}",
             f"{r['seconds_per_query']:.2f}", f"{r['kept']}/{r['looked_at']}" if r["looked_at"] else "-"]
            for r in rows]
    head = (f"AutoICL benchmark: model `{args.model}`, split {args.split}, n = {args.n} per set, N = {args.icl_n} "
            f"demonstrations, pool {args.pool}, seed {args.seed}, drawing {args.steps} steps.\n\nMachine: {where}.\n\n")
    return head + table(["set", "pictures", "prompting", "accuracy", "calls / query", "s / query",
                         "demos kept / looked at"], body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes-tiny", help="Shipped name or checkpoint folder.")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--n", type=int, default=100, help="Queries per eval set and picture set.")
    p.add_argument("--sets", nargs="+", choices=EVAL_SETS, default=list(EVAL_SETS))
    p.add_argument("--pictures", nargs="+", choices=list(SHIFTS), default=list(SHIFTS))
    p.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    p.add_argument("--icl-n", type=int, default=3, help="Demonstrations per query (AutoICL's N, gold's too).")
    p.add_argument("--pool", type=int, default=24, help="Unlabelled pictures in the retrieving pool.")
    p.add_argument("--gold-pool", type=int, default=64, help="True demonstrations per task that gold-near picks from.")
    p.add_argument("--near-pool", type=int, default=96, help="Unlabelled pictures that autoicl-ret-near picks from.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="Diffusion steps of AutoICL's drawings.")
    p.add_argument("--json", type=Path, default=None, help="Also write every figure here.")
    args = p.parse_args()
    torch.manual_seed(0)
    model = LatentLMForICL(LatentLM.from_pretrained(args.model), args.steps, DEFAULT_CFG, DEFAULT_TEMPERATURE)
    rows = []
    for eval_set in args.sets:
        for name in args.pictures:
            for condition in args.conditions:
                rows.append(row(model, eval_set, SHIFTS[name], condition, args))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    where = machine()
    print(markdown(rows, args, where))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "machine": where,
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
