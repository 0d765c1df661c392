"""Colour questions about each object of two-object scenes: can the model find an object by its shape?

    .venv/bin/python benchmarks/colour_pairs.py --model PATH [--split val] [--scenes 200]

The colour bar of issue 18 is missed only on two-object scenes. This asks one colour question about
each of their two objects (same phrasing rules as training), so a model that answers by position, or
that guesses between the two colours, scores about 50% on either object. For a reasoned answer that
begins with a grounded caption, it also counts how often that caption begins with the object asked
about, and how often the answer is right when it does. Prints one line of figures (no file written).
"""
from __future__ import annotations

import argparse
import random
from collections import Counter

import torch

from latentlm.data.rendered import render_scenes
from latentlm.data.shapes import Scene
from latentlm.data.tasks import Example, _asked_object, question
from latentlm.evaluation.understanding import scenes
from latentlm.grounding import parse_grounded
from latentlm.model import LatentLM
from latentlm.understanding import answer_text, complete


def items(split: str, n: int) -> list[tuple[Scene, int, Example]]:
    """(scene, index of the object asked about, question) for both objects of the two-object scenes."""
    out = []
    for s in (s for s in scenes(split, n) if len(s.objects) == 2):
        for want in (0, 1):
            rng = random.Random(f"colour pairs:{s.seed}:{want}")
            q = question(s, "colour", rng)
            while _asked_object(s, q)[0] is not s.objects[want]:
                q = question(s, "colour", rng)
            out.append((s, want, q))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--scenes", type=int, default=200, help="scenes looked at (about half have two objects)")
    args = ap.parse_args()
    model = LatentLM.from_pretrained(args.model).eval()
    asked = items(args.split, args.scenes)
    raw = complete(model, render_scenes([s for s, _, _ in asked]), [q.prompt for _, _, q in asked])
    c: Counter = Counter()
    for (s, want, q), text in zip(asked, raw):
        right = answer_text(text) == q.answer
        c[f"object {want + 1}: asked"] += 1
        c[f"object {want + 1}: right"] += right
        entities = parse_grounded(text).entities
        if entities:
            obj = s.objects[want]
            starts = f"{obj.colour} {obj.shape}" in entities[0].phrase
            c["caption begins with it"] += starts
            c["right where it does"] += right and starts
    print({k: c[k] for k in sorted(c)})


if __name__ == "__main__":
    with torch.no_grad():
        main()
