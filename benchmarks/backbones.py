"""Backbone benchmarks (issue 3): decode cost vs context, state memory, YOCO early exit, LongNet, and
our RetNet against torchscale's (the peer; `pip install -e ".[bench]"`, skipped when not installed).

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
import warnings

import torch
import torch.nn.functional as F
from report import machine, table, write_section

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
        a = timed(lambda: ours(x), repeat=3)
        b = timed(lambda: torchscale_forward(theirs, x), repeat=3)
        c = timed(lambda: torchscale_forward(theirs_chunk, x), repeat=3)
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

    dec_ours = 1e3 * timed(ours_decode, repeat=3) / steps
    dec_theirs = 1e3 * timed(theirs_decode, repeat=3) / steps

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
            f"{layers} x {config.head_dim}). Ratios are torchscale / ours: above 1, ours is faster.\n\n"
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
    args = ap.parse_args()
    if args.quick:
        parts = [decode_section(64, 4, 2, [256, 1024])[0], yoco_section(64, 4, 2, 512),
                 longnet_section(2, 32, [1024, 2048], [128, 256], [1, 2]),
                 peer_section(64, 4, 2, [128, 512], prefill=128, check=128)]
    else:
        parts = [decode_section(256, 12, 4, [1024, 4096, 16384])[0], yoco_section(256, 12, 4, 8192),
                 longnet_section(4, 64, [8192, 16384, 32768], [1024, 2048, 4096, 8192, 16384], [1, 2, 4, 8, 16]),
                 peer_section(256, 12, 4, [512, 2048], prefill=1024, check=256)]
    body = f"## Backbones (issue 3)\n\nMachine: {machine()}.\n\n" + "\n\n".join(parts)
    print(body)
    if not args.quick:
        write_section("backbones", body)


if __name__ == "__main__":
    main()
