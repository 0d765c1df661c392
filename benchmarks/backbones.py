"""Backbone benchmarks (issue 3): decode cost vs context, state memory, YOCO early exit, LongNet, and
our RetNet against torchscale's (the peer; `pip install -e ".[bench]"`, skipped when not installed).

All models in one table have the same size and are measured side by side in one run; figures are
ratios against the named baseline. Decode cost depends only on the state's shape, so decoding is
timed from a state of the given context length filled with random values (a real prefill of 16k
tokens through a 12-layer Transformer would take minutes on a 2-core CPU and change nothing).

    .venv/bin/python benchmarks/backbones.py                     # full sizes, writes BENCHMARKS.md
    .venv/bin/python benchmarks/backbones.py --quick             # small sizes, prints only
    .venv/bin/python benchmarks/backbones.py --device cuda       # the decode tables on a GPU (own section)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
import time
import warnings

import torch
import torch.nn.functional as F
from report import machine, table, write_section

from latentlm.backbones import BackboneConfig, build_backbone
from latentlm.backbones.presets import preset
from latentlm.backbones.retnet import RetNetState
from latentlm.backbones.kv_cache import KVCache
from latentlm.backbones.yoco import YOCOState
from latentlm.kernels import dispatch
from latentlm.kernels.decode_attention import cpu as decode_cpu
from latentlm.kernels.decode_attention import decode_attention_reference
from latentlm.kernels.gemv import cpu as gemv_cpu
from latentlm.kernels.dilated_attention import dilated_attention


def timed(fn, repeat: int = 5) -> float:
    """Fastest wall time of `fn()` in seconds over `repeat` calls, after one warm-up call.

    The minimum, not the median: the machine is shared, and noise only ever adds time."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def fastest_in_turns(fns: dict, rounds: int = 5) -> dict:
    """Seconds of one call of each fn in `fns` {key: fn}: they take turns, `rounds` times, and each one's
    fastest call counts (side by side, so that the machine's noise hits all of them alike)."""
    best: dict = {}
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[key] = min(best.get(key, float("inf")), time.perf_counter() - t0)
    return best


