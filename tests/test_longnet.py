"""LongNet backbone: parallel == prefill + decoding, padding invisible, the dense oracle agrees."""
import pytest
import torch

from latentlm.backbones.config import BackboneConfig
from latentlm.backbones.longnet import LongNet
from latentlm.backbones.transformer import KVCache, Transformer
from latentlm.kernels.dilated_attention import naive_dilated_attention

B, T, D, H, L = 2, 21, 32, 4, 2  # T=21 is a multiple of no segment length below
PATTERNS = [([4, 8, 16], [1, 2, 4]), ([3, 10], [1, 2]), ([5, 12], [2, 3])]


def make(ws, rs, **kw):
    torch.manual_seed(0)
    cfg = BackboneConfig(kind="longnet", d_model=D, n_layers=L, n_heads=H, segment_lengths=ws, dilation_rates=rs,
                         **kw)
    return LongNet(cfg).eval()


def rel_max(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module", params=PATTERNS, ids=str)
def model(request):
    return make(*request.param)


def test_state_layout(model):
    x = torch.randn(B, T, D)
    with torch.no_grad():
        out, state = model(x)
    assert out.shape == (B, T, D) and isinstance(state, KVCache) and state.length == T
    assert len(state.keys) == L and state.keys[0].shape == (B, H, T, D // H)
    assert model.state_nbytes(state) == L * 2 * B * H * T * (D // H) * 4


@pytest.mark.parametrize("prefill", [1, 4, 7, 16, 20])
def test_prefill_then_decode_equals_parallel(model, prefill):
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(prefill))
    with torch.no_grad():
        full, full_state = model(x)
        y, state = model(x[:, :prefill])
        outs = [y]
        for i in range(prefill, T):
            y, state = model(x[:, i:i + 1], state)
            outs.append(y)
    assert rel_max(torch.cat(outs, 1), full) <= 1e-4
    for a, b in zip(state.keys + state.values, full_state.keys + full_state.values):
        assert rel_max(a, b) <= 1e-4


def test_chunked_continuation_equals_parallel(model):
    x = torch.randn(B, T, D)
    with torch.no_grad():
        full, _ = model(x)
        outs, state = [], None
        for a, b in [(0, 6), (6, 7), (7, 15), (15, T)]:
            y, state = model(x[:, a:b], state)
            outs.append(y)
    assert rel_max(torch.cat(outs, 1), full) <= 1e-4


def test_left_padding_is_invisible(model):
    pad, t = 5, 14
    x = torch.randn(B, t, D)
    valid = torch.ones(B, t, dtype=torch.bool)
    valid[1, :pad] = False
    padded = x.clone()
    padded[1, :pad] = 1e3  # garbage that must not leak
    with torch.no_grad():
        out, state = model(padded, valid=valid)
        ref, _ = model(x[1:, pad:])
        assert torch.isfinite(out).all()
        assert rel_max(out[1, pad:], ref[0]) <= 1e-4
        ref0, _ = model(x[:1])
        assert rel_max(out[0], ref0[0]) <= 1e-4
        # decoding continues correctly after a padded prefill
        nxt = torch.randn(B, 3, D)
        steps = []
        for i in range(3):
            y, state = model(nxt[:, i:i + 1], state)
            steps.append(y)
        ref_steps, _ = model(torch.cat([x[1:, pad:], nxt[1:]], 1))
    assert rel_max(torch.cat(steps, 1)[1], ref_steps[0, -3:]) <= 1e-4


def test_attention_matches_dense_oracle():
    """One layer's attention, through the module, equals the dense union-mask reference."""
    m = make([4, 8], [1, 2])
    attn = m.blocks[0].attn
    x = torch.randn(B, T, D)
    from latentlm.backbones.layers import apply_rotary, rotary_angles

    cos, sin = rotary_angles(torch.arange(T), D // H, 10_000.0)
    with torch.no_grad():
        y, kv = attn(x, cos, sin, None, None)
        k, v = kv.keys, kv.values
        q = apply_rotary(attn.qkv(x).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)[0], cos, sin)
        ref = naive_dilated_attention(q, k, v, [4, 8], [1, 2]).transpose(1, 2).reshape(B, T, D)
    assert rel_max(y, attn.out(ref)) <= 1e-5


def test_all_covering_pattern_is_the_transformer():
    """A segment longer than T with dilation 1 makes LongNet a causal Transformer (same weights)."""
    lnet = make([4, 64], [1, 1])
    torch.manual_seed(0)
    tf = Transformer(BackboneConfig(d_model=D, n_layers=L, n_heads=H)).eval()
    tf.load_state_dict(lnet.state_dict())
    x = torch.randn(B, T, D)
    with torch.no_grad():
        assert rel_max(lnet(x)[0], tf(x)[0]) <= 1e-4


def test_gradients_flow():
    m = make([4, 8], [1, 2]).train()
    x = torch.randn(B, 11, D, requires_grad=True)
    valid = torch.ones(B, 11, dtype=torch.bool)
    valid[0, :3] = False
    out, _ = m(x, valid=valid)
    out[valid].square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad[1].abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
