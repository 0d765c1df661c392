"""BitLinear (BitNet b1.58 W1.58 A8 with STE), its packed inference form, and ternary backbones."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tolerance import assert_equal_up_to_int8_flips
from latentlm.backbones import BackboneConfig, Transformer
from latentlm.backbones.bitlinear import BitLinear, PackedBitLinear, pack_model
from latentlm.backbones.layers import Linear, ReLU2GLU, SwiGLU, ffn, linear
from latentlm.kernels.ternary import (
    absmean_ternary,
    pack_ternary,
    quantize_activations,
    ternary_matmul_reference,
    unpack_ternary,
)

VARIANTS = [
    dict(),  # the default: weightless RMSNorm, no bias
    dict(norm_affine=True, bias=True),
    dict(norm=False),
]


def _layer(k, n, seed=0, **kw):
    torch.manual_seed(seed)
    m = BitLinear(k, n, **kw)
    with torch.no_grad():
        if m.norm_weight is not None:
            m.norm_weight.uniform_(0.5, 1.5)
        if m.bias is not None:
            m.bias.normal_()
    return m


def _reference(m: BitLinear, x):
    """y = ternary_matmul_reference(quantize_activations(norm(x)), absmean_ternary(W)) (+ bias)."""
    x_q, x_s = quantize_activations(m.input_norm(x))
    w_q, w_s = absmean_ternary(m.weight)
    y = ternary_matmul_reference(x_q.reshape(-1, m.in_features), x_s.reshape(-1, 1), w_q, w_s)
    y = y.reshape(*x.shape[:-1], m.out_features)
    return y + m.bias.float() if m.bias is not None else y


@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize("shape", [(1, 1, 4), (2, 9, 48), (5, 300)])
def test_forward_equals_ternary_reference_exactly(kw, shape):
    m = _layer(shape[-1], 24, **kw)
    x = torch.randn(*shape) * 2
    for train in (True, False):
        m.train(train)
        y = m(x)
        assert y.shape == (*shape[:-1], 24) and y.dtype == x.dtype
        assert torch.equal(y, _reference(m, x))
    # and it is the dequantised matmul it stands for (up to float32 reassociation)
    x_q, x_s = quantize_activations(m.input_norm(x))
    w_q, w_s = absmean_ternary(m.weight)
    deq = F.linear(x_q.float() / x_s, w_q.float() * w_s, None if m.bias is None else m.bias.float())
    assert (y - deq).abs().max() <= 1e-5 * deq.abs().max()


def test_forward_is_per_token():
    m = _layer(40, 16)
    x = torch.randn(4, 11, 40)
    y = m(x)
    assert torch.equal(m(x[2:3, 5:8]), y[2:3, 5:8])
    assert torch.equal(m(x[:, -1:]), y[:, -1:])
    assert torch.equal(m(x.reshape(44, 40)), y.reshape(44, 16))


def test_bf16_input_keeps_dtype():
    m = _layer(32, 8)
    x = torch.randn(3, 32)
    y = m(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, _reference(m, x.bfloat16()).bfloat16())


@pytest.mark.parametrize("kw", VARIANTS)
def test_gradients_are_straight_through(kw):
    m = _layer(48, 20, **kw)
    x = torch.randn(3, 5, 48, requires_grad=True)
    g = torch.randn(3, 5, 20)
    (m(x) * g).sum().backward()
    params = [m.weight] + [p for p in (m.norm_weight, m.bias) if p is not None]
    for t in params + [x]:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # the STE gradients, written out: dL/dW = g^T (x_q / s_x), dL/dx_n = g (W_q s_w)
    x_n = m.input_norm(x.detach()).requires_grad_(True)
    x_q, x_s = quantize_activations(x_n)
    w_q, w_s = absmean_ternary(m.weight)
    x_deq, w_deq = (x_q.float() / x_s).reshape(-1, 48), w_q.float() * w_s
    expect_w = g.reshape(-1, 20).T @ x_deq
    assert torch.allclose(m.weight.grad, expect_w, rtol=1e-5, atol=1e-6 * expect_w.abs().max())
    if kw.get("norm", True):
        x0 = x.detach().requires_grad_(True)
        expect_x, = torch.autograd.grad(m.input_norm(x0), x0, g @ w_deq)
    else:
        expect_x = g @ w_deq
    assert torch.allclose(x.grad, expect_x, rtol=1e-5, atol=1e-6 * expect_x.abs().max())


def test_training_reduces_loss():
    """Quantisation-aware training works: the latent weights learn a linear map through the STE."""
    torch.manual_seed(0)
    m = BitLinear(32, 8, norm=False)
    target = BitLinear(32, 8, norm=False)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    x = torch.randn(256, 32)
    with torch.no_grad():
        y_true = target(x)
    losses = []
    for _ in range(150):
        loss = F.mse_loss(m(x), y_true)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize("block_size", [8, 128])
def test_packed_layer_equals_bitlinear_eval(kw, block_size):
    m = _layer(100, 12, **kw).eval()  # K=100: not a multiple of 8 nor of 128
    packed = m.export_packed(block_size)
    assert packed.shape == (12, 100) and packed.block_size == block_size
    assert torch.equal(unpack_ternary(packed), absmean_ternary(m.weight)[0])
    assert torch.equal(packed.scale, absmean_ternary(m.weight)[1])
    p = PackedBitLinear.from_bitlinear(m, block_size)
    x = torch.randn(2, 7, 100)
    with torch.no_grad():
        assert torch.equal(p(x), m(x))
    assert pack_model(m, block_size).packed.dtype == torch.uint8  # a bare BitLinear is swapped too


def test_packed_layer_from_packed():
    p = PackedBitLinear.from_packed(pack_ternary(torch.ones(3, 6, dtype=torch.int8), 0.25, block_size=4))
    assert (p.in_features, p.out_features, p.block_size) == (6, 3, 4)
    with pytest.raises(ValueError):
        PackedBitLinear(6, 3, block_size=6)


# --- layers: the ternary switch and the FFN factory ---------------------------------------------

def test_linear_and_ffn_factories():
    dense = BackboneConfig(d_model=32, n_heads=4)
    tern = BackboneConfig(d_model=32, n_heads=4, ternary=True, norm_eps=1e-5)
    dense_linear = linear(dense, 32, 16)
    assert type(dense_linear) is Linear and isinstance(dense_linear, torch.nn.Linear) and dense_linear.bias is None
    b = linear(tern, 32, 16)
    assert isinstance(b, BitLinear) and b.bias is None and b.eps == 1e-5
    assert type(ffn(dense)) is SwiGLU
    assert type(ffn(dense.model_copy(update={"ffn_act": "relu2"}))) is ReLU2GLU
    r = ffn(tern.model_copy(update={"ffn_act": "relu2"}))
    assert all(isinstance(getattr(r, n), BitLinear) for n in ("gate", "up", "down"))
    # ReLU2GLU computes down(relu(gate x)^2 * up x)
    torch.manual_seed(0)
    r = ReLU2GLU(dense)
    x = torch.randn(2, 3, 32)
    expect = r.down(torch.relu(r.gate(x)) ** 2 * r.up(x))
    assert torch.equal(r(x), expect)


# --- ternary Transformer -------------------------------------------------------------------------

def _ternary_transformer(seed=0, relu2=True):
    """Transformer(ternary=True, ffn_act="relu2"). transformer.py's Block builds SwiGLU directly
    (not via layers.ffn), so for relu2 the MLPs are swapped for ffn(config), which is what
    `self.mlp = ffn(config)` in Block would do."""
    torch.manual_seed(seed)
    cfg = BackboneConfig(d_model=64, n_layers=2, n_heads=4, ternary=True, ffn_act="relu2" if relu2 else "swiglu")
    model = Transformer(cfg)
    if relu2:
        for block in model.blocks:
            block.mlp = ffn(cfg)
    return model


def _decode(model, x, prefill):
    y, state = model(x[:, :prefill])
    outs = [y]
    for i in range(prefill, x.shape[1]):
        y, state = model(x[:, i:i + 1], state)
        outs.append(y)
    return torch.cat(outs, 1)


def test_ternary_transformer_runs_and_trains():
    model = _ternary_transformer()
    n_bit = sum(isinstance(m, BitLinear) for m in model.modules())
    assert n_bit == 2 * 5  # per block: qkv, out, gate, up, down
    assert all(isinstance(b.mlp, ReLU2GLU) for b in model.blocks)
    x = torch.randn(2, 9, 64)
    y, _ = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("relu2", [True, False])
@pytest.mark.parametrize("prefill", [1, 5, 12])
def test_ternary_decode_matches_parallel(relu2, prefill):
    """Stock SDPA: the causal and the cached attention kernels differ in the last bits, and a
    per-token int8 quantiser downstream turns that into a whole quantisation step whenever a value
    sits on a rounding boundary (measured: 4 of 180 seed/prefill/FFN cases exceed 1e-4, up to
    3.9e-3): `assert_equal_up_to_int8_flips` allows that for a few tokens, 1e-4 for the rest; the
    exact check below is the one that proves every op is per token."""
    model = _ternary_transformer(0, relu2).eval()
    x = torch.randn(3, 13, 64)
    with torch.no_grad():
        full, _ = model(x)
        dec = _decode(model, x, prefill)
    assert_equal_up_to_int8_flips(dec, full)


_sdpa = F.scaled_dot_product_attention


def _row_consistent_sdpa(q, k, v, attn_mask=None, is_causal=False, **kw):
    """Causal attention, one query at a time over exactly its own prefix of keys (no padding), so
    a token's attention is computed by the same call, on the same shapes, in both forms."""
    t, s = q.shape[2], k.shape[2]
    rows = [_sdpa(q[:, :, i:i + 1].contiguous(), k[:, :, :s - t + i + 1].contiguous(),
                  v[:, :, :s - t + i + 1].contiguous()) for i in range(t)]
    return torch.cat(rows, 2)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("prefill", [1, 5, 12])
