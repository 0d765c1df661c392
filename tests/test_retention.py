"""The three forms of retention agree (fla style: relative RMS error against the naive oracle),
on outputs and on gradients, for T that are and are not multiples of the chunk size."""
import math

import pytest
import torch

from tolerance import rel_rms
from latentlm.kernels.retention import (
    chunk_retention,
    parallel_retention,
    recurrent_retention,
    retention_final_state,
)

TOL = 1e-5
H = 3
# RetNet's decays for 3 heads, gamma_h = 1 - 2^(-5-h), and strong ones (gamma = 0.5, 0.05, 0.9)
# so that the decay dominates within a few steps.
PAPER = [math.log1p(-(2.0 ** (-5 - h))) for h in range(H)]
STRONG = [math.log(0.5), math.log(0.05), math.log(0.9)]
DECAYS = {"paper": PAPER, "strong": STRONG}


def inputs(b=2, t=23, dk=8, dv=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, H, t, dk, generator=gen) * dk**-0.5
    k = torch.randn(b, H, t, dk, generator=gen)
    v = torch.randn(b, H, t, dv, generator=gen)
    return [x.requires_grad_() for x in (q, k, v)]


def outputs_and_grads(fn, args, seed=1):
    out = fn(*args)
    o = out[0] if isinstance(out, tuple) else out
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad((o * do).sum(), args)
    return [o.detach(), *grads]


def assert_close(got, ref, names=("o", "dq", "dk", "dv")):
    for name, a, b in zip(names, got, ref):
        err = rel_rms(a, b)
        assert err <= TOL, f"{name}: relative RMS error {err:.2e}"


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("t", [1, 16, 23, 41])
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 16, 64])
def test_chunk_equals_naive(chunk_size, t, decay):
    g = torch.tensor(DECAYS[decay])
    args = inputs(t=t)
    ref = outputs_and_grads(lambda q, k, v: parallel_retention(q, k, v, g), args)
    got = outputs_and_grads(lambda q, k, v: chunk_retention(q, k, v, g, chunk_size=chunk_size), args)
    assert_close(got, ref)


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("t", [1, 23, 41])
def test_recurrent_equals_naive(t, decay):
    g = torch.tensor(DECAYS[decay])
    args = inputs(b=3, t=t)
    ref = outputs_and_grads(lambda q, k, v: parallel_retention(q, k, v, g), args)
    got = outputs_and_grads(lambda q, k, v: recurrent_retention(q, k, v, g), args)
    assert_close(got, ref)


def test_oracle_is_the_definition():
    """The oracle against the formula written out term by term: o_n = sum_{m<=n} gamma^(n-m) (q_n.k_m) v_m."""
    g = torch.tensor(STRONG)
    q, k, v = (x.detach().double() for x in inputs(b=1, t=6))
    ref = torch.zeros_like(v)
    for h in range(H):
        gamma = math.exp(STRONG[h])
        for n in range(6):
            for m in range(n + 1):
                ref[0, h, n] += gamma ** (n - m) * (q[0, h, n] @ k[0, h, m]) * v[0, h, m]
    assert rel_rms(parallel_retention(q.float(), k.float(), v.float(), g).double(), ref) <= TOL


@pytest.mark.parametrize("decay", DECAYS)
def test_final_states_agree(decay):
    g = torch.tensor(DECAYS[decay])
    q, k, v = (x.detach() for x in inputs(t=23))
    s0 = torch.randn(2, H, 8, 6)
    _, s_rec = recurrent_retention(q, k, v, g, state=s0)
    # S_T = gamma^T S_0 + sum_m gamma^(T-1-m) k_m^T v_m, in float64
    gd = g.double()[:, None]
    w = ((22 - torch.arange(23)).double()[None] * gd).exp()
    s_ref = (k.double() * w[..., None]).transpose(-1, -2) @ v.double() + (23 * gd).exp()[..., None] * s0.double()
    assert rel_rms(s_rec.double(), s_ref) <= TOL
    for c in (1, 4, 5, 23, 64):
        _, s_chunk = chunk_retention(q, k, v, g, chunk_size=c, state=s0)
        assert rel_rms(s_chunk.double(), s_ref) <= TOL, c
    assert rel_rms(retention_final_state(k, v, g, s0).double(), s_ref) <= TOL