def random_state(model, kind: str, config: BackboneConfig, context: int, batch: int = 1, device="cpu"):
    """A state of `context` past positions on `device`, filled with random values; KV caches have
    `config.kv_heads` heads and are stored in `config.kv_dtype`."""
    h, hkv, dh, n = config.n_heads, config.kv_heads, config.head_dim, config.n_layers
    dtype = getattr(torch, getattr(config, "kv_dtype", "float32"))  # RetNet's config has no KV cache
    kv = lambda: torch.randn(batch, hkv, context, dh, device=device).to(dtype)  # noqa: E731
    square = lambda: torch.randn(batch, h, dh, dh, device=device)  # noqa: E731  (a recurrent state)
    valid = torch.ones(batch, context, dtype=torch.bool, device=device)
    if kind in ("transformer", "longnet"):
        return KVCache.from_tensors([kv() for _ in range(n)], [kv() for _ in range(n)], valid)
    if kind == "retnet":
        return RetNetState([square() for _ in range(n)], context)
    if kind == "yoco":
        return YOCOState.from_tensors([square() for _ in range(n // 2)], kv(), kv(), valid)
    raise ValueError(kind)


@contextlib.contextmanager
def environment(**values: str | None):
    """Run with the environment variables `values` set (None: unset), restored afterwards."""
    before = {name: os.environ.pop(name, None) for name in values}
    os.environ.update({name: value for name, value in values.items() if value is not None})
    try:
        yield
    finally:
        for name, value in before.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


@contextlib.contextmanager
def prefetch_target(far: bool | None = None):
    """Every kernel prefetches into L2 (`far`) or into L1, whatever the size of its data; None: by size,
    the default (KV caches of 2 MiB or more and weights of 16 MiB or more into L2)."""
    before = decode_cpu.FAR_CACHE_BYTES, gemv_cpu.FAR_WEIGHT_BYTES
    if far is not None:
        decode_cpu.FAR_CACHE_BYTES = gemv_cpu.FAR_WEIGHT_BYTES = 0 if far else 1 << 62
    try:
        yield
    finally:
        decode_cpu.FAR_CACHE_BYTES, gemv_cpu.FAR_WEIGHT_BYTES = before


@contextlib.contextmanager
def kernels(use: bool, decode_isa: str | None = None, l1_prefetch: bool = False):
    """Run with the fused kernels (`use`) or with every op's PyTorch reference (LATENTLM_KERNELS=reference);
    `decode_isa` forces the decode-attention kernel's ISA path (None: its default); `l1_prefetch` makes
    every kernel prefetch into L1, data from memory included (as before 2026-12-03)."""
    env = {"LATENTLM_KERNELS": None if use else "reference", decode_cpu.PATHS.env: decode_isa}
    with prefetch_target(False if l1_prefetch else None), environment(**env):
        yield


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


DECODE_ROUNDS = 60  # rounds of the decode tables; a noisy round on this shared machine adds ~1 ms at batch 1
# (9 before 2026-12-03, then 25 when rounds at the floor became rarer; 60 since a run at 25 still read the
# same d=256 step 1.2x apart in two tables, and each round costs little)


@torch.no_grad()
def decode_ms(cases: dict, batch: int = 1, steps: int = 8, rounds: int = DECODE_ROUNDS) -> dict:
    """Milliseconds per decoding step (one token for each of `batch` sequences) for each case
    {key: (model, config, context, *settings)}, settings being `kernels`' arguments (none: the defaults),
    from a state of `context` positions, in the steady state.

    The first token after a prefill copies the KV cache once into a buffer with spare room (later
    tokens are written in place); that one step is the warm-up and is not timed. The cases take
    turns, `rounds` times (every other round in reverse order), each continuing its own sequence by
    `steps` tokens; the fastest round counts (the machine is shared, and noise only ever adds time).
    Each case runs on its model's device (on a GPU, the clock reads after a synchronize)."""
    states, best = {}, {}
    for key, (model, config, context, *use) in cases.items():
        device = next(model.parameters()).device
        x = torch.randn(batch, 1, config.d_model, device=device)
        with kernels(*(use or [True])):
            states[key] = (x, model(x, random_state(model, config.kind, config, context, batch, device))[1])
    order = list(cases.items())
    for r in range(rounds):
        # every other round in reverse: a case that ran right after another on the same model would find
        # the weights in the caches (5-10% faster at d=256 in identical settings when the order was fixed)
        for key, (model, _, _, *use) in order if r % 2 == 0 else order[::-1]:
            x, s = states[key]
            with kernels(*(use or [True])):
                synchronize(x.device)
                t0 = time.perf_counter()
                for _ in range(steps):
                    _, s = model(x, s)
                synchronize(x.device)
                best[key] = min(best.get(key, float("inf")), (time.perf_counter() - t0) / steps)
            states[key] = (x, s)
    return {key: 1e3 * t for key, t in best.items()}


def matmul_gflops(device: str = "cpu", n: int = 2048, rounds: int = 5) -> float:
    """This machine's fp32 matmul rate: torch.mm of two n x n matrices, fastest of `rounds` (GFLOP/s)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(rounds + 1):
        synchronize(a.device)
        t0 = time.perf_counter()
        a @ b
        synchronize(a.device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def cross_attention_mflop(model, config: BackboneConfig, context: int) -> float:
    """MFLOP of YOCO's cross-decoder attention for one decoded token: per layer, scores and the weighted
    sum of values, 2 FLOPs per multiply-add each, for every query head over `context` keys."""
    return len(model.cross_blocks) * 2 * 2 * config.n_heads * config.head_dim * context / 1e6


GROWTH_ROUNDS = 100  # interleaved calls of the decode-attention op per context in the flatness floor


def attention_growth_ms(model, config: BackboneConfig, lo: int, hi: int, device: str) -> float:
    """Milliseconds that the cross-decoder's attention alone adds per token from `lo` to `hi` keys: the
    decode-attention op the model dispatches to, on a global KV as `random_state` makes it, the two
    contexts taking turns, GROWTH_ROUNDS times (fastest call each), times the cross-decoder's layers."""
    impl, dev = dispatch.choose("decode_attention", device), torch.device(device)
    q = torch.randn(1, config.n_heads, 1, config.head_dim, device=dev)
    states = {s: random_state(model, "yoco", config, s, device=dev) for s in (lo, hi)}  # global KV [1, Hkv, s, Dh]
    calls = {s: (lambda st=st: (impl.fn(q, st.keys, st.values), synchronize(dev))) for s, st in states.items()}
    best = fastest_in_turns(calls, GROWTH_ROUNDS)
    return len(model.cross_blocks) * 1e3 * (best[hi] - best[lo])


def flatness_floor(ms: dict, models: dict, yocos: list[str], lo: int, hi: int, device: str) -> str:
    """The YOCO flatness ratio of an attention kernel as fast as a large matmul: the attention that a
    longer context adds, timed at the machine's fp32 matmul rate (measured), on top of the measured step
    at `lo`; beside it, the rate the measured steps imply, and what the attention op alone adds (the
    rest of the measured growth: the larger cache pushing the weights out of the caches, and noise)."""
    rate = matmul_gflops(device)
    parts = []
    for k in yocos:
        model, config = models[k]
        extra = cross_attention_mflop(model, config, hi) - cross_attention_mflop(model, config, lo)
        floor_ms = extra / rate  # MFLOP / (GFLOP/s) = ms
        measured = ms[k][hi] - ms[k][lo]
        op_ms = attention_growth_ms(model, config, lo, hi, device)
        part = (f"{k}: +{extra:.1f} MFLOP, {floor_ms:.2f} ms at that rate, "
                f"floor {(ms[k][lo] + floor_ms) / ms[k][lo]:.2f}x; ")
        if op_ms > 0:
            part += f"the op alone +{op_ms:.2f} ms ({extra / op_ms:.0f} GFLOP/s), {(ms[k][lo] + op_ms) / ms[k][lo]:.2f}x; "
        else:  # tiny contexts (--quick): the op's noise is larger than what the longer context adds
            part += f"the op alone {op_ms:+.2f} ms, within the noise; "
        if measured > floor_ms:
            part += f"measured +{measured:.2f} ms ({extra / measured:.0f} GFLOP/s)"
        else:  # faster than the matmul: the step's noise is larger than the attention it adds
            part += f"measured {measured:+.2f} ms, within the noise"
        parts.append(part)
    return (f"\n- Flatness floor: the attention a {hi:,} context adds over {lo:,} (cross-decoder, per token), "
            f"timed at this machine's fp32 matmul rate ({rate:.0f} GFLOP/s, torch.mm 2048 x 2048, measured "
            f"now) and added to the measured step at {lo:,}: the ratio of a kernel as fast as the matmul; "
            f"then the same growth timed on the decode-attention op alone (the {lo:,} and {hi:,} caches "
            f"taking turns, fastest of {GROWTH_ROUNDS} calls each, times the cross-decoder's layers) and the ratio it gives. "
            + "; ".join(parts) + ".")


KV_TAGS = {"float32": "", "float16": ", fp16 KV", "bfloat16": ", bf16 KV"}  # a column name's cache precision


def yoco_name(heads: int, kv_heads: int, kv_dtype: str) -> str:
    return f"YOCO {heads}/{kv_heads}" + KV_TAGS[kv_dtype]


def decode_section(d: int, layers: int, heads: int, contexts: list[int], yoco: list[tuple[int, str]],
                   batch: int = 1, device: str = "cpu", fp16_transformer: bool = False) -> tuple[str, dict]:
    """Decode cost (and, at batch 1, state memory) of a Transformer, RetNet and YOCO of one size; one
    YOCO column per entry (KV heads of its global KV, grouped-query attention; the cache's kv_dtype) of
    `yoco`; `fp16_transformer` adds the Transformer with an fp16 KV cache (the baseline stays fp32)."""
    models = {}
    kinds = [("transformer", None, "float32"), ("retnet", None, "float32")]
    kinds += [("transformer", None, "float16")] if fp16_transformer else []
    for kind, kv, kv_dtype in kinds + [("yoco", *y) for y in yoco]:
        name = yoco_name(heads, kv, kv_dtype) if kind == "yoco" else kind + KV_TAGS[kv_dtype]
        gqa = {} if kind == "retnet" else {"n_kv_heads": kv, "kv_dtype": kv_dtype}
        config = BackboneConfig(kind=kind, d_model=d, n_layers=layers, n_heads=heads, **gqa)
        torch.manual_seed(0)
        models[name] = (build_backbone(config).to(device).eval(), config)
    params = {k: sum(p.numel() for p in m.parameters()) for k, (m, _) in models.items()}
    cases = {(k, c): (m, cfg, c) for k, (m, cfg) in models.items() for c in contexts}
    by_case = decode_ms(cases, batch)
    ms = {k: {c: by_case[k, c] for c in contexts} for k in models}
    rows = [[f"{c:,}"] + [f"{ms[k][c]:.2f}" for k in models] for c in contexts]
    lo, hi = contexts[0], contexts[-1]
    flat = {k: ms[k][hi] / ms[k][lo] for k in models}
    rows.append([f"ratio {hi:,} / {lo:,}"] + [f"{flat[k]:.2f}x" for k in models])
    speedup = ms["transformer"][hi] / ms["retnet"][hi]
    yocos = [k for k in models if k.startswith("YOCO")]
    text = (f"### Decode step (ms), batch {batch}, d={d}, {layers} layers, {heads} heads, fp32"
            + (f", on {device}" if device != "cpu" else "")
            + (" (fp16 / bf16 KV: the KV cache stored in fp16 / bf16, `kv_dtype`; bf16 decodes with bf16 dot "
               "products where the CPU has them)" if any("16 KV" in k for k in models) else "") + "\n\n"
            + table(["context", "Transformer (KV cache)", "RetNet"]
                    + (["Transformer, fp16 KV"] if fp16_transformer else [])
                    + [f"{k} (heads/KV heads)" for k in yocos], rows)
            + "\n\n- Parameters: " + ", ".join(f"{k} {params[k]:,}" for k in models)
            + f" (YOCO: {models[yocos[0]][1].self_decoder.replace('_', ' ')} self-decoder)."
            + "\n- Steady-state decoding: the KV caches grow in place; the first token after a prefill copies "
            "the cache once into a buffer with spare room and is not timed. Models and contexts take turns, "
            f"{DECODE_ROUNDS} rounds of 8 tokens; the fastest round counts."
            + f"\n- RetNet vs Transformer at {hi:,}: **{speedup:.1f}x faster** (bar >= 5x)."
            + f"\n- Flatness {lo:,} -> {hi:,}: RetNet {flat['retnet']:.2f}x, "
            + ", ".join(f"{k} {flat[k]:.2f}x" for k in yocos) + " (bar <= 1.3x).")
    if batch == 1:
        text += flatness_floor(ms, models, yocos, lo, hi, device)
        mem = {k: {c: m.state_nbytes(random_state(m, cfg.kind, cfg, c)) for c in (lo, hi)}
               for k, (m, cfg) in models.items()}
        text += (f"\n\n### State memory at {hi:,} context, {layers} layers, batch 1\n\n"
                 + table(["backbone", f"state at {lo:,}", f"state at {hi:,}", "vs Transformer"],
                         [[k, f"{mem[k][lo] / 2**20:.1f} MiB", f"{mem[k][hi] / 2**20:.1f} MiB",
                           f"{mem[k][hi] / mem['transformer'][hi]:.3f}"] for k in models])
                 + "\n\n- " + ", ".join(f"{k} / Transformer at {hi:,}: {mem[k][hi] / mem['transformer'][hi]:.3f}"
                                         for k in yocos) + " (bar <= 1/8 = 0.125)."
                 + f"\n- RetNet state: {mem['retnet'][lo]:,} bytes at {lo:,} and {mem['retnet'][hi]:,} at {hi:,} "
                 "(constant).")
    return text, {"flat": flat, "speedup": speedup}


def kernels_section(d: int, layers: int, heads: int, contexts: list[int], yoco_kv_heads: int) -> str:
    """The decode step with the fused CPU kernels (the default) against the same models with every op's
    PyTorch reference (LATENTLM_KERNELS=reference), side by side: what the kernels are worth."""
    models = {}
    for kind, kv in [("transformer", None), ("retnet", None), ("yoco", yoco_kv_heads)]:
        name = kind if kind != "yoco" else yoco_name(heads, kv, "float32")
        gqa = {} if kind == "retnet" else {"n_kv_heads": kv}
        config = BackboneConfig(kind=kind, d_model=d, n_layers=layers, n_heads=heads, **gqa)
        torch.manual_seed(0)
        models[name] = (build_backbone(config).eval(), config)
    cases = {(k, c, use): (m, cfg, c, use) for k, (m, cfg) in models.items() for c in contexts for use in (False, True)}
    ms = decode_ms(cases)
    rows = [[k, f"{c:,}", f"{ms[k, c, False]:.2f}", f"{ms[k, c, True]:.2f}", f"{ms[k, c, False] / ms[k, c, True]:.2f}x"]
            for k in models for c in contexts]
    ops = ["rms_norm", "small_batch_linear", "glu_block", "rotary_heads", "decode_attention", "retention_step",
           "gated_retention_step"]
    chosen = ", ".join(f"{op}: {dispatch.choose(op, 'cpu').name}" for op in ops)
    return (f"### Decode step with and without the fused CPU kernels, batch 1, d={d}, {layers} layers, {heads} heads, fp32\n\n"
            f"Kernels ({chosen}) against every op's PyTorch reference (`LATENTLM_KERNELS=reference`), same "
            f"models, taking turns, {DECODE_ROUNDS} rounds of 8 tokens, the fastest round counts.\n\n"
            + table(["backbone", "context", "references (ms)", "kernels (ms)", "speed-up"], rows))


SIZE_ROUNDS = 15  # rounds of the size table (7 before 2026-12-03, when d=512 read 1.28x and 1.38x in two runs)


@torch.no_grad()
def yoco_size_section(widths: list[int], layers: int, contexts: list[int], head_dim: int = 64, group: int = 4) -> str:
    """YOCO's decode flatness as the model grows at a fixed depth: d in `widths`, heads of `head_dim`,
    `group` query heads per KV head. Each token, every cross-decoder layer reads the whole global KV,
    so the context adds a cost that stands against the weights read each token: the table shows both."""
    lo, hi = contexts[0], contexts[-1]
    rows, flat = [], {}
    for d in widths:
        heads = d // head_dim
        config = BackboneConfig(kind="yoco", d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=heads // group)
        torch.manual_seed(0)
        model = build_backbone(config).eval()
        weights = 4 * sum(p.numel() for p in model.parameters())
        kv_reads = len(model.cross_blocks) * 2 * config.kv_heads * head_dim * hi * 4  # bytes per token at `hi`
        ms = decode_ms({c: (model, config, c) for c in contexts}, steps=4, rounds=SIZE_ROUNDS)
        flat[d] = ms[hi] / ms[lo]
        rows.append([f"{d}", f"{heads}/{config.kv_heads}", f"{weights / 2**20:,.1f} MiB", f"{kv_reads / 2**20:,.1f} MiB",
                     f"{kv_reads / weights:.2f}", f"{ms[lo]:.2f}", f"{ms[hi]:.2f}", f"{flat[d]:.2f}x"])
        del model
    met = [f"d={d}" for d in widths if flat[d] <= 1.3]
    return (f"### YOCO decode flatness by model size, batch 1, {layers} layers, heads of {head_dim}, fp32\n\n"
            + table(["d", "heads/KV heads", "weights", f"global KV read per token at {hi:,}", "KV read / weights",
                     f"{lo:,} (ms)", f"{hi:,} (ms)", f"ratio {hi:,} / {lo:,}"], rows)
            + f"\n\n- Each token reads every weight once and, in each of the {layers - layers // 2} cross-decoder layers, the "
            "whole global KV: the context's cost stands against the weights', so the ratio follows the KV reads / "
            "weights column, lowered where the global KV stays in the last-level cache between layers."
            + f"\n- Within the bar (<= 1.3x): {', '.join(met) if met else 'none'}. "
            f"Contexts take turns, {SIZE_ROUNDS} rounds of 4 tokens; the fastest round counts.")


PRESET_ROUNDS = 10  # rounds of the published-size decode table (5 before 2026-12-03, when one run read yoco-3b's
# fp32 step at 422 ms at 1k and 375 ms at 16k)


@torch.no_grad()
def preset_decode_section(name: str, contexts: list[int], device: str = "cpu") -> str:
    """Decode flatness of a published-size preset (random weights: decode cost does not depend on them),
    with its global KV cache in fp32 and, same weights, in fp16 (YOCO's `kv_dtype`), and on the CPU with
    every kernel prefetching into L1 (as before 2026-12-03), side by side."""
    config = preset(name)
    with torch.device("meta"):
        model = build_backbone(config)
    model = model.to_empty(device=device).eval()
    for p in model.parameters():
        p.normal_(0.0, 0.02)
    n_params = sum(p.numel() for p in model.parameters())
    variants = {"fp32 cache": (model, config, False)}
    if config.kind == "yoco":
        half = copy.copy(model)  # shares every parameter and submodule; only the config differs
        half.config = config.model_copy(update={"kv_dtype": "float16"})
        variants["fp16 KV cache"] = (half, half.config, False)
    if device == "cpu":
        variants["fp32 cache, L1 prefetch"] = (model, config, True)  # the kernels as before 2026-12-03
    ms = decode_ms({(v, c): (m, cfg, c, True, None, l1) for v, (m, cfg, l1) in variants.items() for c in contexts},
                   steps=2, rounds=PRESET_ROUNDS)
    names = list(variants)
    del model, variants
    lo, hi = contexts[0], contexts[-1]
    flat = {v: ms[v, hi] / ms[v, lo] for v in names}
    kv = f"{config.n_heads} heads / {config.kv_heads} KV heads"
    return (f"### Decode step of the preset `{name}` ({n_params / 1e9:.2f}B parameters, d={config.d_model}, "
            f"{config.n_layers} layers, {kv}), batch 1, fp32" + (f", on {device}" if device != "cpu" else "") + "\n\n"
            + table(["context"] + [f"ms / token, {v}" for v in flat],
                    [[f"{c:,}"] + [f"{ms[v, c]:.0f}" if ms[v, c] >= 100 else f"{ms[v, c]:.2f}" for v in flat]
                     for c in contexts])
            + f"\n\n- Flatness {lo:,} -> {hi:,}: " + ", ".join(f"{v} {f:.2f}x" for v, f in flat.items())
            + f" (bar <= 1.3x). Variants and contexts take turns, {PRESET_ROUNDS} rounds of 2 tokens; the fastest round counts."
            + ("\n- \"L1 prefetch\": the same model with every kernel prefetching into L1, as before 2026-12-03 "
               "(\"Prefetching into L2\" below); its time over the fp32 cache's now: "
               + ", ".join(f"{ms['fp32 cache, L1 prefetch', c] / ms['fp32 cache', c]:.2f}x at {c:,}" for c in contexts)
               + "." if "fp32 cache, L1 prefetch" in flat else ""))


def read_bandwidth(nbytes: int = 256 * 2**20, rounds: int = 5) -> float:
    """GB/s of a plain streaming read (a sum over `nbytes`): the machine's yardstick for memory-bound ops."""
    x = torch.ones(nbytes // 4)
    return nbytes / 1e9 / timed(x.sum, rounds)


@torch.no_grad()
def decode_attention_section(shapes: list[tuple[int, int, int]], contexts: list[int], rounds: int = 20) -> str:
    """One layer's decode attention (one query per head over the whole cache): the op that Transformer
    and YOCO attention dispatch to, against grouped SDPA (its reference) and SDPA's own enable_gqa.
    The three take turns, `rounds` times; the fastest call of each counts. The kernel is also timed
    with the cache evicted first (as in a model, where the other layers' weights and caches pass
    through in between) and its read rate set against a plain read's."""
    impl = dispatch.choose("decode_attention", "cpu")
    evictor = cache_evictor()
    rows = []
    for h, hkv, dh in shapes:
        for s in contexts:
            store = [torch.randn(1, hkv, s + 512, dh) for _ in range(2)]
            k, v = (x[:, :, :s] for x in store)  # views of a KV buffer with spare room
            q = torch.randn(1, h, 1, dh)
            fns = (lambda: impl.fn(q, k, v), lambda: decode_attention_reference(q, k, v),
                   lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=h != hkv))
            best = [float("inf")] * (len(fns) + 1)
            for _ in range(rounds):
                for i, fn in enumerate(fns):
                    t0 = time.perf_counter()
                    fn()
                    best[i] = min(best[i], 1e3 * (time.perf_counter() - t0))
                evictor.add_(1.0)
                t0 = time.perf_counter()
                fns[0]()
                best[-1] = min(best[-1], 1e3 * (time.perf_counter() - t0))
            nbytes = 2 * k.numel() * 4
            rows.append([f"{h} / {hkv} x {dh}", f"{s:,}", f"{nbytes / 2**20:.1f}",
                         *(f"{t:.3f}" for t in best[:3]), f"{best[2] / best[0]:.2f}x",
                         f"{best[-1]:.3f} ({nbytes / 1e6 / best[-1]:.1f} GB/s)"])
    return ("### Decode attention, one layer, batch 1, fp32\n\n"
            f"`{impl.name}`: the op attention dispatches to when decoding on CPU (the fused C++ kernel); the "
            "reference: one SDPA call with each KV group's query "
            "heads as queries; SDPA `enable_gqa` reads each KV head once per query head. The three take turns, "
            f"fastest of {rounds} calls each; the last column times `{impl.name}` again right after {EVICT_MIB} MiB have "
            f"been written (the cache comes from memory). A plain read streams {read_bandwidth():.1f} GB/s here.\n\n"
            + table(["heads / KV heads x dim", "keys", "cache (MiB)", f"{impl.name} (ms)", "reference (ms)",
                     "SDPA enable_gqa (ms)", f"SDPA / {impl.name}", f"{impl.name}, cache evicted (ms)"], rows))


EVICT_MIB = 96  # written before an "evicted" call: larger than the last-level cache


@functools.cache
def cache_evictor() -> torch.Tensor:
    """A buffer of EVICT_MIB (one, shared by the tables): adding to it pushes a call's data out of the caches."""
    return torch.zeros(EVICT_MIB * 2**20 // 4)


def missing_decode_path(isa: str, what: str) -> str | None:
    """The "Not measured" line of a table that needs the decode-attention path `isa` (`what`: the CPU
    feature), when this CPU cannot run it; None when it can."""
    if isa in decode_cpu.supported_isas():
        return None
    return f"Not measured: this CPU runs {decode_cpu.supported_isas() or 'no C++ kernel'}, no {what}."


def fastest_warm_and_evicted(calls: dict, rounds: int, evictor: torch.Tensor) -> dict:
    """Fastest time (ms) of each zero-argument call in `calls` {key: fn}, warm and right after `evictor`
    (larger than the last-level cache) is written, so that the call's data comes from memory:
    {(key, evicted): ms}. The calls and both states take turns, `rounds` times."""
    best = {(key, cold): float("inf") for key in calls for cold in (False, True)}
    for _ in range(rounds):
        for key, cold in best:
            if cold:
                evictor.add_(1.0)
            t0 = time.perf_counter()
            calls[key]()
            best[key, cold] = min(best[key, cold], 1e3 * (time.perf_counter() - t0))
    return best


@torch.no_grad()
def decode_attention_fp16_section(shapes: list[tuple[int, int, int]], contexts: list[int], rounds: int = 20) -> str:
    """The decode-attention kernel on an fp16 cache (kv_dtype="float16") against the same values
    in fp32: half the bytes, the same fp32 arithmetic. Taking turns, warm and with the cache evicted."""
    impl = dispatch.choose("decode_attention", "cpu")
    evictor = cache_evictor()
    rows = []
    for h, hkv, dh in shapes:
        for s in contexts:
            q = torch.randn(1, h, 1, dh)
            half = [torch.randn(1, hkv, s, dh).half() for _ in range(2)]
            caches = {"fp32": [x.float() for x in half], "fp16": half}
            best = fastest_warm_and_evicted({dt: lambda kv=kv: impl.fn(q, *kv) for dt, kv in caches.items()},
                                            rounds, evictor)
            rows.append([f"{h} / {hkv} x {dh}", f"{s:,}", f"{2 * half[0].numel() * 4 / 2**20:.1f}",
                         *(f"{best[dt, cold]:.3f}" for cold in (False, True) for dt in caches),
                         f"{best['fp32', False] / best['fp16', False]:.2f}x",
                         f"{best['fp32', True] / best['fp16', True]:.2f}x"])
    return ("### Decode attention on an fp16 cache, one layer, batch 1\n\n"
            f"`{impl.name}` on a cache stored in fp16 (`kv_dtype=\"float16\"`; rows widened exactly as they "
            "are read, fp32 arithmetic) against the same values stored in fp32. Taking turns, fastest of "
            f"{rounds} calls; \"evicted\": right after {EVICT_MIB} MiB have been written.\n\n"
            + table(["heads / KV heads x dim", "keys", "fp32 cache (MiB)", "fp32 (ms)", "fp16 (ms)", "fp32 evicted (ms)",
                     "fp16 evicted (ms)", "fp16 speed-up", "fp16 speed-up, evicted"], rows))


@torch.no_grad()
def yoco_steps_by_decode_path(d: int, layers: int, heads: int, contexts: list[int],
                              variants: list[tuple[str, str]]) -> str:
    """YOCO 4/1-style decode steps (one KV head) at the first and last context for each (kv_dtype,
    decode-attention path forced) of `variants`, taking turns: a table with its caption."""
    models = {}
    for kv_dtype in dict.fromkeys(dt for dt, _ in variants):
        config = BackboneConfig(kind="yoco", d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=1, kv_dtype=kv_dtype)
        torch.manual_seed(0)
        models[kv_dtype] = (build_backbone(config).eval(), config)
    lo, hi = contexts[0], contexts[-1]
    ms = decode_ms({(dt, c, isa): (*models[dt], c, True, isa) for dt, isa in variants for c in (lo, hi)})
    rows = [[yoco_name(heads, 1, dt), isa, f"{ms[dt, lo, isa]:.2f}", f"{ms[dt, hi, isa]:.2f}",
             f"{ms[dt, hi, isa] / ms[dt, lo, isa]:.2f}x"] for dt, isa in variants]
    return (f"YOCO decode step (ms), batch 1, d={d}, {layers} layers, {heads} heads, the decode-attention path "
            f"forced, taking turns, {DECODE_ROUNDS} rounds of 8 tokens, the fastest round counts:\n\n"
            + table(["model", "decode attention", f"{lo:,} (ms)", f"{hi:,} (ms)", f"ratio {hi:,} / {lo:,}"], rows))


@torch.no_grad()
def decode_attention_isa_section(shapes: list[tuple[int, int, int]], contexts: list[int], d: int, layers: int,
                                 heads: int, rounds: int = 20) -> str:
    """The decode-attention kernel's AVX-512 path against its AVX2 path, side by side: the op alone
    (fp32 and fp16 caches, warm and evicted), then YOCO decode steps with each path forced."""
    title = "### Decode attention: AVX-512 path vs AVX2 path\n\n"
    if missing := missing_decode_path("avx512", "AVX-512"):
        return title + missing
    evictor = cache_evictor()
    rows = []
    for h, hkv, dh in shapes:
        for s in contexts:
            for dtype in (torch.float32, torch.float16):
                q = torch.randn(1, h, 1, dh)
                k, v = (torch.randn(1, hkv, s, dh).to(dtype) for _ in range(2))
                best = fastest_warm_and_evicted(
                    {isa: lambda isa=isa: decode_cpu.decode_attention_cpp(q, k, v, isa=isa) for isa in ("avx2", "avx512")},
                    rounds, evictor)
                rows.append([f"{h} / {hkv} x {dh}", f"{s:,}", "fp16" if dtype == torch.float16 else "fp32",
                             *(f"{best[isa, cold]:.3f}" for cold in (False, True) for isa in ("avx2", "avx512")),
                             f"{best['avx2', False] / best['avx512', False]:.2f}x",
                             f"{best['avx2', True] / best['avx512', True]:.2f}x",
                             decode_cpu.cpu_isa(group=h // hkv)])
    steps = yoco_steps_by_decode_path(d, layers, heads, contexts,
                                      [(dt, isa) for dt in ("float32", "float16") for isa in ("avx2", "avx512")])
    return (title + f"The op alone: each path forced (`isa=`), taking turns, fastest of {rounds} calls; \"evicted\": "
            f"right after {EVICT_MIB} MiB have been written. \"default\": the path a call takes unless forced (AVX-512 "
            "when the query heads per KV head are a multiple of 4).\n\n"
            + table(["heads / KV heads x dim", "keys", "cache", "AVX2 (ms)", "AVX-512 (ms)", "AVX2 evicted (ms)",
                     "AVX-512 evicted (ms)", "AVX-512 speed-up", "speed-up, evicted", "default"], rows)
            + "\n\n" + steps)


@torch.no_grad()
def decode_attention_bf16_section(shapes: list[tuple[int, int, int]], contexts: list[int], d: int, layers: int,
                                  heads: int, rounds: int = 20) -> str:
    """bf16 caches (kv_dtype="bfloat16"): the kernel's bf16 dot products (`avx512_bf16`) against the same
    bf16 cache widened to fp32 arithmetic (the AVX-512 path forced) and against an fp32 cache, side by
    side: the op alone (warm and evicted, with its error against the reference), then YOCO decode steps."""
    title = "### Decode attention with bf16 dot products (`kv_dtype=\"bfloat16\"`)\n\n"
    if missing := missing_decode_path("avx512_bf16", "AVX-512 BF16"):
        return title + missing
    evictor = cache_evictor()
    rows = []
    for h, hkv, dh in shapes:
        for s in contexts:
            q = torch.randn(1, h, 1, dh)
            k, v = (torch.randn(1, hkv, s, dh).bfloat16() for _ in range(2))
            kf, vf = k.float(), v.float()
            calls = {"fp32 cache": lambda: decode_cpu.decode_attention_cpp(q, kf, vf, isa="avx512"),
                     "bf16, widened": lambda: decode_cpu.decode_attention_cpp(q, k, v, isa="avx512"),
                     "bf16 dots": lambda: decode_cpu.decode_attention_cpp(q, k, v, isa="avx512_bf16")}
            best = fastest_warm_and_evicted(calls, rounds, evictor)
            ref = decode_attention_reference(q, kf, vf)
            err = rel_err(ref, calls["bf16 dots"]())
            rows.append([f"{h} / {hkv} x {dh}", f"{s:,}", *(f"{best[c, cold]:.3f}" for cold in (False, True) for c in calls),
                         f"{best['bf16, widened', False] / best['bf16 dots', False]:.2f}x",
                         f"{best['fp32 cache', False] / best['bf16 dots', False]:.2f}x", f"{err:.1e}"])
    steps = yoco_steps_by_decode_path(d, layers, heads, contexts, [("float16", "avx512"), ("bfloat16", "avx512"),
                                                                    ("bfloat16", "avx512_bf16")])
    return (title + "The op alone, AVX-512: an fp32 cache, the same values in bf16 read with fp32 arithmetic "
            "(widened), and with bf16 dot products (queries and softmax weights rounded to bf16, fp32 sums; "
            f"the default for a bf16 cache). Taking turns, fastest of {rounds} calls; \"evicted\": right after "
            f"{EVICT_MIB} MiB have been written. Error: relative RMS of the bf16 dots against the fp32 reference on the "
            "same bf16 cache.\n\n"
            + table(["heads / KV heads x dim", "keys", "fp32 (ms)", "bf16 widened (ms)", "bf16 dots (ms)",
                     "fp32 evicted (ms)", "bf16 widened evicted (ms)", "bf16 dots evicted (ms)",
                     "dots vs widened", "dots vs fp32", "error"], rows)
            + "\n\n" + steps)


@torch.no_grad()
def prefetch_section(d: int, layers: int, heads: int, contexts: list[int], rounds: int = 20) -> str:
    """Prefetching into L2 vs into L1, side by side: decode attention and the small-batch linear layer
    alone (forced each way, warm and evicted), then decode steps with the default (L2 for caches of 2 MiB
    or more, weights of 16 MiB or more) against L1 everywhere (the kernels before 2026-12-03)."""
    evictor = cache_evictor()
    ops = []
    for h, hkv, dh in [(4, 1, 64), (4, 4, 64), (24, 8, 128)]:
        q, k, v = torch.randn(1, h, 1, dh), torch.randn(1, hkv, contexts[-1], dh), torch.randn(1, hkv, contexts[-1], dh)
        ops.append((f"decode attention {h} / {hkv} x {dh}, {contexts[-1]:,} keys", 2 * k.numel() * 4,
                    decode_cpu.FAR_CACHE_BYTES, lambda q=q, k=k, v=v: decode_cpu.decode_attention_cpp(q, k, v)))
    for n, k_in in [(768, 256), (2048, 2048), (3072, 3072), (8192, 3072)]:
        x, w = torch.randn(1, k_in), torch.randn(n, k_in)
        ops.append((f"linear [1, {k_in}] x [{k_in}, {n}]", w.numel() * 4, gemv_cpu.FAR_WEIGHT_BYTES,
                    lambda x=x, w=w: gemv_cpu.small_batch_linear_cpp(x, w)))
    rows = []
    def forced(call, far: bool):
        with prefetch_target(far):
            call()

    for name, nbytes, threshold, call in ops:
        best = fastest_warm_and_evicted({far: functools.partial(forced, call, far) for far in (False, True)},
                                        rounds, evictor)
        rows.append([name, f"{nbytes / 2**20:.1f} MiB", *(f"{best[far, cold]:.3f}" for cold in (False, True)
                                                          for far in (False, True)),
                     f"{best[False, False] / best[True, False]:.2f}x", f"{best[False, True] / best[True, True]:.2f}x",
                     "L2" if nbytes >= threshold else "L1"])
    models = {}
    for kind, kv in [("transformer", None), ("yoco", heads), ("yoco", 1)]:
        config = BackboneConfig(kind=kind, d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=kv)
        torch.manual_seed(0)
        models[kind if kind != "yoco" else yoco_name(heads, kv, "float32")] = (build_backbone(config).eval(), config)
    lo, hi = contexts[0], contexts[-1]
    ms = decode_ms({(name, c, l1): (m, cfg, c, True, None, l1) for name, (m, cfg) in models.items()
                    for c in (lo, hi) for l1 in (True, False)})

    def goes_to_l2(model, cfg, context: int) -> bool:  # a KV cache (one layer's) or a weight matrix at the threshold
        cache = 2 * cfg.kv_heads * context * cfg.head_dim * 4
        weight = max(p.numel() * 4 for p in model.parameters() if p.dim() == 2)
        return cache >= decode_cpu.FAR_CACHE_BYTES or weight >= gemv_cpu.FAR_WEIGHT_BYTES

    steps = [[name, f"{c:,}", "yes" if goes_to_l2(m, cfg, c) else "no (same setting: the run's noise)",
              f"{ms[name, c, True]:.2f}", f"{ms[name, c, False]:.2f}", f"{ms[name, c, True] / ms[name, c, False]:.2f}x"]
             for name, (m, cfg) in models.items() for c in (lo, hi)]
    return ("### Prefetching into L2 (data from L3 or memory) vs into L1\n\n"
            "The kernels prefetch the next block of their data while they work on this one. KV caches of "
            f"{decode_cpu.FAR_CACHE_BYTES / 2**20:.0f} MiB or more (larger than the cores' L2) and weights of "
            f"{gemv_cpu.FAR_WEIGHT_BYTES / 2**20:.0f} MiB or more (more than the last-level cache keeps between a "
            "model's layers) are prefetched into L2, the rest into L1 as before 2026-12-03: an L1 prefetch holds "
            "one of a core's few L1 miss buffers until its line arrives, which held the stream back.\n\n"
            f"The op alone, each target forced, taking turns, fastest of {rounds} calls; \"evicted\": right after "
            f"{EVICT_MIB} MiB have been written; \"default\": the target a call takes unless forced.\n\n"
            + table(["op", "data", "L1 (ms)", "L2 (ms)", "L1 evicted (ms)", "L2 evicted (ms)", "L2 speed-up",
                     "speed-up, evicted", "default"], rows)
            + f"\n\nDecode step (ms), batch 1, d={d}, {layers} layers, {heads} heads, fp32: the default against every "
            f"kernel prefetching into L1, taking turns, {DECODE_ROUNDS} rounds of 8 tokens, the fastest round counts:\n\n"
            + table(["model", "context", "default prefetches into L2", "L1 prefetch (ms)", "default (ms)", "speed-up"],
                    steps))


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
def longnet_section(heads: int, head_dim: int, lengths: list[int], segments: list[int], rates: list[int],
                    rounds: int = 5) -> str:
    """Dilated attention as LongNet runs it on this device (dispatch) and the gather-based reference,
    against dense causal SDPA. The lengths take turns for the dispatched path, `rounds` times, and the
    fastest round counts (so the per-doubling ratios compare runs made under the same conditions)."""
    impl = dispatch.choose("dilated_attention", "cpu")
    inputs = {t: [torch.randn(1, heads, t, head_dim) for _ in range(3)] for t in lengths}
    fast = {t: float("inf") for t in lengths}
    for t in lengths:
        impl.fn(*inputs[t], segments, rates)  # warm-up
    for _ in range(rounds):
        for t in lengths:
            t0 = time.perf_counter()
            impl.fn(*inputs[t], segments, rates)
            fast[t] = min(fast[t], time.perf_counter() - t0)
    rows = []
    for t in lengths:
        q, k, v = inputs[t]
        ref = timed(lambda: dilated_attention(q, k, v, segments, rates), repeat=1)
        dense = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), repeat=2)
        rows.append([f"{t:,}", f"{fast[t]:.3f}", f"{ref:.3f}", f"{dense:.3f}", f"{dense / fast[t]:.1f}x"])
    growth = [fast[b] / fast[a] for a, b in zip(lengths, lengths[1:])]
    return (f"### LongNet dilated attention vs dense causal SDPA, {heads} heads x {head_dim}, fp32, forward\n\n"
            f"Patterns: segment lengths {segments}, dilation rates {rates} (they nest). `{impl.name}` is the "
            "implementation LongNet dispatches to on CPU (lengths take turns, fastest of "
            f"{rounds} rounds); the reference gathers every pattern's segments and masks them.\n\n"
            + table(["tokens", f"{impl.name} (s)", "reference (s)", "dense SDPA (s)", f"SDPA / {impl.name}"], rows)
            + f"\n\n- At {lengths[-1]:,} tokens: **{rows[-1][-1]} faster** than dense causal SDPA (bar >= 8x)."
            + f"\n- Time per doubling of tokens: {', '.join(f'{g:.2f}x' for g in growth)} (bar <= 2.3x).")


def torchscale_retnet(config: BackboneConfig, chunkwise: bool):
    """torchscale's RetNetDecoder at our config: value dim d (its default is 2d), our heads, FFN width
    and norm eps, swish GLU, no embedding scale and no output layer (it is fed embeddings)."""
    from torchscale.architecture.config import RetNetConfig
    from torchscale.architecture.retnet import RetNetDecoder

    args = RetNetConfig(decoder_embed_dim=config.d_model, decoder_value_embed_dim=config.d_model,
                        decoder_retention_heads=config.n_heads, decoder_ffn_embed_dim=config.ffn_dim,
                        decoder_layers=config.n_layers, activation_fn="swish", layernorm_eps=config.norm_eps,
                        no_output_layer=True, chunkwise_recurrent=chunkwise,
                        recurrent_chunk_size=config.chunk_size)
    return RetNetDecoder(args).eval()


def torchscale_step(model, x: torch.Tensor, position: int, state: dict) -> torch.Tensor:
    """One recurrent step of torchscale's RetNet: x [1, 1, D] at `position` (0-based); updates `state`.

    Its decoder reads the position from the length of the token ids it is given, so a dummy id
    tensor of length position + 1 goes with the embedding."""
    ids = torch.zeros(1, position + 1, dtype=torch.long)
    return model(ids, incremental_state=state, token_embeddings=x, features_only=True)[0]


def torchscale_forward(model, x: torch.Tensor) -> torch.Tensor:
    ids = torch.zeros(1, x.shape[1], dtype=torch.long)
    return model(ids, token_embeddings=x, features_only=True)[0]


def rel_err(ref: torch.Tensor, out: torch.Tensor) -> float:
    return ((ref - out).abs().max() / ref.abs().max()).item()


@torch.no_grad()
def peer_section(d: int, layers: int, heads: int, lengths: list[int], prefill: int, check: int,
                 steps: int = 16) -> str:
    """Our RetNet vs torchscale's RetNetDecoder at the same config: forward, decoding, form agreement."""
    try:
        with warnings.catch_warnings():  # timm, imported by torchscale, warns about torch.jit
            warnings.simplefilter("ignore")
            import torchscale  # noqa: F401
            torchscale_retnet(BackboneConfig(kind="retnet", d_model=8, n_layers=1, n_heads=1), False)
    except ImportError as e:
        return f"Peer (torchscale RetNet) skipped: torchscale is not importable ({e}); `pip install -e \".[bench]\"`."
    from importlib.metadata import version

    config = BackboneConfig(kind="retnet", d_model=d, n_layers=layers, n_heads=heads)
    torch.manual_seed(0)
    ours = build_backbone(config).eval()
    theirs = torchscale_retnet(config, chunkwise=False)
    theirs_chunk = torchscale_retnet(config, chunkwise=True)
    theirs_chunk.load_state_dict(theirs.state_dict())
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())

    rows = []
    for t in lengths:
        x = torch.randn(1, t, d)
        sec = fastest_in_turns({"ours": lambda: ours(x), "parallel": lambda: torchscale_forward(theirs, x),
                                "chunk": lambda: torchscale_forward(theirs_chunk, x)})
        a, b, c = sec["ours"], sec["parallel"], sec["chunk"]
        rows.append([f"{t:,}", f"{1e3 * a:.1f}", f"{1e3 * b:.1f}", f"{1e3 * c:.1f}", f"{b / a:.2f}x", f"{c / a:.2f}x"])

    # Decoding from a real prefill. torchscale 0.3.0 fills its recurrent state only token by token
    # (its parallel and chunkwise forms return no state); ours prefills with the chunkwise form.
    x = torch.randn(1, prefill + 1, d)
    ours_state = None

    def ours_prefill():
        nonlocal ours_state
        _, ours_state = ours(x[:, :prefill])

    their_state: dict = {}

    def theirs_prefill():
        nonlocal their_state
        their_state = {}
        for i in range(prefill):
            torchscale_step(theirs, x[:, i:i + 1], i, their_state)

    pre_ours, pre_theirs = timed(ours_prefill, repeat=1), timed(theirs_prefill, repeat=1)
    x1 = x[:, prefill:]

    def ours_decode():
        s = ours_state
        for _ in range(steps):
            _, s = ours(x1, s)

    def theirs_decode():
        s = {k: dict(v) for k, v in their_state.items()}  # its steps replace entries, never write in place
        for i in range(steps):
            torchscale_step(theirs, x1, prefill + i, s)

    sec = fastest_in_turns({"ours": ours_decode, "theirs": theirs_decode})
    dec_ours, dec_theirs = 1e3 * sec["ours"] / steps, 1e3 * sec["theirs"] / steps

    # Do the forms agree? Last-token output of the default forward vs token-by-token decoding.
    x = torch.randn(1, check, d)
    s, their_state = None, {}
    for i in range(check):
        o_ours, s = ours(x[:, i:i + 1], s)
        o_theirs = torchscale_step(theirs, x[:, i:i + 1], i, their_state)
    err = {
        "ours": rel_err(ours(x)[0][:, -1], o_ours[:, -1]),
        "ours_par": rel_err(ours(x, form="parallel")[0][:, -1], o_ours[:, -1]),
        "theirs": rel_err(torchscale_forward(theirs, x)[:, -1], o_theirs[:, -1]),
        "theirs_chunk": rel_err(torchscale_forward(theirs, x)[:, -1], torchscale_forward(theirs_chunk, x)[:, -1]),
    }
    return (f"### Peer: torchscale {version('torchscale')} RetNet, same config (d={d}, {layers} layers, {heads} heads, "
            f"value dim {d}, SwiGLU {config.ffn_dim}), batch 1, fp32\n\n"
            f"Parameters: ours {n_ours:,}, torchscale {n_theirs:,} (ours has a learned per-head norm weight, "
            f"{layers} x {config.head_dim}). Ratios are torchscale / ours: above 1, ours is faster. Forwards "
            "and decodings take turns, 5 rounds; the fastest of each counts (the prefills run once).\n\n"
            + table(["tokens", "ours forward (ms)", "torchscale parallel (ms)",
                     f"torchscale chunkwise {config.chunk_size} (ms)", "vs parallel", "vs chunkwise"], rows)
            + "\n\n" + table(["", "ours", "torchscale", "torchscale / ours"],
                             [[f"prefill {prefill:,} tokens (s)", f"{pre_ours:.3f}", f"{pre_theirs:.3f}",
                               f"{pre_theirs / pre_ours:.1f}x"],
                              ["decode ms / token after it", f"{dec_ours:.2f}", f"{dec_theirs:.2f}",
                               f"{dec_theirs / dec_ours:.2f}x"]])
            + "\n\n- torchscale fills its decoding state only token by token (its parallel and chunkwise forms "
            "return none); ours prefills with the chunkwise form."
            + f"\n- Parallel vs recurrent agreement, last token of {check:,}, relative max error: ours "
            f"{err['ours']:.1e} ({ours.choose_form(check, None)} form; forced parallel {err['ours_par']:.1e}), "
            f"torchscale {err['theirs']:.1e}."
            + f"\n- torchscale chunkwise vs its parallel form, same input: {err['theirs_chunk']:.1e} "
            f"(its chunkwise normalisation differs, torchscale issue #77).")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes; print, do not write BENCHMARKS.md")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: only the decode tables, on the GPU, into their own BENCHMARKS.md section")
    args = ap.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA GPU here (torch.cuda.is_available() is False)")
        contexts = [1024, 16384] if args.quick else [1024, 4096, 16384]
        size = (64, 4, 2) if args.quick else (256, 12, 4)
        yocos = [(4 if not args.quick else 2, "float32"), (1, "float32"), (1, "float16")]
        parts = [decode_section(*size, contexts, yocos, device="cuda", fp16_transformer=True)[0],
                 decode_section(*size, contexts, [(1, "float32")], batch=8, device="cuda")[0]]
        if not args.quick:
            parts.append(preset_decode_section("yoco-3b", [1024, 16384], device="cuda"))
        body = f"## Backbones on a GPU (issue 3)\n\nMachine: {machine()}.\n\n" + "\n\n".join(parts)
        print(body)
        if not args.quick:
            write_section("backbones-gpu", body)
        return
    if args.quick:
        parts = [decode_section(64, 4, 2, [256, 1024], [(2, "float32"), (1, "float32"), (1, "float16"), (1, "bfloat16")],
                                fp16_transformer=True)[0],
                 decode_section(64, 4, 2, [256, 1024], [(1, "float32")], batch=4)[0],
                 kernels_section(64, 4, 2, [256, 1024], 1),
                 yoco_size_section([64, 128], 4, [256, 1024], head_dim=32, group=2),
                 preset_decode_section("yoco-tiny", [256, 1024]),
                 decode_attention_section([(4, 1, 32)], [256, 1024]),
                 decode_attention_fp16_section([(4, 1, 32)], [256, 1024]),
                 decode_attention_isa_section([(4, 1, 32)], [256, 1024], 64, 4, 2, rounds=5),
                 decode_attention_bf16_section([(4, 1, 32)], [256, 1024], 64, 4, 2, rounds=5),
                 prefetch_section(64, 4, 2, [256, 1024], rounds=3),
                 yoco_section(64, 4, 2, 512),
                 longnet_section(2, 32, [1024, 2048], [128, 256], [1, 2]),
                 peer_section(64, 4, 2, [128, 512], prefill=128, check=128)]
    else:
        contexts = [1024, 4096, 16384]
        parts = [decode_section(256, 12, 4, contexts, [(4, "float32"), (1, "float32"), (1, "float16"), (1, "bfloat16")],
                                fp16_transformer=True)[0],
                 decode_section(256, 12, 4, contexts, [(1, "float32")], batch=8)[0],
                 kernels_section(256, 12, 4, [1024, 16384], 1),
                 yoco_size_section([256, 512, 1024, 2048], 12, [1024, 16384]),
                 preset_decode_section("yoco-3b", [1024, 16384]),
                 decode_attention_section([(4, 4, 64), (4, 1, 64), (24, 8, 128)], [1024, 16384]),
                 decode_attention_fp16_section([(4, 1, 64), (24, 8, 128)], [1024, 16384]),
                 decode_attention_isa_section([(4, 1, 64), (4, 4, 64), (24, 8, 128)], [1024, 16384], 256, 12, 4),
                 decode_attention_bf16_section([(4, 1, 64), (8, 2, 128)], [1024, 16384], 256, 12, 4),
                 prefetch_section(256, 12, 4, [1024, 16384]),
                 yoco_section(256, 12, 4, 8192),
                 longnet_section(4, 64, [8192, 16384, 32768], [1024, 2048, 4096, 8192, 16384], [1, 2, 4, 8, 16]),
                 peer_section(256, 12, 4, [512, 2048], prefill=1024, check=256)]
    body = f"## Backbones (issue 3)\n\nMachine: {machine()}.\n\n" + "\n\n".join(parts)
    print(body)
    if not args.quick:
        write_section("backbones", body)


if __name__ == "__main__":
    main()
