"""Named backbone sizes: the published ones, and tiny ones that train on a 2-core CPU.

Published sizes follow the papers and their reference code, grouped-query attention included
(`n_kv_heads`: YOCO 3B's cross-decoder shares 8 KV heads among 24 query heads, BitNet b1.58 2B4T has
5 KV heads for 20). Parameter counts exclude the token embedding and output layers.
"""
from __future__ import annotations

from latentlm.backbones.config import BackboneConfig

PRESETS: dict[str, dict] = {
    # RetNet (Sun et al. 2023) as in torchscale's `retnet_base` (d 512, 6 layers, 2 heads, FFN 864)
    "retnet-base": dict(kind="retnet", d_model=512, n_layers=6, n_heads=2, ffn_mult=864 / 512),
    # RetNet paper, Table 2 sizes
    "retnet-1.3b": dict(kind="retnet", d_model=2048, n_layers=24, n_heads=8, ffn_mult=2.0),
    "retnet-2.7b": dict(kind="retnet", d_model=2560, n_layers=32, n_heads=10, ffn_mult=2.0),
    "retnet-6.7b": dict(kind="retnet", d_model=4096, n_layers=32, n_heads=16, ffn_mult=2.0),
    # YOCO 3B (Sun et al. 2024; unilm `yoco_3b`): d 3072, 26 layers, 24 heads, 8 KV heads for the global KV, FFN 8192
    "yoco-3b": dict(kind="yoco", d_model=3072, n_layers=26, n_heads=24, n_kv_heads=8, ffn_mult=8192 / 3072),
    # BitNet b1.58 2B4T: d 2560, 30 layers, 20 heads, 5 KV heads, FFN 6912, ReLU^2, RoPE 5e5
    "bitnet-b1.58-2b4t": dict(kind="bitnet", d_model=2560, n_layers=30, n_heads=20, n_kv_heads=5,
                              ffn_mult=6912 / 2560, ffn_act="relu2", ternary=True, rope_theta=500_000.0),
    # LongNet (Ding et al. 2023) base LM: d 768, 12 layers, 12 heads; w = 2k..32k, r = 1, 2, 4, 6, 12
    "longnet-base": dict(kind="longnet", d_model=768, n_layers=12, n_heads=12, ffn_mult=4.0,
                         segment_lengths=[2048, 4096, 8192, 16384, 32768], dilation_rates=[1, 2, 4, 6, 12]),
    # Tiny CPU presets (the size of the shipped shapes-tiny model)
    "transformer-tiny": dict(kind="transformer", d_model=256, n_layers=4, n_heads=4),
    "retnet-tiny": dict(kind="retnet", d_model=256, n_layers=4, n_heads=4, chunk_size=64),
    "yoco-tiny": dict(kind="yoco", d_model=256, n_layers=4, n_heads=4, chunk_size=64),
    "longnet-tiny": dict(kind="longnet", d_model=256, n_layers=4, n_heads=4, segment_lengths=[32, 64, 128],
                         dilation_rates=[1, 2, 4]),
    "bitnet-tiny": dict(kind="bitnet", d_model=256, n_layers=4, n_heads=4, ffn_act="relu2", ternary=True),
}


def preset(name: str, **overrides) -> BackboneConfig:
    """The BackboneConfig of a named preset, with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown backbone preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return BackboneConfig(**(PRESETS[name] | overrides))