def test_ternary_decode_is_exact_when_attention_is_row_consistent(monkeypatch, seed, prefill):
    """With attention made row-consistent, every other op of the ternary ReLU^2 Transformer is
    per token and deterministic, so decoding reproduces the parallel forward bit for bit. (SwiGLU
    is not bit-exact here: CPU silu gives different last bits on its vectorised and scalar paths,
    i.e. depending on where a value sits in the tensor; the difference stays at float32 rounding.)"""
    monkeypatch.setattr(F, "scaled_dot_product_attention", _row_consistent_sdpa)
    monkeypatch.setenv("LATENTLM_KERNELS", "reference")  # decoding's attention through SDPA too, not the C++ op
    x = torch.randn(3, 13, 64, generator=torch.Generator().manual_seed(100 + seed))
    with torch.no_grad():
        model = _ternary_transformer(seed, relu2=True).eval()
        assert torch.equal(_decode(model, x, prefill), model(x)[0])
        model = _ternary_transformer(seed, relu2=False).eval()
        full = model(x)[0]
        assert (_decode(model, x, prefill) - full).abs().max() / full.abs().max() <= 1e-6


def test_pack_model_and_safetensors_round_trip(tmp_path):
    model = _ternary_transformer(0).eval()
    x = torch.randn(2, 6, 64)
    with torch.no_grad():
        expect, _ = model(x)
    dense_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, BitLinear))
    packed = pack_model(model)
    assert packed is model
    assert not any(isinstance(m, BitLinear) for m in model.modules())
    layers = [m for m in model.modules() if isinstance(m, PackedBitLinear)]
    assert len(layers) == 10
    with torch.no_grad():
        assert torch.equal(model(x)[0], expect)
    state = model.state_dict()
    assert state["blocks.0.attn.qkv.packed"].dtype == torch.uint8 and "blocks.0.attn.qkv.weight" not in state
    packed_bytes = sum(m.packed.numel() for m in layers)
    # 2 bits a weight, K padded to the 128-block: K=64 -> 128, K=168 -> 256
    assert packed_bytes == sum(m.out_features * -(-m.in_features // 128) * 32 for m in layers)
    assert packed_bytes * 8 < dense_bytes
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    fresh = pack_model(_ternary_transformer(seed=1).eval())  # other weights, same architecture
    fresh.load_state_dict(load_file(path))
    with torch.no_grad():
        assert torch.equal(fresh(x)[0], expect)
