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


def test_tiny_presets_run_on_cpu():
    for name in [n for n in PRESETS if n.endswith("-tiny")]:
        model = build_backbone(preset(name, n_layers=2))
        out, _ = model(torch.randn(1, 7, 256))
        assert out.shape == (1, 7, 256) and torch.isfinite(out).all()


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown backbone preset"):
        preset("gpt-5")
