"""YOCO: parallel == prefill + decoding (with and without early exit), padding, state size, for a global
KV cache in fp32, fp16 and bf16."""
import pytest
import torch

from latentlm.backbones.config import BackboneConfig
from latentlm.backbones.transformer import Transformer
from latentlm.backbones.layers import rotary_angles
from latentlm.backbones.yoco import YOCO, window_mask
from latentlm.kernels.decode_attention import cpu as decode_cpu
from stepwise import prefill_then_decode

B, T, D, H, L = 2, 13, 32, 4, 4  # T=13 is a multiple of neither chunk_size=4 nor window=5
KINDS = ["gated_retention", "sliding_window"]
# (self-decoder, n_kv_heads of the global KV, its kv_dtype): multi-head, and grouped-query with 2 and 1 KV
# heads; fp16 caches (head dim 8: the decode kernel's AVX2 path reads them) with both self-decoders, and a
# bf16 one (head dim 8: widened exactly, the bf16 dot products need 32)
VARIANTS = [("gated_retention", None, "float32"), ("sliding_window", None, "float32"),
            ("gated_retention", 2, "float32"), ("sliding_window", 1, "float32"),
            ("gated_retention", 2, "float16"), ("sliding_window", None, "float16"),
            ("gated_retention", 1, "bfloat16")]


@pytest.fixture(autouse=True)
def seeded():
    """Each test draws its inputs from the same seed, whatever ran before it (module-scoped models
    would otherwise make the inputs depend on test order)."""
    torch.manual_seed(1234)


def make(kind, n_layers=L, **kw):
    torch.manual_seed(0)
    cfg = BackboneConfig(**{"kind": "yoco", "d_model": D, "n_layers": n_layers, "n_heads": H, "chunk_size": 4,
                            "window": 5, "self_decoder": kind, **kw})
    return YOCO(cfg).eval()


FP32_TOL = 1e-4  # another path through the model (prefill + decoding, padding) with fp32 caches, relative max
# error (measured <= 2.6e-6 over 60 seeds)


def rel_max(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def tol(model):
    """The outputs' bound for `model`'s cache dtype: FP32_TOL, or for a 16-bit cache one step of its dtype
    (eps: 2^-10 fp16, 2^-7 bf16). The two paths compute keys and values an fp32 rounding apart, which can
    round to neighbouring 16-bit values; each such entry moves the outputs by up to about one step of it
    (measured over 60 seeds: fp16 <= 1.2e-4, bf16 <= 4.0e-4, where FP32_TOL failed 1 bf16 case in 7)."""
    dtype = getattr(torch, model.config.kv_dtype)
    return FP32_TOL if dtype == torch.float32 else torch.finfo(dtype).eps


def assert_same_cache(a, b):
    """fp32 caches agree to FP32_TOL. A 16-bit cache holds keys that the two paths (one GEMM over the
    sequence, one per token) compute an fp32 rounding apart, which can round to neighbouring 16-bit values
    (seen on an AVX-512 host): every entry within one step of the other path's plus that fp32 difference,
    allowed FP32_TOL of the largest key (it is absolute: near 0, where the 16-bit steps are finer, it
    spans several, e.g. 3 steps of fp16 at 1.1e-4)."""
    if a.dtype == torch.float32:
        assert rel_max(a, b) <= FP32_TOL
        return
    step = (torch.nextafter(b.abs(), torch.tensor(float("inf"), dtype=b.dtype)) - b.abs()).float()
    slack = FP32_TOL * b.float().abs().max()
    assert ((a.float() - b.float()).abs() <= step + slack).all()
    assert rel_max(a.float(), b.float()) <= torch.finfo(a.dtype).eps + FP32_TOL  # a step of the largest at most


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"{v[0]}-kv_heads={v[1] or H}-{v[2]}")
def model(request):
    kind, n_kv_heads, kv_dtype = request.param
    return make(kind, n_kv_heads=n_kv_heads, kv_dtype=kv_dtype)


