"""Backbone benchmarks (issue 3): decode cost vs context, state memory, YOCO early exit, LongNet.

All models in one table have the same size and are measured side by side in one run; figures are
ratios against the named baseline. Decode cost depends only on the state's shape, so decoding is
timed from a state of the given context length filled with random values (a real prefill of 16k
tokens through a 12-layer Transformer would take minutes on a 2-core CPU and change nothing).

    .venv/bin/python benchmarks/backbones.py            # full sizes, writes BENCHMARKS.md
    .venv/bin/python benchmarks/backbones.py --quick    # small sizes, prints only
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from report import machine, write_section

from latentlm.backbones import BackboneConfig, build_backbone
from latentlm.backbones.retnet import RetNetState
from latentlm.backbones.transformer import KVCache
from latentlm.backbones.yoco import YOCOState
from latentlm.kernels.dilated_attention import dilated_attention


def timed(fn, repeat: int = 5) -> float:
    """Median wall time of `fn()` in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_state(model, kind: str, config: BackboneConfig, context: int):
    """A state of `context` past positions, filled with random values (batch 1)."""
    h, dh, n = config.n_heads, config.head_dim, config.n_layers
    kv = lambda: torch.randn(1, h, context, dh)  # noqa: E731
    valid = torch.ones(1, context, dtype=torch.bool)
    if kind in ("transformer", "longnet"):
        return KVCache([kv() for _ in range(n)], [kv() for _ in range(n)], valid)
    if kind == "retnet":
        return RetNetState([torch.randn(1, h, dh, dh) for _ in range(n)], context)
    if kind == "yoco":
        return YOCOState([torch.randn(1, h, dh, dh) for _ in range(n // 2)], kv(), kv(), valid)
    raise ValueError(kind)


@torch.no_grad()
def decode_ms(model, kind, config, context: int, steps: int = 8) -> float:
    """Milliseconds per decoded token from a state of `context` positions."""
    state = random_state(model, kind, config, context)
    x = torch.randn(1, 1, config.d_model)

    def run():
        s = state
        for _ in range(steps):
            _, s = model(x, s)

    return 1e3 * timed(run, repeat=3) / steps


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def decode_section(d: int, layers: int, heads: int, contexts: list[int]) -> tuple[str, dict]:
    models = {}
    for kind in ("transformer", "retnet", "yoco"):
        config = BackboneConfig(kind=kind, d_model=d, n_layers=layers, n_heads=heads)
        torch.manual_seed(0)
        models[kind] = (build_backbone(config).eval(), config)
    ms = {k: {c: decode_ms(m, k, cfg, c) for c in contexts} for k, (m, cfg) in models.items()}
    rows = [[f"{c:,}"] + [f"{ms[k][c]:.2f}" for k in models] for c in contexts]
    lo, hi = contexts[0], contexts[-1]
    flat = {k: ms[k][hi] / ms[k][lo] for k in models}
    rows.append([f"ratio {hi:,} / {lo:,}"] + [f"{flat[k]:.2f}x" for k in models])
    speedup = ms["transformer"][hi] / ms["retnet"][hi]
    mem = {}
    for k, (m, cfg) in models.items():
        mem[k] = {c: m.state_nbytes(random_state(m, k, cfg, c)) for c in (lo, hi)}
    text = (f"### Decode cost per token (ms), batch 1, d={d}, {layers} layers, {heads} heads, fp32\n\n"
            + table(["context", "Transformer (KV cache)", "RetNet", "YOCO"], rows)
            + f"\n\n- RetNet vs Transformer at {hi:,}: **{speedup:.1f}x faster** (bar >= 5x)."
            + f"\n- Flatness {lo:,} -> {hi:,}: RetNet {flat['retnet']:.2f}x, YOCO {flat['yoco']:.2f}x (bar <= 1.3x)."
            + f"\n\n### State memory at {hi:,} context, {layers} layers\n\n"
            + table(["backbone", f"state at {lo:,}", f"state at {hi:,}", "vs Transformer"],
                    [[k, f"{mem[k][lo] / 2**20:.1f} MiB", f"{mem[k][hi] / 2**20:.1f} MiB",
                      f"{mem[k][hi] / mem['transformer'][hi]:.3f}"] for k in models])
            + f"\n\n- YOCO / Transformer at {hi:,}: {mem['yoco'][hi] / mem['transformer'][hi]:.3f} (bar <= 1/8 = 0.125)."
            + f"\n- RetNet state: {mem['retnet'][lo]:,} bytes at {lo:,} and {mem['retnet'][hi]:,} at {hi:,} (constant).")
    return text, {"flat": flat, "speedup": speedup}


@torch.no_grad()
def yoco_section(d: int, layers: int, heads: int, length: int) -> str:
    config = BackboneConfig(kind="yoco", d_model=d, n_layers=layers, n_heads=heads)
    torch.manual_seed(0)
    model = build_backbone(config).eval()
    h = torch.randn(1, length, d)
    full = timed(lambda: model(h), repeat=2)
    early = timed(lambda: model(h, early_exit=True), repeat=2)
    return (f"### YOCO prefill at {length:,} tokens, d={d}, {layers} layers\n\n"
            + table(["prefill", "seconds"], [["full", f"{full:.2f}"], ["early exit", f"{early:.2f}"]])
            + f"\n\n- Early exit is **{full / early:.2f}x faster** (bar >= 1.8x).")


@torch.no_grad()
def longnet_section(heads: int, head_dim: int, lengths: list[int], segments: list[int], rates: list[int]) -> str:
    rows, times = [], {}
    for t in lengths:
        q, k, v = (torch.randn(1, heads, t, head_dim) for _ in range(3))
        dil = timed(lambda: dilated_attention(q, k, v, segments, rates), repeat=2)
        dense = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), repeat=1)
        times[t] = dil
        rows.append([f"{t:,}", f"{dil:.3f}", f"{dense:.3f}", f"{dense / dil:.1f}x"])
    growth = [times[b] / times[a] for a, b in zip(lengths, lengths[1:])]
    return (f"### LongNet dilated attention vs dense causal SDPA, {heads} heads x {head_dim}, fp32\n\n"
            f"Patterns: segment lengths {segments}, dilation rates {rates}.\n\n"
            + table(["tokens", "dilated (s)", "dense SDPA (s)", "speed-up"], rows)
            + f"\n\n- Time per doubling of tokens: {', '.join(f'{g:.2f}x' for g in growth)} (bar <= 2.3x).")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes; print, do not write BENCHMARKS.md")
    args = ap.parse_args()
    if args.quick:
        parts = [decode_section(64, 4, 2, [256, 1024])[0], yoco_section(64, 4, 2, 512),
                 longnet_section(2, 32, [1024, 2048], [128, 256], [1, 2])]
    else:
        parts = [decode_section(256, 12, 4, [1024, 4096, 16384])[0], yoco_section(256, 12, 4, 8192),
                 longnet_section(4, 64, [8192, 16384, 32768], [1024, 2048, 4096, 8192, 16384], [1, 2, 4, 8, 16])]
    body = f"## Backbones (issue 3)\n\nMachine: {machine()}.\n\n" + "\n\n".join(parts)
    print(body)
    if not args.quick:
        write_section("backbones", body)


if __name__ == "__main__":
    main()
