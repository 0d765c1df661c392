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

Model level (section "kernels-model"): the `bitnet` preset's backbone, packed (every BitLinear a
PackedBitLinear, whose forward is the same `matmul`), against the fp32 Transformer of the same
architecture and parameter count: decoding tokens/s (batch 1, single-token steps through the KV
cache after a short prefill, both models interleaved round by round, at 1 and 2 threads) and the
size of each one's safetensors weights file.

    .venv/bin/python benchmarks/kernels.py                   # full sizes, writes BENCHMARKS.md
    .venv/bin/python benchmarks/kernels.py --quick           # small sizes, prints only
    .venv/bin/python benchmarks/kernels.py --section model   # only the model-level section
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from report import machine, table, write_section
from safetensors.torch import save_file
from torch import nn

from latentlm.backbones import build_backbone, preset
from latentlm.backbones.bitlinear import pack_model
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


def gemv_section(quick: bool) -> str:
    """The GEMV table (kernel vs F.linear, one weight matrix) and its bars; written as "kernels-cpu"."""
    default_threads = torch.get_num_threads()
    if quick:
        shapes, threads, regimes, rounds = [(512, 1024, 1), (256, 512, 4)], (1, 2), ("hot", "streamed"), 5
    else:
        shapes, threads, regimes, rounds = [(4096, 11008, 1), (2048, 2048, 1)], (1, 2), ("hot", "streamed"), 15
    rows, ratios = [], {}
    for k, n, m in shapes:
        r, q = gemv_rows(k, n, m, threads, regimes, rounds)
        rows += r
        ratios[(k, n, m)] = q
    prefill_rows = []
    if not quick:  # a prefill-sized product for context (hot weights)
        prefill_rows, _ = gemv_rows(2048, 2048, 64, threads, ("hot",), 7)
    torch.set_num_threads(default_threads)

    headers = ["x · W^T", "weights", "threads", "fp32 F.linear (ms)", "bf16 F.linear (ms)",
               "ternary matmul (ms)", "C++ kernel only (ms)", "ternary vs fp32", "ternary vs bf16"]
    bars = []
    if not quick:
        for (k, n, m), bar in (((4096, 11008, 1), 4), ((2048, 2048, 1), 2)):
            got = ", ".join(f"{t} thread{'s' * (t > 1)} {regime} {ratios[(k, n, m)][(t, regime)]:.1f}x"
                            for regime in regimes for t in threads)
            bars.append(f"- [1x{k}]·[{k}x{n}] vs fp32: {got} (bar >= {bar}x).")
    return (f"## Kernels, CPU (issue 4)\n\nMachine: {machine()}.\n\n"
            f"C++ ternary path: `{cpu_isa()}` (of {', '.join(cpu.supported_isas())}); packed weights are "
            f"2 bits per weight, blocks of 128; last-level cache {llc_bytes() / 2**20:.0f} MiB. Median of "
            f"{rounds} interleaved rounds. \"ternary matmul\" is the public `kernels.ternary.matmul` "
            f"(activation quantisation in PyTorch + dispatch + kernel); \"C++ kernel only\" starts from "
            f"quantised activations.\n\n"
            + table(headers, rows + prefill_rows) + ("\n\n" + "\n".join(bars) if bars else ""))