def test_state_layout(model):
    x = torch.randn(B, T, D)
    with torch.no_grad():  # (with autograd an fp16 cache holds its rounded values in fp32: see below)
        out, state = model(x)
    assert out.shape == (B, T, D) and state.length == T
    assert state.keys.shape == state.values.shape == (B, model.config.kv_heads, T, D // H)
    assert state.keys.dtype == state.values.dtype == getattr(torch, model.config.kv_dtype)
    assert len(state.self_states) == L // 2


@pytest.mark.parametrize("early_exit", [False, True])
@pytest.mark.parametrize("prefill", [1, 4, 6, 11])
def test_prefill_then_decode_equals_parallel(model, prefill, early_exit):
    x = torch.randn(B, T, D)
    with torch.no_grad():
        full, full_state = model(x)
        y, state = model(x[:, :prefill], early_exit=early_exit)
        if early_exit:
            assert y.shape == (B, 1, D)
            assert rel_max(y, full[:, prefill - 1:prefill]) <= tol(model)
            outs = []
        else:
            outs = [y]
        for i in range(prefill, T):
            y, state = model(x[:, i:i + 1], state)
            outs.append(y)
    got = torch.cat(outs, 1)
    ref = full[:, prefill:] if early_exit else full
    assert rel_max(got, ref) <= tol(model)
    assert_same_cache(state.keys, full_state.keys)
    assert model.state_nbytes(state) == model.state_nbytes(full_state)


def test_prefill_method_is_early_exit(model):
    x = torch.randn(B, 7, D)
    with torch.no_grad():
        y, s1 = model.prefill(x)
        full, s2 = model(x)
    assert y.shape == (B, 1, D) and torch.allclose(y, full[:, -1:], atol=1e-5)
    assert torch.equal(s1.keys, s2.keys) and torch.equal(s1.values, s2.values)


@pytest.mark.parametrize("early_exit", [False, True])
def test_continuation_in_chunks(model, early_exit):
    """Multi-token continuation from a state (T > 1, crossing chunk and window boundaries)."""
    x = torch.randn(B, T, D)
    with torch.no_grad():
        full, _ = model(x)
        y1, state = model(x[:, :3])
        y2, state = model(x[:, 3:10], state, early_exit=early_exit)
        y3, state = model(x[:, 10:], state)
    assert rel_max(y1, full[:, :3]) <= tol(model)
    assert rel_max(y2, full[:, 9:10] if early_exit else full[:, 3:10]) <= tol(model)
    assert rel_max(y3, full[:, 10:]) <= tol(model)


@pytest.mark.parametrize("early_exit", [False, True])
def test_left_padding_is_invisible(model, early_exit):
    pad = 4
    x = torch.randn(B, 10, D)
    valid = torch.ones(B, 10, dtype=torch.bool)
    valid[1, :pad] = False
    padded = x.clone()
    padded[1, :pad] = 1e3  # garbage that must not leak
    with torch.no_grad():
        out, state = model(padded, valid=valid, early_exit=early_exit)
        ref, _ = model(x[1:, pad:])
        assert torch.isfinite(out).all()
        if early_exit:
            assert rel_max(out[1], ref[0, -1:]) <= tol(model)
        else:
            assert rel_max(out[1, pad:], ref[0]) <= tol(model)
            ref0, _ = model(x[:1])  # the unpadded row is unaffected by its neighbour
            assert rel_max(out[0], ref0[0]) <= tol(model)
        # decoding continues correctly after a padded prefill
        nxt = torch.randn(B, 3, D)
        steps = []
        for i in range(3):
            y, state = model(nxt[:, i:i + 1], state)
            steps.append(y)
        steps = torch.cat(steps, 1)
        ref_steps, _ = model(torch.cat([x[1:, pad:], nxt[1:]], 1))
    assert rel_max(steps[1], ref_steps[0, -3:]) <= tol(model)


def test_training_backward(model):
    x = torch.randn(B, T, D, requires_grad=True)
    out, _ = model.train()(x)
    out.pow(2).mean().backward()
    model.eval()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("n_kv_heads", [None, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_state_nbytes_is_one_layer_of_kv(kind, n_kv_heads):
    """The growing part of the state is ONE layer's keys and values; a Transformer keeps n_layers.
    With grouped-query attention (both models) it holds n_kv_heads heads."""
    n_layers, s = 6, 40
    model = make(kind, n_layers=n_layers, n_kv_heads=n_kv_heads)
    with torch.no_grad():
        _, state = model(torch.randn(B, s, D))
    dh, hkv = D // H, model.config.kv_heads
    kv_one_layer = 2 * B * hkv * s * dh * 4  # (k, v) * B * Hkv * S * Dh * fp32
    if kind == "gated_retention":
        self_part = (n_layers // 2) * B * H * dh * dh * 4  # constant-size recurrent states, fp32
    else:
        self_part = (n_layers // 2) * 2 * B * H * 5 * dh * 4  # last `window`=5 keys/values per layer
    assert model.state_nbytes(state) == kv_one_layer + self_part

    torch.manual_seed(0)
    ref = Transformer(BackboneConfig(d_model=D, n_layers=n_layers, n_heads=H, n_kv_heads=n_kv_heads)).eval()
    with torch.no_grad():
        _, cache = ref(torch.randn(B, s, D))
    assert ref.state_nbytes(cache) == n_layers * kv_one_layer
    # growth per token: exactly 1/n_layers of the Transformer's
    with torch.no_grad():
        _, state2 = model(torch.randn(B, 1, D), state)
        _, cache2 = ref(torch.randn(B, 1, D), cache)
    yoco_growth = model.state_nbytes(state2) - model.state_nbytes(state)
    tf_growth = ref.state_nbytes(cache2) - ref.state_nbytes(cache)
    assert yoco_growth * n_layers == tf_growth == n_layers * 2 * B * hkv * dh * 4


@pytest.mark.parametrize("kind,n_layers,window", [("gated_retention", 1, 5), ("sliding_window", 1, 5),
                                                 ("sliding_window", 3, 64)])
def test_small_configs(kind, n_layers, window):
    """n_layers=1: no self-decoder, the global KV comes from the input; window > T: full causal."""
    model = make(kind, n_layers=n_layers, window=window)
    x = torch.randn(B, 9, D)
    with torch.no_grad():
        full, _ = model(x)
        y, state = model(x[:, :5], early_exit=True)
        outs = []
        for i in range(5, 9):
            y, state = model(x[:, i:i + 1], state)
            outs.append(y)
    assert rel_max(torch.cat(outs, 1), full[:, 5:]) <= FP32_TOL


def test_sliding_window_sees_exactly_window_positions():
    """Query n sees positions n-window+1..n: a change at p moves outputs p..p+window-1 only."""
    model = make("sliding_window")
    layer = model.self_blocks[0].mixer
    cos, sin = rotary_angles(torch.arange(T), D // H, model.config.rope_theta)
    x = torch.randn(1, T, D)
    p, w = 3, model.config.window
    x2 = x.clone()
    x2[:, p] += 1.0
    with torch.no_grad():
        y1, _ = layer(x, cos, sin, None, window_mask(torch.ones(1, T, dtype=torch.bool), T, w))
        y2, _ = layer(x2, cos, sin, None, window_mask(torch.ones(1, T, dtype=torch.bool), T, w))
    changed = (y1 - y2).abs().amax(-1)[0] > 1e-6
    assert changed.tolist() == [p <= n < p + w for n in range(T)]


def test_sliding_window_without_mask_builds_its_window():
    """Called with no mask, the layer still keeps to its window: over more than `window` tokens, and
    after a cache, where SDPA's own causal flag would align queries to the first keys."""
    model = make("sliding_window")
    layer = model.self_blocks[0].mixer
    w = model.config.window
    assert T > w + 2
    cos, sin = rotary_angles(torch.arange(T), D // H, model.config.rope_theta)
    x = torch.randn(2, T, D)
    ones = torch.ones(2, T, dtype=torch.bool)
    with torch.no_grad():
        expected, _ = layer(x, cos, sin, None, window_mask(ones, T, w))
        whole, _ = layer(x, cos, sin, None, None)
        head, past = layer(x[:, :5], cos[:5], sin[:5], None, None)
        tail, _ = layer(x[:, 5:], cos[5:], sin[5:], past, None)
    assert rel_max(whole, expected) <= 1e-5
    assert rel_max(torch.cat([head, tail], 1), expected) <= 1e-5


def test_fp16_global_kv_halves_the_cache_and_stays_close_to_fp32():
    """kv_dtype="float16": the same weights give a cache of half the bytes, fp16 while decoding too,
    and outputs within fp16 rounding of the fp32 cache's."""
    m32, m16 = make("gated_retention", n_kv_heads=2), make("gated_retention", n_kv_heads=2, kv_dtype="float16")
    m16.load_state_dict(m32.state_dict())
    x = torch.randn(B, T, D)
    with torch.no_grad():
        y32, s32 = m32(x)
        y16, s16 = m16(x)
        _, s16 = m16(torch.randn(B, 1, D), s16)
    assert s16.keys.dtype == torch.float16 and s16.kv.nbytes() * 2 == s32.kv.nbytes() * (T + 1) // T
    assert 0 < rel_max(y16, y32) <= 1e-2


@pytest.mark.parametrize("kv_dtype", ["float16", "bfloat16"])
def test_16_bit_global_kv_trains_with_fp32_gradients(kv_dtype):
    """With autograd the rounding is straight-through: the cache values are exact in the 16-bit dtype,
    the gradients flow in fp32 (a 16-bit backward would lose small ones)."""
    model = make("gated_retention", kv_dtype=kv_dtype).train()
    x = torch.randn(B, T, D, requires_grad=True)
    out, state = model(x)
    assert state.keys.dtype == torch.float32
    assert torch.equal(state.keys, state.keys.to(getattr(torch, kv_dtype)).float())
    out.pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.kv.weight.grad.abs().max() > 0


def test_bf16_global_kv_decodes_with_bf16_dot_products_within_bf16_precision():
    """kv_dtype="bfloat16" with heads of 64 and 4 query heads per KV head: on a CPU with AVX-512 BF16
    the cross-decoder's decoding attention takes the bf16 dot products (queries and weights rounded to
    bf16), so prefill + decoding matches the full forward to bf16 precision, not to fp32's 1e-4."""
    if decode_cpu.cpu_isa(group=4, dim=64, bf16=True) != "avx512_bf16":
        pytest.skip("this CPU has no AVX-512 BF16 decode attention path")
    torch.manual_seed(0)
    model = YOCO(BackboneConfig(kind="yoco", d_model=256, n_layers=4, n_heads=4, n_kv_heads=1, chunk_size=4,
                                kv_dtype="bfloat16")).eval()
    x = torch.randn(B, T, 256)
    with torch.no_grad():
        full, full_state = model(x)
    stepwise, state = prefill_then_decode(model, x, 5)
    err = rel_max(stepwise, full)
    assert state.keys.dtype == torch.bfloat16 and 1e-5 < err <= 1e-2
    assert_same_cache(state.keys, full_state.keys)
