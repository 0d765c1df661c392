import pytest
import torch

from latentlm.backbones import BackboneConfig, build_backbone


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone(BackboneConfig(d_model=64, n_layers=2, n_heads=4)).eval()


@pytest.mark.parametrize("prefill", [1, 5, 12])
def test_prefill_then_decode_equals_parallel(backbone, prefill):
    x = torch.randn(3, 13, 64)
    full, _ = backbone(x)
    y, state = backbone(x[:, :prefill])
    outs = [y]
    for i in range(prefill, 13):
        y, state = backbone(x[:, i:i + 1], state)
        outs.append(y)
    rel = (torch.cat(outs, 1) - full).abs().max() / full.abs().max()
    assert rel <= 1e-4
    assert backbone.state_nbytes(state) == 2 * 2 * 3 * 4 * 13 * 16 * 4  # layers*(k,v)*B*H*T*Dh*fp32


def test_left_padding_is_invisible(backbone):
    x = torch.randn(2, 10, 64)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, :4] = False
    padded = x.clone()
    padded[1, :4] = 1e3  # garbage that must not leak
    out, state = backbone(padded, valid=valid)
    ref, _ = backbone(x[1:, 4:])
    assert torch.allclose(out[1, 4:], ref[0], atol=1e-5)
    # and decoding continues correctly after a padded prefill
    nxt = torch.randn(2, 1, 64)
    step, _ = backbone(nxt, state)
    ref_step, _ = backbone(torch.cat([x[1:, 4:], nxt[1:]], 1))
    assert torch.allclose(step[1, 0], ref_step[0, -1], atol=1e-5)
    assert torch.isfinite(out).all()


def test_config_errors():
    with pytest.raises(ValueError, match="divisible"):
        BackboneConfig(d_model=63, n_heads=4)
    with pytest.raises(ValueError, match="kind"):
        BackboneConfig(kind="mamba")


@pytest.mark.parametrize("kind", ["transformer", "retnet", "yoco", "longnet", "bitnet"])
def test_every_kind_builds_and_keeps_the_contract(kind):
    torch.manual_seed(0)
    config = BackboneConfig(kind=kind, d_model=32, n_layers=2, n_heads=2, chunk_size=4, window=4,
                            segment_lengths=[4, 8], dilation_rates=[1, 2])
    model = build_backbone(config).eval()
    x = torch.randn(2, 9, 32)
    full, _ = model(x)
    y, state = model(x[:, :5])
    for i in range(5, 9):
        y, state = model(x[:, i:i + 1], state)
    assert full.shape == (2, 9, 32) and y.shape == (2, 1, 32)
    assert (y[:, 0] - full[:, -1]).abs().max() <= 1e-4 * full.abs().max()
    assert model.state_nbytes(state) > 0