@pytest.mark.parametrize("split", [1, 6, 8, 17])
@pytest.mark.parametrize("form", ["chunk", "recurrent", "chunk_then_recurrent"])
def test_continuation_from_state(split, form):
    """Running [0, split) then [split, T) from the carried state equals one pass, values and grads."""
    g = torch.tensor(PAPER)
    args = inputs(t=23)

    def chunk(*a, state=None):
        return chunk_retention(*a, chunk_size=4, state=state)

    first, second = {"chunk": (chunk, chunk), "recurrent": (recurrent_retention, recurrent_retention),
                     "chunk_then_recurrent": (chunk, recurrent_retention)}[form]

    def fn(q, k, v):
        o1, s = first(q[:, :, :split], k[:, :, :split], v[:, :, :split], g)
        o2, _ = second(q[:, :, split:], k[:, :, split:], v[:, :, split:], g, state=s)
        return torch.cat([o1, o2], dim=2)

    ref = outputs_and_grads(lambda q, k, v: parallel_retention(q, k, v, g), args)
    assert_close(outputs_and_grads(fn, args), ref)


@pytest.mark.parametrize("decay", DECAYS)
def test_token_by_token_equals_naive(decay):
    """Decoding: one recurrent call per token (its single-step path), the state carried, equals the
    oracle on values and gradients."""
    g = torch.tensor(DECAYS[decay])
    args = inputs(t=9)

    def fn(q, k, v):
        outs, s = [], None
        for i in range(q.shape[2]):
            o, s = recurrent_retention(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1], g, state=s)
            outs.append(o)
        return torch.cat(outs, dim=2)

    ref = outputs_and_grads(lambda q, k, v: parallel_retention(q, k, v, g), args)
    assert_close(outputs_and_grads(fn, args), ref)


def test_long_sequence_is_finite():
    """Decay powers over thousands of steps underflow to 0, never inf or NaN, in value and grad."""
    t = 1500
    g = torch.tensor([math.log(1e-9), -0.5, PAPER[0]])  # gamma^1499 underflows for the first two
    q, k, v = inputs(b=1, t=t, dk=4, dv=4)
    o = parallel_retention(q, k, v, g)
    o.sum().backward()
    assert torch.isfinite(o).all() and all(torch.isfinite(x.grad).all() for x in (q, k, v))
    o_chunk, s = chunk_retention(q, k, v, g, chunk_size=64)
    assert torch.isfinite(s).all()
    assert rel_rms(o_chunk, o) <= TOL


def test_dtype_and_shapes():
    g = torch.tensor(PAPER)
    q, k, v = (x.detach() for x in inputs(t=5))
    for fn in (lambda *a: chunk_retention(*a, chunk_size=2), recurrent_retention):
        o, s = fn(q.bfloat16(), k.bfloat16(), v.bfloat16(), g)
        assert o.dtype == torch.bfloat16 and o.shape == v.shape
        assert s.dtype == torch.float32 and s.shape == (2, H, 8, 6)
    assert parallel_retention(q.bfloat16(), k.bfloat16(), v.bfloat16(), g).dtype == torch.bfloat16
    for fn in (lambda *a: chunk_retention(*a, chunk_size=2), recurrent_retention):
        o, s = fn(q[:, :, :0], k[:, :, :0], v[:, :, :0], g)
        assert o.shape == (2, H, 0, 6) and s.abs().sum() == 0


def test_bad_arguments():
    q, k, v = (x.detach() for x in inputs(t=5))
    with pytest.raises(ValueError, match="log_decay"):
        parallel_retention(q, k, v, torch.zeros(2, H, 5))
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_retention(q, k, v, torch.zeros(H), chunk_size=0)
    with pytest.raises(ValueError, match="expected"):
        recurrent_retention(q, k[..., :4], v, torch.zeros(H))
