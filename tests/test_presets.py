import pytest
import torch

from latentlm.backbones import PRESETS, build_backbone, preset


def _params(config) -> int:
    """Parameter count of a backbone, computed on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = build_backbone(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates_and_builds(name):
    config = preset(name)
    assert config.kind in ("transformer", "retnet", "yoco", "longnet", "bitnet")
    assert _params(config) > 0


@pytest.mark.parametrize("name,low,high", [
    ("bitnet-b1.58-2b4t", 1.8e9, 2.4e9),  # 2.4B upstream includes 0.33B of embeddings
    ("yoco-3b", 2.3e9, 3.3e9),
    ("retnet-1.3b", 1.0e9, 1.4e9),
])
def test_published_sizes_have_their_parameter_counts(name, low, high):
    assert low <= _params(preset(name)) <= high


@pytest.mark.parametrize("name", ["bitnet-b1.58-2b4t", "yoco-3b"])
def test_grouped_query_attention_saves_the_kv_projections(name):
    """GQA presets: fewer parameters than with n_heads KV heads by exactly the dropped k and v rows
    (every layer's qkv for BitNet, the one global KV projection for YOCO)."""
    config = preset(name)
    assert config.n_kv_heads < config.n_heads
    kv_layers = config.n_layers if config.kind == "bitnet" else 1
    dropped = kv_layers * 2 * (config.n_heads - config.n_kv_heads) * config.head_dim * config.d_model
    assert _params(preset(name, n_kv_heads=None)) - _params(config) == dropped


def test_tiny_presets_run_on_cpu():
    for name in [n for n in PRESETS if n.endswith("-tiny")]:
        model = build_backbone(preset(name, n_layers=2))
        out, _ = model(torch.randn(1, 7, 256))
        assert out.shape == (1, 7, 256) and torch.isfinite(out).all()


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown backbone preset"):
        preset("gpt-5")
