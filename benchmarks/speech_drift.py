"""Per-frame quality against drift in text-to-speech (issue 19): shapes sentences of the val split recognised
exactly (pocketsphinx, shapes grammar) when each latent follows the true history (teacher-forced, with and
without the words: `latentlm.evaluation.speech_drift`) and when the model speaks freely (no voice prompt),
over a grid of temperature x CFG. Val only: it explains, it chooses nothing.

    .venv/bin/python benchmarks/speech_drift.py --model runs/speech-tiny/final --model runs/speech-tiny-n/final
    .venv/bin/python benchmarks/speech_drift.py --model M --n 20 --quick   # prints only
"""
from __future__ import annotations

import argparse

import torch
from report import machine, table, write_section

from latentlm.data.speech import speech_item, speech_text
from latentlm.evaluation.speech_drift import teacher_forced_latents
from latentlm.evaluation.speech_metrics import Recognizer
from latentlm.model import LatentLM
from latentlm.speech import generate_speech, speech_wave


def shapes_items(n: int) -> list[tuple[str, torch.Tensor]]:
    """(text, wave [T]) of the shapes sentences among the first n val items."""
    texts = [(i, *speech_text("val", i)) for i in range(n)]
    return [(text, torch.from_numpy(speech_item("val", i)[2])) for i, text, source in texts if source == "shapes"]


def measure(model: LatentLM, items, grid: list[tuple[float, float]], steps: int) -> dict[str, int]:
    heard, codec = Recognizer(grammar=True), model.codecs["audio"]
    hits = {"teacher-forced": 0, "teacher-forced, no words": 0} | {f"free T{t} CFG{c}": 0 for t, c in grid}
    for k, (text, wave) in enumerate(items):
        g = torch.Generator().manual_seed(k)
        truth = codec.normalize(codec.encode(wave[None]))[0]  # [T, D]
        for name, with_text in (("teacher-forced", True), ("teacher-forced, no words", False)):
            z = teacher_forced_latents(model, text, truth, with_text, steps, generator=g)
            hits[name] += heard(speech_wave(codec, z)) == text
        for t, c in grid:
            wav = generate_speech(model, [text], None, steps, c, seed=k, temperature=t)[0]
            hits[f"free T{t} CFG{c}"] += heard(wav) == text
    return hits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="a LatentLM that speaks (repeat for several)")
    p.add_argument("--n", type=int, default=80, help="val items (about half are shapes sentences)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.7])
    p.add_argument("--cfgs", type=float, nargs="+", default=[2.0, 4.0])
    p.add_argument("--quick", action="store_true", help="print only")
    args = p.parse_args()
    torch.manual_seed(0)
    items = shapes_items(args.n)
    grid = [(t, c) for t in args.temperatures for c in args.cfgs]
    rows, columns = [], None
    for name in args.model:
        hits = measure(LatentLM.from_pretrained(name).eval(), items, grid, args.steps)
        columns = list(hits)
        rows.append([name, *(f"{v}/{len(items)}" for v in hits.values())])
        print(rows[-1], flush=True)
    body = f"""## Speaking freely against teacher-forced, val split (issue 19)

Machine: {machine()}. `benchmarks/speech_drift.py` ({len(items)} shapes sentences of the first {args.n} val
items, {args.steps} DPM-Solver++ steps, no voice prompt; grammar-exact under pocketsphinx's shapes grammar).

{table(["model", *columns], rows)}
"""
    print(body)
    if not args.quick:
        write_section("speech-drift", body)


if __name__ == "__main__":
    main()