def model_pair(d: int, layers: int, heads: int) -> tuple[nn.Module, nn.Module]:
    """(bitnet backbone with latent fp32 BitLinear weights, fp32 Transformer of the same architecture).

    The `bitnet-b1.58-2b4t` preset (ReLU^2 GLU, FFN 2.7 d, RoPE 5e5, 4 query heads per KV head) at the
    given size; the fp32 side is the same config with kind "transformer" and `ternary=False`, so every
    projection has the same shape (nn.Linear instead of BitLinear, which adds no parameter) and the
    parameter counts match.
    """
    base = preset("bitnet-b1.58-2b4t")
    group = base.n_heads // base.kv_heads  # query heads per KV head, kept at any size
    config = preset("bitnet-b1.58-2b4t", d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=heads // group)
    torch.manual_seed(0)
    bitnet = build_backbone(config).eval()
    torch.manual_seed(0)
    fp32 = build_backbone(config.model_copy(update={"kind": "transformer", "ternary": False})).eval()
    return bitnet, fp32


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def file_bytes(model: nn.Module, directory: Path, name: str) -> int:
    """Size of `model.state_dict()` saved with safetensors (the file is deleted afterwards)."""
    path = directory / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    size = path.stat().st_size
    path.unlink()
    return size


@torch.no_grad()
def decoder(model: nn.Module, d: int, prompt: int, steps: int):
    """fn(i) that decodes `steps` single tokens (x [1, 1, d] each) from the KV cache of a `prompt`-token
    prefill (batch 1); each call restarts from the same cache, so every call does the same work."""
    g = torch.Generator().manual_seed(0)
    _, cache = model(torch.randn(1, prompt, d, generator=g))  # prefill: h [1, prompt, d]
    xs = torch.randn(steps, 1, 1, d, generator=g)  # the decoded tokens' inputs

    @torch.no_grad()
    def run(i: int) -> None:
        state = cache
        for x in xs:
            _, state = model(x, state)  # h [1, 1, d], the cache grows by one position

    return run


def model_section(quick: bool) -> str:
    """Decoding tokens/s and weights-file size, packed bitnet vs fp32 Transformer; written as "kernels-model"."""
    default_threads = torch.get_num_threads()
    if quick:
        (d, layers, heads), prompt, steps, threads, rounds = (512, 2, 8), 16, 8, (1, 2), 3
    else:
        (d, layers, heads), prompt, steps, threads, rounds = (2048, 6, 16), 64, 16, (1, 2), 7
    bitnet, fp32 = model_pair(d, layers, heads)
    kv_heads = fp32.config.kv_heads
    params = n_params(bitnet), n_params(fp32)
    assert params[0] == params[1], params
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {"fp32": file_bytes(fp32, Path(tmp), "fp32"), "latent": file_bytes(bitnet, Path(tmp), "latent")}
        bitnet = pack_model(bitnet)  # every BitLinear -> PackedBitLinear (2-bit weights, C++ kernel)
        sizes["packed"] = file_bytes(bitnet, Path(tmp), "packed")

    contenders = {"fp32": decoder(fp32, d, prompt, steps), "bitnet": decoder(bitnet, d, prompt, steps)}
    rows, ratios = [], {}
    for t in threads:
        torch.set_num_threads(t)
        s = measure(contenders, rounds, target_s=0)  # one call (`steps` tokens) per round each
        tok_s = {name: steps / sec for name, sec in s.items()}
        ratios[t] = tok_s["bitnet"] / tok_s["fp32"]
        rows.append([f"d {d}, {layers} layers, {heads} heads ({kv_heads} KV), "
                     f"FFN {bitnet.config.ffn_dim}", t,
                     f"{tok_s['fp32']:.1f}", f"{tok_s['bitnet']:.1f}", f"{1e3 / tok_s['fp32']:.2f}",
                     f"{1e3 / tok_s['bitnet']:.2f}", f"**{ratios[t]:.2f}x**"])
    torch.set_num_threads(default_threads)
    del contenders, bitnet, fp32

    mib = lambda n: f"{n / 2**20:.1f}"  # noqa: E731
    file_rows = [["fp32 Transformer", f"{sizes['fp32']:,}", mib(sizes["fp32"]), "1.0x"],
                 ["bitnet, latent fp32 (unpacked)", f"{sizes['latent']:,}", mib(sizes["latent"]),
                  f"{sizes['fp32'] / sizes['latent']:.1f}x"],
                 ["bitnet, packed", f"{sizes['packed']:,}", mib(sizes["packed"]),
                  f"**{sizes['fp32'] / sizes['packed']:.1f}x**"]]
    decode_headers = ["backbone", "threads", "fp32 Transformer (tok/s)", "bitnet packed (tok/s)",
                      "fp32 (ms/token)", "bitnet (ms/token)", "bitnet vs fp32"]
    got = ", ".join(f"{t} thread{'s' * (t > 1)} {ratios[t]:.2f}x" for t in threads)
    bars = [f"- bitnet decoding tokens/s vs the fp32 Transformer: {got} (bar >= 2.5x).",
            f"- bitnet weights file vs the fp32 one: {sizes['fp32'] / sizes['packed']:.1f}x smaller (bar >= 10x)."]
    return (f"## Kernels, model level (issue 4)\n\nMachine: {machine()}.\n\n"
            f"C++ ternary path: `{cpu_isa()}`. The `bitnet-b1.58-2b4t` preset (ReLU^2 GLU, FFN 2.7 d, "
            f"RoPE 5e5) at d {d}, {layers} layers, {heads} heads ({kv_heads} KV heads), packed with `pack_model` "
            f"(every BitLinear a "
            f"PackedBitLinear: fp32 RMSNorm, int8 activations, the C++ kernel on 2-bit weights), against the "
            f"same config as a fp32 `transformer` (nn.Linear); parameters: bitnet {params[0]:,}, fp32 "
            f"Transformer {params[1]:,}. Backbones only (no embedding or output head). Decoding: "
            f"batch 1, a {prompt}-token prefill, then {steps} single-token steps through the KV cache; both "
            f"models interleaved, median of {rounds} rounds.\n\n"
            + table(decode_headers, rows) + "\n\nWeights files (`model.state_dict()` via safetensors):\n\n"
            + table(["weights", "bytes", "MiB", "fp32 / this"], file_rows) + "\n\n" + "\n".join(bars))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes; print, do not write BENCHMARKS.md")
    ap.add_argument("--section", choices=("gemv", "model", "all"), default="all",
                    help="gemv: one weight matrix (kernels-cpu); model: bitnet vs fp32 backbone (kernels-model)")
    args = ap.parse_args()
    if cpu.extension() is None:
        raise SystemExit("the C++ ternary CPU kernel is unavailable; nothing to measure")
    assert dispatch.choose("ternary_matmul", "cpu").name == "cpp"
    sections = {"gemv": ("kernels-cpu", gemv_section), "model": ("kernels-model", model_section)}
    for key, (name, build) in sections.items():
        if args.section in (key, "all"):
            body = build(args.quick)
            print(body, end="\n\n")
            if not args.quick:
                write_section(name, body)


if __name__ == "__main__":
    main()
