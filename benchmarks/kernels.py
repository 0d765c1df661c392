"""Kernel benchmarks (issue 4), CPU section: the fused C++ ternary GEMV against torch's F.linear.

Decoding multiplies one token by each weight matrix: x [1, K] . W [N, K]^T. The ternary side is
the public `latentlm.kernels.ternary.matmul` (per-token int8 quantisation of x, dispatch, the C++
kernel on the 2-bit packed weight), against F.linear with the weight in fp32 and in bf16. All
contenders of a row run in the same process, interleaved round by round (so that load from other
processes hits them alike), at 1 and 2 torch threads; each time is the median over the rounds.

Two weight regimes:

- hot: the same weight every call, so whatever fits in the caches stays there (the packed
  4096 x 11008 weight is 11 MiB, the fp32 one 180 MiB);
- streamed: the calls cycle through enough copies of the weight to exceed the last-level cache
  twice over, so every call reads its weight from memory, as in decoding through a whole model.

    .venv/bin/python benchmarks/kernels.py            # full sizes, writes BENCHMARKS.md
    .venv/bin/python benchmarks/kernels.py --quick    # small sizes, prints only
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from report import machine, write_section

from latentlm.kernels import dispatch
from latentlm.kernels.ternary import PackedTernary, cpu, cpu_isa, matmul, pack, quantize_activations


def llc_bytes() -> int:
    """Last-level cache size (32 MiB if unknown)."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"), reverse=True):
        try:
            size = (index / "size").read_text().strip()
            return int(size[:-1]) * {"K": 2**10, "M": 2**20}[size[-1]] if size[-1] in "KM" else int(size)
        except (OSError, ValueError, KeyError):
            continue
    return 32 * 2**20


def copies_for(nbytes: int, streamed: bool) -> int:
    return max(1, -(-2 * llc_bytes() // nbytes)) if streamed else 1


def measure(contenders: dict, rounds: int, target_s: float = 0.01) -> dict[str, float]:
    """Median seconds per call of each `fn(i)` (i = call index), timed in interleaved rounds."""
    inner = {}
    for name, fn in contenders.items():
        fn(0)
        t0 = time.perf_counter()
        fn(1)
        once = max(time.perf_counter() - t0, 1e-6)
        inner[name] = max(1, min(200, round(target_s / once)))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            n = inner[name]
            t0 = time.perf_counter()
            for i in range(n):
                fn(i)
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: statistics.median(s) for name, s in samples.items()}


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


@torch.no_grad()
def gemv_rows(k: int, n: int, m: int, threads: tuple[int, ...], regimes: tuple[str, ...], rounds: int):
    """Rows of the table for x [m, k] . W [n, k]^T; returns (rows, {(threads, regime): ratio vs fp32})."""
    torch.manual_seed(0)
    w = torch.randn(n, k) * 0.02
    x = torch.randn(m, k)
    packed = pack(w)
    rows, ratios = [], {}
    for regime in regimes:
        streamed = regime == "streamed"
        # copies of each weight, each its own memory (clone), cycled through call by call
        fp32 = [w.clone() for _ in range(copies_for(w.numel() * 4, streamed))]
        bf16 = [w.bfloat16() for _ in range(copies_for(w.numel() * 2, streamed))]
        packs = [PackedTernary(packed.data.clone(), packed.shape, packed.block_size, packed.scale)
                 for _ in range(copies_for(packed.data.numel(), streamed))]
        x_bf16 = x.bfloat16()
        x_q, x_scale = quantize_activations(x)
        contenders = {
            "fp32": lambda i: F.linear(x, fp32[i % len(fp32)]),
            "bf16": lambda i: F.linear(x_bf16, bf16[i % len(bf16)]),
            "ternary": lambda i: matmul(x, packs[i % len(packs)]),
            "kernel": lambda i: cpu.ternary_matmul_cpp(x_q, x_scale, packs[i % len(packs)]),
        }
        for t in threads:
            torch.set_num_threads(t)
            s = measure(contenders, rounds)
            ratios[(t, regime)] = s["fp32"] / s["ternary"]
            rows.append([f"[{m}x{k}]·[{k}x{n}]", regime, t] + [f"{1e3 * s[c]:.3f}" for c in contenders]
                        + [f"**{s['fp32'] / s['ternary']:.1f}x**", f"{s['bf16'] / s['ternary']:.1f}x"])
        del fp32, bf16, packs
    return rows, ratios


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes; print, do not write BENCHMARKS.md")
    args = ap.parse_args()
    default_threads = torch.get_num_threads()
    if cpu.extension() is None:
        raise SystemExit("the C++ ternary CPU kernel is unavailable; nothing to measure")
    assert dispatch.choose("ternary_matmul", "cpu").name == "cpp"
    if args.quick:
        shapes, threads, regimes, rounds = [(512, 1024, 1), (256, 512, 4)], (1, 2), ("hot", "streamed"), 5
    else:
        shapes, threads, regimes, rounds = [(4096, 11008, 1), (2048, 2048, 1)], (1, 2), ("hot", "streamed"), 15
    rows, ratios = [], {}
    for k, n, m in shapes:
        r, q = gemv_rows(k, n, m, threads, regimes, rounds)
        rows += r
        ratios[(k, n, m)] = q
    prefill_rows = []
    if not args.quick:  # a prefill-sized product for context (hot weights)
        prefill_rows, _ = gemv_rows(2048, 2048, 64, threads, ("hot",), 7)
    torch.set_num_threads(default_threads)

    headers = ["x · W^T", "weights", "threads", "fp32 F.linear (ms)", "bf16 F.linear (ms)",
               "ternary matmul (ms)", "C++ kernel only (ms)", "ternary vs fp32", "ternary vs bf16"]
    bars = []
    if not args.quick:
        for (k, n, m), bar in (((4096, 11008, 1), 4), ((2048, 2048, 1), 2)):
            got = ", ".join(f"{t} thread{'s' * (t > 1)} {regime} {ratios[(k, n, m)][(t, regime)]:.1f}x"
                            for regime in regimes for t in threads)
            bars.append(f"- [1x{k}]·[{k}x{n}] vs fp32: {got} (bar >= {bar}x).")
    body = (f"## Kernels, CPU (issue 4)\n\nMachine: {machine()}.\n\n"
            f"C++ ternary path: `{cpu_isa()}` (of {', '.join(cpu.supported_isas())}); packed weights are "
            f"2 bits per weight, blocks of 128; last-level cache {llc_bytes() / 2**20:.0f} MiB. Median of "
            f"{rounds} interleaved rounds. \"ternary matmul\" is the public `kernels.ternary.matmul` "
            f"(activation quantisation in PyTorch + dispatch + kernel); \"C++ kernel only\" starts from "
            f"quantised activations.\n\n"
            + table(headers, rows + prefill_rows) + ("\n\n" + "\n".join(bars) if bars else ""))
    print(body)
    if not args.quick:
        write_section("kernels-cpu", body)


if __name__ == "__main__":
    main()
