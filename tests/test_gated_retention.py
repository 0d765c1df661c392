"""The three forms of gated retention agree (fla style: relative RMS error against the naive oracle)."""
import pytest
import torch
import torch.nn.functional as F

from tolerance import rel_rms
from latentlm.kernels.gated_retention import (
    chunk_gated_retention,
    parallel_gated_retention,
    recurrent_gated_retention,
)

TOL = 1e-5


def inputs(b=2, h=3, t=23, dk=8, dv=6, normalizer=16.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, dk, generator=gen) * dk**-0.5
    k = torch.randn(b, h, t, dk, generator=gen)
    v = torch.randn(b, h, t, dv, generator=gen)
    g = F.logsigmoid(torch.randn(b, h, t, generator=gen) * 2) / normalizer
    return [x.requires_grad_() for x in (q, k, v, g)]


def outputs_and_grads(fn, args, seed=1):
    out = fn(*args)
    o = out[0] if isinstance(out, tuple) else out
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad((o * do).sum(), args)
    return [o.detach(), *grads]


def assert_close(got, ref, names=("o", "dq", "dk", "dv", "dg")):
    for name, a, b in zip(names, got, ref):
        err = rel_rms(a, b)
        assert err <= TOL, f"{name}: relative RMS error {err:.2e}"


# normalizer 1: strong decays (g down to about -6), so the decay actually matters.
@pytest.mark.parametrize("normalizer", [16.0, 1.0])
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 23, 64])
def test_chunk_equals_naive(chunk_size, normalizer):
    args = inputs(normalizer=normalizer)
    ref = outputs_and_grads(parallel_gated_retention, args)
    got = outputs_and_grads(lambda *a: chunk_gated_retention(*a, chunk_size=chunk_size), args)
    assert_close(got, ref)


@pytest.mark.parametrize("normalizer", [16.0, 1.0])
def test_recurrent_equals_naive(normalizer):
    args = inputs(normalizer=normalizer)
    ref = outputs_and_grads(parallel_gated_retention, args)
    got = outputs_and_grads(recurrent_gated_retention, args)
    assert_close(got, ref)


def test_final_states_agree():
    q, k, v, g = (x.detach() for x in inputs())
    _, s_rec = recurrent_gated_retention(q, k, v, g)
    _, s_chunk = chunk_gated_retention(q, k, v, g, chunk_size=5)
    # closed form: S_T = sum_m exp(g_{m+1} + ... + g_T) k_m^T v_m
    c = g.cumsum(-1)
    w = (c[..., -1:] - c).exp()
    s_ref = (k * w[..., None]).transpose(-1, -2) @ v
    assert rel_rms(s_rec, s_ref) <= TOL
    assert rel_rms(s_chunk, s_ref) <= TOL


@pytest.mark.parametrize("split", [1, 6, 10, 17])
@pytest.mark.parametrize("form", ["chunk", "recurrent"])
def test_continuation_from_state(split, form):
    """Running [0, split) then [split, T) from the carried state equals one pass, values and grads."""
    args = inputs(t=23)

    def fn(q, k, v, g):
        run = (lambda *a, state=None: chunk_gated_retention(*a, chunk_size=4, state=state)) if form == "chunk" \
            else recurrent_gated_retention
        o1, s = run(q[:, :, :split], k[:, :, :split], v[:, :, :split], g[:, :, :split])
        o2, _ = run(q[:, :, split:], k[:, :, split:], v[:, :, split:], g[:, :, split:], state=s)
        return torch.cat([o1, o2], dim=2)

    ref = outputs_and_grads(parallel_gated_retention, args)
    assert_close(outputs_and_grads(fn, args), ref)


@pytest.mark.parametrize("normalizer", [16.0, 1.0])
def test_token_by_token_equals_naive(normalizer):
    """Decoding: one recurrent call per token (its single-step path), the state carried, equals the
    oracle on values and gradients."""
    args = inputs(t=9, normalizer=normalizer)

    def fn(q, k, v, g):
        outs, s = [], None
        for i in range(q.shape[2]):
            o, s = recurrent_gated_retention(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1],
                                             g[:, :, i:i + 1], state=s)
            outs.append(o)
        return torch.cat(outs, dim=2)

    ref = outputs_and_grads(parallel_gated_retention, args)
    assert_close(outputs_and_grads(fn, args), ref)


def test_decay_is_used_and_bounded():
    """A sanity check that the oracle really decays: with g = -inf after the first step, only the
    diagonal term survives; and outputs stay finite for very strong decays."""
    q, k, v, _ = (x.detach() for x in inputs(t=9))
    g = torch.full(q.shape[:3], -1e4)
    o = parallel_gated_retention(q, k, v, g)
    diag = (q * k).sum(-1, keepdim=True) * v
    assert rel_rms(o, diag) <= TOL
    o_chunk, _ = chunk_gated_retention(q, k, v, g, chunk_size=4)
    assert torch.isfinite(o_chunk).all() and rel_rms(o_chunk, diag) <= TOL


def test_dtype_and_shapes():
    q, k, v, g = (x.detach() for x in inputs(t=5))
    o, s = chunk_gated_retention(q.bfloat16(), k.bfloat16(), v.bfloat16(), g, chunk_size=2)
    assert o.dtype == torch.bfloat16 and o.shape == v.shape
    assert s.dtype == torch.float32 and s.shape == (2, 3, 8, 6)
    o, s = recurrent_gated_retention(q[:, :, :0], k[:, :, :0], v[:, :, :0], g[:, :, :0])
    assert o.shape == (2, 3, 0, 6) and s.abs().sum() == 0
