"""Dilated attention, the nested-pattern fast path (nested.py): equal to the dense union reference in
outputs and gradients; hands everything it does not cover to the reference; what it computes is the
de-duplicated set of pairs and nothing quadratic."""
import pytest
import torch

# rel_rms compares an all-zero reference (dq with one key: the softmax is constant) absolutely: SDPA's
# backward computes that dq as a difference (rowsum(dO * O) against dO . v), which leaves fp32 rounding
# (~1e-8) on some CPUs (AVX-512)
from tolerance import rel_rms
from latentlm.kernels import dispatch
from latentlm.kernels.dilated_attention import (
    dilated_attention,
    dilated_attention_nested,
    head_offsets,
    naive_dilated_attention,
    patterns_nest,
)
import latentlm.kernels.dilated_attention.nested as nested

B, H, D = 2, 4, 8
NESTED = [
    ([4], [1]),
    ([4, 8], [1, 2]),  # LongNet's doubling: one rectangle per later pattern
    ([4, 8, 16, 32], [1, 2, 4, 8]),
    ([4, 16], [1, 2]),  # four sub-blocks per block: three calls
    ([4, 8], [2, 4]),  # the first pattern dilated too: some queries see nothing
]


def qkv(t, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, t, D, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def outputs_and_grads(fn, q, k, v, ws, rs, **kw):
    g = torch.Generator().manual_seed(1)
    o = fn(q, k, v, ws, rs, **kw)
    do = torch.randn(o.shape, generator=g)
    grads = torch.autograd.grad(o, (q, k, v), do)
    return [o.detach(), *grads]


@pytest.mark.parametrize("t", [1, 5, 13, 32, 45])
@pytest.mark.parametrize("ws,rs", NESTED)
def test_equals_dense_reference_outputs_and_gradients(ws, rs, t):
    assert patterns_nest(ws, rs, head_offsets(H, rs))
    q, k, v = qkv(t)
    got = outputs_and_grads(dilated_attention_nested, q, k, v, ws, rs)
    ref = outputs_and_grads(naive_dilated_attention, q, k, v, ws, rs)
    for a, b in zip(got, ref):
        assert a.shape == b.shape and torch.isfinite(a).all()
        assert rel_rms(a, b) <= 1e-5


def test_custom_nested_offsets_and_scale():
    ws, rs, offsets = [4, 8], [2, 4], [[1, 0, 1, 0], [3, 0, 1, 2]]  # 3 % 2 == 1, 0 % 2 == 0, ...
    assert patterns_nest(ws, rs, head_offsets(H, rs, offsets))
    q, k, v = qkv(19)
    got = outputs_and_grads(dilated_attention_nested, q, k, v, ws, rs, offsets=offsets, scale=0.3)
    ref = outputs_and_grads(naive_dilated_attention, q, k, v, ws, rs, offsets=offsets, scale=0.3)
    for a, b in zip(got, ref):
        assert rel_rms(a, b) <= 1e-5


def test_bfloat16_close_to_fp32_reference():
    ws, rs = [8, 16, 32], [1, 2, 4]
    q, k, v = qkv(40, dtype=torch.bfloat16)
    o = dilated_attention_nested(q, k, v, ws, rs)
    ref = naive_dilated_attention(q.float(), k.float(), v.float(), ws, rs)
    assert o.dtype == torch.bfloat16 and rel_rms(o, ref) <= 2e-2


@pytest.mark.parametrize("ws,rs,offsets,nest", [
    ([4, 8], [1, 2], None, True),
    ([5, 12, 32], [1, 3, 4], None, False),  # segments do not nest
    ([4, 12], [1, 3], None, False),  # 12 is not a multiple of... r=3 does not divide w_0=4
    ([4, 8], [1, 2], [[0, 0, 0, 0], [1, 1, 1, 1]], True),
    ([4, 8], [2, 4], [[0, 1, 0, 1], [1, 1, 3, 3]], False),  # head 0: 1 % 2 != 0, off the parent's grid
    ([8, 4], [1, 2], None, False),  # not increasing
    ([2048, 4096, 8192, 16384, 32768], [1, 2, 4, 6, 12], None, False),  # the longnet-base preset
])
def test_patterns_nest(ws, rs, offsets, nest):
    assert patterns_nest(ws, rs, head_offsets(H, rs, offsets)) is nest


@pytest.mark.parametrize("case", ["not_nested", "padding", "cache", "lse"])
def test_everything_else_goes_to_the_reference(case, monkeypatch):
    calls = []
    real = nested.dilated_attention
    monkeypatch.setattr(nested, "dilated_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    ws, rs, t = [4, 8], [1, 2], 11
    q, k, v = (x.detach() for x in qkv(t))
    kw, qq = {}, q
    if case == "not_nested":
        ws, rs = [5, 12], [1, 3]
    elif case == "padding":
        kw["valid"] = torch.ones(B, t, dtype=torch.bool)
        kw["valid"][1, :3] = False
    elif case == "cache":
        qq = q[:, :, -1:]
    else:
        kw["return_lse"] = True
    got = dilated_attention_nested(qq, k, v, ws, rs, **kw)
    assert calls == [1]
    ref = naive_dilated_attention(qq, k, v, ws, rs, **kw)
    for a, b in zip(got if case == "lse" else [got], ref if case == "lse" else [ref]):
        assert (a - b).abs().max() <= 1e-5


def test_calls_are_the_deduplicated_rectangles(monkeypatch):
    """Per head: pattern 0, causal [L0 x L0] blocks; pattern i, the second half of each block against its
    first half, with no mask. Nothing of size T x T."""
    seen = []
    real = nested._flash

    def spy(q, k, v, p, causal, scale=None):
        seen.append((tuple(q.shape), tuple(k.shape), causal))
        return real(q, k, v, p, causal, scale=scale)

    monkeypatch.setattr(nested, "_flash", spy)
    ws, rs, t = [8, 16, 32], [1, 2, 4], 256
    q, k, v = (x.detach() for x in qkv(t))
    dilated_attention_nested(q, k, v, ws, rs)
    assert seen == [((B, 32, 8, D), (B, 32, 8, D), True)] * H \
        + [((B, 16, 4, D), (B, 16, 4, D), False)] * H \
        + [((B, 8, 4, D), (B, 8, 4, D), False)] * H


def test_skips_patterns_that_add_nothing(monkeypatch):
    seen = []
    real = nested._flash
    monkeypatch.setattr(nested, "_flash", lambda *a, **kw: seen.append(1) or real(*a, **kw))
    q, k, v = (x.detach() for x in qkv(8))
    o = dilated_attention_nested(q, k, v, [8, 16, 32], [1, 2, 4])  # T = 8: one 8-segment holds everything
    assert len(seen) == H  # the first pattern only, one call per head
    assert (o - naive_dilated_attention(q, k, v, [8, 16, 32], [1, 2, 4])).abs().max() <= 1e-5


def test_dispatch_picks_it_on_cpu():
    assert dispatch.choose("dilated_attention", "cpu").name == "nested_flash"
    assert dispatch.choose("dilated_attention", "cuda").name == "sdpa_gather"
