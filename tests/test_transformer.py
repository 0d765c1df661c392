import pytest
import torch

from latentlm.backbones import BackboneConfig, build_backbone


def tol(backbone, fp32: float) -> float:
    """`fp32` for an fp32 KV cache; for a 16-bit one, one step of its dtype (eps: 2^-10 fp16, 2^-7 bf16).
    The paths (batch shapes, prefill lengths) compute keys and values an fp32 rounding apart, which can
    round to neighbouring 16-bit values; each such entry moves the outputs by up to about one step of it
    (measured over 40 seeds: prefill + decoding fp16 <= 6.9e-5, bf16 <= 2.0e-4 relative; left padding
    fp16 <= 1.8e-4, bf16 <= 1.1e-3 absolute, outputs of max ~3; fp32 10x below its bounds)."""
    dtype = getattr(torch, backbone.config.kv_dtype)
    return fp32 if dtype == torch.float32 else torch.finfo(dtype).eps


@pytest.fixture(scope="module", params=[(None, "float32"), (2, "float32"), (1, "float32"), (2, "float16"),
                                        (1, "bfloat16")],
                ids=lambda p: f"kv_heads={p[0] or 4}-{p[1]}")
def backbone(request):
    """Multi-head attention, grouped-query attention with 2 and 1 KV heads, and fp16 and bf16 KV caches
    (heads of 16: the decode kernel widens them exactly; its bf16 dot products need heads of 32)."""
    torch.manual_seed(0)
    n_kv_heads, kv_dtype = request.param
    return build_backbone(BackboneConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads,
                                         kv_dtype=kv_dtype)).eval()


@pytest.mark.parametrize("padded", [False, True], ids=["no-padding", "left-padding"])
@pytest.mark.parametrize("prefill", [1, 5, 12])
def test_prefill_then_decode_equals_parallel(backbone, prefill, padded):
    x = torch.randn(3, 13, 64)
    valid = None
    if padded:
        valid = torch.ones(3, 13, dtype=torch.bool)
        valid[1, :4] = False
        valid[2, :7] = False
    with torch.no_grad():
        full, _ = backbone(x, valid=valid)
        y, state = backbone(x[:, :prefill], valid=None if valid is None else valid[:, :prefill])
        outs = [y]
        for i in range(prefill, 13):  # a row may still be in its padding after a short prefill
            y, state = backbone(x[:, i:i + 1], state, valid=None if valid is None else valid[:, i:i + 1])
            outs.append(y)
    rel = (torch.cat(outs, 1) - full).abs().max() / full.abs().max()
    assert rel <= tol(backbone, 1e-4)
    hkv, size = backbone.config.kv_heads, getattr(torch, backbone.config.kv_dtype).itemsize
    assert state.keys[0].dtype == getattr(torch, backbone.config.kv_dtype)
    assert backbone.state_nbytes(state) == 2 * 2 * 3 * hkv * 13 * 16 * size  # layers*(k,v)*B*Hkv*T*Dh*bytes


def test_left_padding_is_invisible(backbone):
    x = torch.randn(2, 10, 64)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, :4] = False
    padded = x.clone()
    padded[1, :4] = 1e3  # garbage that must not leak
    atol = tol(backbone, 1e-5)  # a 16-bit cache: keys the two batch shapes round to neighbouring values
    out, state = backbone(padded, valid=valid)
    ref, _ = backbone(x[1:, 4:])
    assert torch.allclose(out[1, 4:], ref[0], atol=atol)
    # and decoding continues correctly after a padded prefill
    nxt = torch.randn(2, 1, 64)
    step, _ = backbone(nxt, state)
    ref_step, _ = backbone(torch.cat([x[1:, 4:], nxt[1:]], 1))
    assert torch.allclose(step[1, 0], ref_step[0, -1], atol=atol)
    assert torch.isfinite(out).all()


def test_config_errors():
    with pytest.raises(ValueError, match="divisible"):
        BackboneConfig(d_model=63, n_heads=4)
    with pytest.raises(ValueError, match="kind"):
        BackboneConfig(kind="mamba")
    with pytest.raises(ValueError, match="n_heads=6 must be a multiple of n_kv_heads=4"):
        BackboneConfig(d_model=48, n_heads=6, n_kv_heads=4)
    for kind in ("retnet", "longnet"):
        with pytest.raises(ValueError, match="applies to transformer, bitnet and yoco"):
            BackboneConfig(kind=kind, n_kv_heads=2)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        BackboneConfig(n_kv_heads=0)
    for kind in ("transformer", "bitnet", "yoco"):
        assert BackboneConfig(kind=kind, n_heads=4, n_kv_heads=2).kv_heads == 2
    assert BackboneConfig(n_heads=4).kv_heads == 4
    for kind in ("retnet", "longnet"):
        with pytest.raises(ValueError, match=f"kv_dtype applies to transformer, bitnet and yoco; kind '{kind}' has no"):
            BackboneConfig(kind=kind, kv_dtype="float16")


@pytest.mark.parametrize("kind", ["transformer", "retnet", "yoco", "longnet", "bitnet"])
def test_every_kind_builds_and_keeps_the_contract(kind):
    torch.manual_seed(0)
    own = {"retnet": dict(chunk_size=4), "yoco": dict(chunk_size=4, window=4),
           "longnet": dict(segment_lengths=[4, 8], dilation_rates=[1, 2])}  # each kind's own small sizes
    config = BackboneConfig(kind=kind, d_model=32, n_layers=2, n_heads=2, **own.get(kind, {}))
    model = build_backbone(config).eval()
    x = torch.randn(2, 9, 32)
    full, _ = model(x)
    y, state = model(x[:, :5])
    for i in range(5, 9):
        y, state = model(x[:, i:i + 1], state)
    assert full.shape == (2, 9, 32) and y.shape == (2, 1, 32)
    assert (y[:, 0] - full[:, -1]).abs().max() <= 1e-4 * full.abs().max()
    assert model.state_nbytes(state) > 0
