"""An attention layer's start (projection output split into heads, rotary on q and k) in one op: the
fused C++ CPU kernel against the PyTorch reference, bit for bit (torch.equal); the reference against the
layers' old op-by-op paths, bit for bit; what the kernel does not take goes to the reference; each wired
layer gives the same output through the op as with every op forced to its reference.

Why bit for bit: per element the kernel does what the reference's three fp32 torch ops do, x * cos and
x_p * sin, each rounded, then their sum, rounded. The kernel's file turns floating-point contraction off
for that loop (a fused multiply-add would round once and differ; x86-64-v2, our baseline, has no FMA,
but other targets do), so no tolerance is needed.
"""

import pytest
import torch

from cpp_fallback import assert_reference_after_failed_build
from tolerance import rel_rms
from latentlm.backbones.config import BackboneConfig
from latentlm.backbones.layers import apply_rotary, rotary_angles
from latentlm.backbones.longnet import DilatedSelfAttention
from latentlm.backbones.transformer import Attention
from latentlm.backbones.yoco import YOCO, CrossAttention, SlidingWindowAttention, window_mask
from latentlm.kernels import dispatch
from latentlm.kernels.rotary_heads import cpu, rotary_heads_cpp, rotary_heads_reference


def case(b, t, n_q, n_kv, dh, seed=0, start=7, dtype=torch.float32):
    """p [B, T, (n_q + 2 n_kv) Dh] and the rotary tables [T, Dh] of positions start..start + T - 1."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(b, t, (n_q + 2 * n_kv) * dh, generator=g, dtype=dtype)
    cos, sin = rotary_angles(torch.arange(start, start + t), dh, 10000.0)
    return p, cos.to(dtype), sin.to(dtype)


@pytest.fixture
def ext():
    if not cpu.available():
        pytest.skip("the C++ rotary heads kernel could not be built here")
    return cpu.EXTENSION.get()


@pytest.fixture
def spy(ext, monkeypatch):
    """Records, per call of the extension, whether the kernel took the inputs (True) or answered None."""
    calls = []
    real = ext.rotary_heads

    def rotary_heads(*a):
        out = real(*a)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(cpu.EXTENSION, "_ext", type("Spy", (), {"rotary_heads": staticmethod(rotary_heads)})())
    return calls


@pytest.mark.parametrize("t", [1, 5, 300])
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("n_q,n_kv", [(4, 4), (4, 1), (24, 8), (4, 0), (0, 2)])
@pytest.mark.parametrize("dh", [8, 64, 66, 128])
def test_kernel_equals_reference_bit_for_bit(spy, dh, n_q, n_kv, b, t):
    p, cos, sin = case(b, t, n_q, n_kv, dh)
    got = rotary_heads_cpp(p, cos, sin, n_q, n_kv)
    ref = rotary_heads_reference(p, cos, sin, n_q, n_kv)
    assert spy == [True]
    for out, r, n in zip(got, ref, (n_q, n_kv, n_kv)):
        assert out.shape == r.shape == (b, n, t, dh) and out.dtype == torch.float32 and out.is_contiguous()
        assert torch.equal(out, r)
    assert r.is_contiguous()  # the reference keeps the same contract
    assert torch.equal(got[2], p.view(b, t, n_q + 2 * n_kv, dh)[:, :, n_q + n_kv:].transpose(1, 2))  # v: copied


def test_outputs_do_not_share_p(ext):
    p, cos, sin = case(1, 1, 4, 4, 64)
    q, k, v = rotary_heads_cpp(p, cos, sin, 4, 4)
    ptrs = {q.data_ptr(), k.data_ptr(), v.data_ptr()}
    assert len(ptrs) == 3 and p.data_ptr() not in ptrs
    assert not any(o.untyped_storage().data_ptr() == p.untyped_storage().data_ptr() for o in (q, k, v))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_tokens_spread_over_threads(spy, monkeypatch, threads):
    monkeypatch.setattr(cpu, "MIN_PARALLEL_FLOATS", 0)  # one token per work item
    p, cos, sin = case(3, 7, 4, 2, 32)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = rotary_heads_cpp(p, cos, sin, 4, 2)
    finally:
        torch.set_num_threads(before)
    assert spy == [True]
    assert all(torch.equal(o, r) for o, r in zip(got, rotary_heads_reference(p, cos, sin, 4, 2)))


def test_no_heads_at_all(spy):
    p, cos, sin = case(2, 3, 0, 0, 16)
    for outs in (rotary_heads_cpp(p, cos, sin, 0, 0), rotary_heads_reference(p, cos, sin, 0, 0)):
        assert [o.shape for o in outs] == [(2, 0, 3, 16)] * 3
    assert spy == [True]


@pytest.mark.parametrize("b,t", [(1, 1), (3, 5)])
def test_reference_is_the_layers_old_op_by_op_paths(b, t):
    """Bit for bit the ops the layers ran: Attention's (q and k in one [B, Hq + Hkv, T, Dh] call, then
    split), DilatedSelfAttention's and SlidingWindowAttention's (view (b, t, 3, h, dh), q and k in one
    [2, B, H, T, Dh] call), CrossAttention's (q only) and YOCO's global KV (k only)."""
    h, hkv, dh = 4, 2, 16
    p, cos, sin = case(b, t, h, hkv, dh)
    heads = p.view(b, t, h + 2 * hkv, dh).transpose(1, 2)
    qk, v = apply_rotary(heads[:, :h + hkv], cos, sin), heads[:, h + hkv:]
    old = (*qk.split([h, hkv], dim=1), v)
    assert all(torch.equal(n, o) for n, o in zip(rotary_heads_reference(p, cos, sin, h, hkv), old))

    p, cos, sin = case(b, t, h, h, dh, seed=1)
    qkv = p.view(b, t, 3, h, dh).permute(2, 0, 3, 1, 4)
    (q, k), v = apply_rotary(qkv[:2], cos, sin), qkv[2]
    assert all(torch.equal(n, o) for n, o in zip(rotary_heads_reference(p, cos, sin, h, h), (q, k, v)))

    p, cos, sin = case(b, t, h, 0, dh, seed=2)
    q = apply_rotary(p.view(b, t, h, dh).transpose(1, 2), cos, sin)
    assert torch.equal(rotary_heads_reference(p, cos, sin, h, 0)[0], q)

    p, cos, sin = case(b, t, 0, hkv, dh, seed=3)
    k, v = p.view(b, t, 2, hkv, dh).permute(2, 0, 3, 1, 4)
    _, k_new, v_new = rotary_heads_reference(p, cos, sin, 0, hkv)
    assert torch.equal(k_new, apply_rotary(k, cos, sin)) and torch.equal(v_new, v)


def test_what_the_kernel_does_not_take_goes_to_the_reference(spy):
    p, cos, sin = case(2, 3, 4, 2, 16)
    rotary_heads_cpp(p, cos, sin, 4, 2)
    assert spy == [True]

    p64, c64, s64 = case(2, 3, 4, 2, 16, dtype=torch.float64)  # not fp32
    got, ref = rotary_heads_cpp(p64, c64, s64, 4, 2), rotary_heads_reference(p64, c64, s64, 4, 2)
    assert got[0].dtype == torch.float64 and all(torch.equal(a, r) for a, r in zip(got, ref))
    strided = torch.randn(2, 3, 2 * p.shape[-1])[..., ::2]  # p not contiguous
    got, ref = rotary_heads_cpp(strided, cos, sin, 4, 2), rotary_heads_reference(strided, cos, sin, 4, 2)
    assert all(torch.equal(a, r) for a, r in zip(got, ref))
    odd, oc, os_ = case(2, 3, 4, 2, 15)  # odd Dh (tables of 16, cut)
    rotary_heads_cpp(odd, oc[..., :15], os_[..., :15], 4, 2)
    rotary_heads_cpp(p, cos[:1], sin[:1], 4, 2)  # one table row for three positions: the reference broadcasts
    assert spy == [True] + [False] * 4
    with pytest.raises(ValueError, match="features per token"):  # a width that does not match: the reference says so
        rotary_heads_cpp(p, cos, sin, 4, 1)
    assert spy[-1] is False

    pg = p.clone().requires_grad_()  # an autograd graph to record
    q, k, v = rotary_heads_cpp(pg, cos, sin, 4, 2)
    (q.square().sum() + k.sum() + 2 * v.sum()).backward()
    assert spy[-1] is False and q.grad_fn is not None
    pr = p.clone().requires_grad_()
    q, k, v = rotary_heads_reference(pr, cos, sin, 4, 2)
    (q.square().sum() + k.sum() + 2 * v.sum()).backward()
    assert torch.isfinite(pg.grad).all() and pg.grad.abs().sum() > 0 and torch.equal(pg.grad, pr.grad)
    with torch.no_grad():  # no graph to record: the kernel takes it
        rotary_heads_cpp(pg, cos, sin, 4, 2)
    assert spy[-1] is True


def test_bf16_goes_to_the_reference(spy):
    p, cos, sin = case(1, 2, 4, 2, 16)
    got = rotary_heads_cpp(p.bfloat16(), cos, sin, 4, 2)
    assert spy == [False] and got[0].dtype == got[2].dtype == torch.bfloat16
    assert all(torch.equal(a, r) for a, r in zip(got, rotary_heads_reference(p.bfloat16(), cos, sin, 4, 2)))


def test_dispatch_picks_the_kernel_on_cpu(ext, monkeypatch):
    assert dispatch.choose("rotary_heads", "cpu").name == "cpp"
    assert dispatch.choose("rotary_heads", "cuda").name == "reference"
    monkeypatch.setenv("LATENTLM_KERNELS", "reference")
    assert dispatch.choose("rotary_heads", "cpu").name == "reference"


def test_fallback_when_the_build_fails(monkeypatch):
    args = case(2, 3, 4, 2, 16)
    flat = lambda outs: torch.cat([o.flatten() for o in outs])  # noqa: E731
    assert_reference_after_failed_build(monkeypatch, cpu, lambda: flat(rotary_heads_cpp(*args, 4, 2)),
                                        lambda: flat(rotary_heads_reference(*args, 4, 2)))


# Each wired layer: a prefill of 5 tokens, then one decoding step from its cache, three ways: through
# the op (the kernel must have run), with only this op forced to its reference (bit for bit the same),
# and with every op forced to its reference (LATENTLM_KERNELS=reference: the other ops' fp32 kernels sum
# in other orders, layer after layer; relative RMS measured <= 2.7e-7 over 40 seeds, but for the whole
# YOCO backbone with gated retention twice 8.9e-7 and 1.25e-6; <= 1e-5).

def tables(config, start, t):
    return rotary_angles(torch.arange(start, start + t), config.head_dim, config.rope_theta)


def three_ways(spy, monkeypatch, run):
    """run() -> list of tensors, three times as above; returns nothing, asserts."""
    with torch.no_grad():
        fused = run()
        assert spy and all(spy), spy
        n = len(spy)
        real = cpu.EXTENSION._ext.rotary_heads
        monkeypatch.setattr(cpu.EXTENSION._ext, "rotary_heads", lambda *a: (spy.append(False), None)[1])
        only_this_reference = run()
        assert len(spy) > n and not any(spy[n:])
        monkeypatch.setattr(cpu.EXTENSION._ext, "rotary_heads", real)
        monkeypatch.setenv("LATENTLM_KERNELS", "reference")
        reference = run()
    assert all(torch.equal(a, r) for a, r in zip(fused, only_this_reference))
    errors = [rel_rms(a, r) for a, r in zip(fused, reference)]
    assert max(errors) <= 1e-5, errors


def test_transformer_attention(spy, monkeypatch):
    torch.manual_seed(0)
    config = BackboneConfig(kind="transformer", d_model=64, n_heads=4, n_kv_heads=2)
    layer = Attention(config).eval()
    x = torch.randn(2, 6, 64)

    def run():
        y, kv = layer(x[:, :5], *tables(config, 0, 5), None, None, True)
        z, kv = layer(x[:, 5:], *tables(config, 5, 1), kv, None, False)
        return [y, z, kv.keys, kv.values]

    three_ways(spy, monkeypatch, run)


def test_longnet_dilated_self_attention(spy, monkeypatch):
    torch.manual_seed(0)
    config = BackboneConfig(kind="longnet", d_model=64, n_heads=4, segment_lengths=[2, 4], dilation_rates=[1, 2])
    layer = DilatedSelfAttention(config).eval()
    x = torch.randn(2, 6, 64)

    def run():
        y, kv = layer(x[:, :5], *tables(config, 0, 5), None, None)
        z, kv = layer(x[:, 5:], *tables(config, 5, 1), kv, None)
        return [y, z, kv.keys, kv.values]

    three_ways(spy, monkeypatch, run)


def test_yoco_sliding_window_attention(spy, monkeypatch):
    torch.manual_seed(0)
    config = BackboneConfig(kind="yoco", d_model=64, n_heads=4, self_decoder="sliding_window", window=4)
    layer = SlidingWindowAttention(config).eval()
    x = torch.randn(2, 6, 64)
    valid = torch.ones(2, 6, dtype=torch.bool)

    def run():
        y, past = layer(x[:, :5], *tables(config, 0, 5), None, window_mask(valid[:, :5], 5, 4))
        z, past = layer(x[:, 5:], *tables(config, 5, 1), past, window_mask(valid[:, 1:], 1, 4))
        return [y, z, *past]

    three_ways(spy, monkeypatch, run)


def test_yoco_cross_attention(spy, monkeypatch):
    torch.manual_seed(0)
    config = BackboneConfig(kind="yoco", d_model=64, n_heads=4, n_kv_heads=2)
    layer = CrossAttention(config).eval()
    x, keys, values = torch.randn(2, 6, 64), torch.randn(2, 2, 6, 16), torch.randn(2, 2, 6, 16)

    def run():
        y = layer(x[:, :5], *tables(config, 0, 5), keys[:, :, :5], values[:, :, :5], None, True)
        z = layer(x[:, 5:], *tables(config, 5, 1), keys, values, None, False)
        return [y, z]

    three_ways(spy, monkeypatch, run)


@pytest.mark.parametrize("self_decoder", ["gated_retention", "sliding_window"])
def test_yoco_global_kv(spy, monkeypatch, self_decoder):
    """The whole backbone (the global KV is wired in `YOCO.forward`; its cross-attention and, with
    sliding windows, its self-decoder go through the op too): outputs and the global keys and values."""
    torch.manual_seed(0)
    config = BackboneConfig(kind="yoco", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                            self_decoder=self_decoder, window=4, chunk_size=4)
    model = YOCO(config).eval()
    x = torch.randn(2, 6, 64)

    def run():
        y, state = model(x[:, :5])
        z, state = model(x[:, 5:], state)
        return [y, z, state.keys, state.values]

    three_ways(spy, monkeypatch, run)


def test_training_records_the_graph():
    """With grad (training), a layer goes through the reference, and its projection gets gradients."""
    torch.manual_seed(0)
    config = BackboneConfig(kind="transformer", d_model=64, n_heads=4, n_kv_heads=2)
    layer = Attention(config)
    y, _ = layer(torch.randn(2, 5, 64), *tables(config, 0, 5), None, None, True)
    y.square().sum().backward()
    grad = layer.qkv.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad[:64].abs().sum() > 0  # q rows too
