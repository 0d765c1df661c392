"""RetNet decoding step (rotary, state update, q S', head norm in one op): the fused C++ CPU kernel
against the PyTorch reference (relative RMS, fla style) over several chained steps, both ISA paths,
head sizes that are and are not multiples of the vector width; the reference is the layer's old
op-by-op path bit for bit; what the kernel does not take goes to the reference."""

import pytest
import torch

from cpp_fallback import assert_reference_after_failed_build
from step_condition import condition
from tolerance import fp32_bound, rel_rms
from latentlm.backbones.config import BackboneConfig
from latentlm.backbones.layers import rotary_angles
from latentlm.backbones.retnet import MultiScaleRetention, retnet_log_decay
from latentlm.kernels import dispatch
from latentlm.kernels.retention_step import cpu, retention_step_cpp, retention_step_reference

EPS = 1e-6


def case(b, h, dh, seed=0, position=0):
    """qkv [B, 1, 3D], the rotary tables at `position`, log_decay [H], state [B, H, Dh, Dh], weight [Dh]."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, 1, 3 * h * dh, generator=g)
    cos, sin = rotary_angles(torch.tensor([position]), dh, 10000.0)
    state = torch.randn(b, h, dh, dh, generator=g)
    weight = 1 + 0.5 * torch.randn(dh, generator=g)
    return qkv, cos, sin, retnet_log_decay(h), state, weight


@pytest.fixture
def ext():
    if not cpu.available():
        pytest.skip("the C++ retention step kernel could not be built here")
    return cpu.EXTENSION.get()


def assert_step_close(got, ref, qkv, cos, sin):
    """A step's (o, S') against the reference's from the same state, in relative RMS (tests/tolerance.py):
    S' = gamma S + k^T v elementwise, within fp32_bound() (measured <= 1.4 u); o = q S' sums Dh terms
    that may cancel, within fp32_bound(kappa), kappa its condition (`step_condition`): ~sqrt(Dh) from a
    random state, up to ~1e4 from zeros, whose first states have rank 1, 2... (measured <= 2.7 u kappa;
    the head norm after it does not add to that)."""
    (o, s), (o_ref, s_ref) = got, ref
    assert rel_rms(s, s_ref) <= fp32_bound()
    kappa = condition(qkv, cos, sin, s_ref)
    assert rel_rms(o, o_ref) <= fp32_bound(kappa), kappa


@pytest.mark.parametrize("avx2", [True, False])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("h", [1, 4])
@pytest.mark.parametrize("dh", [8, 64, 66, 128])
def test_kernel_equals_reference_over_chained_steps(ext, dh, h, b, with_state, avx2):
    """Five steps, each feeding the returned state back; `assert_step_close` on each, and the kernel's
    chain of states against the reference's within fp32_bound() too (measured <= 2.1 u over 5 steps)."""
    _, _, _, log_decay, state, weight = case(b, h, dh)
    s_got = s_ref = state if with_state else None
    for step in range(5):
        qkv, cos, sin, *_ = case(b, h, dh, seed=step + 1, position=7 + step)
        o_got, s_next = retention_step_cpp(qkv, cos, sin, log_decay, s_got, weight, EPS, avx2=avx2)
        o_ref, s_same = retention_step_reference(qkv, cos, sin, log_decay, s_got, weight, EPS)
        s_got, s_ref = s_next, retention_step_reference(qkv, cos, sin, log_decay, s_ref, weight, EPS)[1]
        assert o_got.shape == (b, 1, h * dh) and s_got.shape == (b, h, dh, dh) and s_got.dtype == torch.float32
        assert_step_close((o_got, s_got), (o_ref, s_same), qkv, cos, sin)
        assert rel_rms(s_got, s_ref) <= fp32_bound(), step


def test_state_is_not_modified_in_place(ext):
    qkv, cos, sin, log_decay, state, weight = case(1, 4, 64)
    before = state.clone()
    _, new = retention_step_cpp(qkv, cos, sin, log_decay, state, weight, EPS)
    assert torch.equal(state, before) and new.data_ptr() != state.data_ptr()


@pytest.mark.parametrize("avx2", [True, False])
@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_eps_and_no_weight(ext, eps, avx2):
    qkv, cos, sin, log_decay, state, weight = case(2, 4, 16)
    qkv, state = qkv * 1e-2, state * 1e-3  # o ~ 1e-4 per entry: eps matters
    for w in (weight, None):
        got = retention_step_cpp(qkv, cos, sin, log_decay, state, w, eps, avx2=avx2)
        ref = retention_step_reference(qkv, cos, sin, log_decay, state, w, eps)
        assert_step_close(got, ref, qkv, cos, sin)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_heads_spread_over_threads(ext, monkeypatch, threads):
    monkeypatch.setattr(cpu, "MIN_PARALLEL_FLOATS", 0)  # one head per work item
    qkv, cos, sin, log_decay, state, weight = case(3, 5, 32)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = retention_step_cpp(qkv, cos, sin, log_decay, state, weight, EPS)
    finally:
        torch.set_num_threads(before)
    ref = retention_step_reference(qkv, cos, sin, log_decay, state, weight, EPS)
    assert_step_close(got, ref, qkv, cos, sin)


def test_reference_is_the_layers_op_by_op_path(monkeypatch):
    """With every op forced to its reference, a decoding step through the new op equals, bit for bit,
    the layer's op-by-op path (taken when a padding mask is given, here all True)."""
    monkeypatch.setenv("LATENTLM_KERNELS", "reference")
    torch.manual_seed(0)
    config = BackboneConfig(kind="retnet", d_model=64, n_layers=1, n_heads=4)
    layer = MultiScaleRetention(config).eval()
    with torch.no_grad():
        layer.head_norm.weight.normal_()
    dh = config.head_dim
    x, state = torch.randn(2, 1, 64), torch.randn(2, 4, dh, dh)
    cos, sin = rotary_angles(torch.tensor([5]), dh, config.rope_theta)
    log_decay = retnet_log_decay(4)
    with torch.no_grad():
        fused = layer(x, cos, sin, log_decay, state, None, "recurrent")
        op_by_op = layer(x, cos, sin, log_decay, state, torch.ones(2, 1, dtype=torch.bool), "recurrent")
    assert torch.equal(fused[0], op_by_op[0]) and torch.equal(fused[1], op_by_op[1])


def test_what_the_kernel_does_not_take_goes_to_the_reference(ext, monkeypatch):
    calls = []
    real = ext.retention_step

    def spy(*a):
        out = real(*a)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(cpu.EXTENSION, "_ext", type("Spy", (), {"retention_step": staticmethod(spy)})())
    qkv, cos, sin, log_decay, state, weight = case(2, 4, 16)
    retention_step_cpp(qkv, cos, sin, log_decay, state, weight, EPS)
    retention_step_cpp(qkv, cos, sin, log_decay, None, weight, EPS)  # no state: zeros
    assert calls == [True, True]

    args64 = [t.double() for t in (qkv, cos, sin, log_decay, state, weight)]
    got = retention_step_cpp(*args64, EPS)  # not fp32
    ref = retention_step_reference(*args64, EPS)
    assert got[0].dtype == torch.float64 and torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    q2, c2, s2, *_ = case(2, 4, 16, position=3)
    two = (torch.cat([qkv, q2], 1), torch.cat([cos, c2]), torch.cat([sin, s2]))  # T = 2
    assert retention_step_cpp(*two, log_decay, state, weight, EPS)[0].shape == (2, 2, 64)
    strided = torch.randn(2, 1, 2 * qkv.shape[-1])[..., ::2]  # qkv not contiguous
    retention_step_cpp(strided, cos, sin, log_decay, state, weight, EPS)
    retention_step_cpp(qkv, cos, sin, log_decay, state.transpose(-1, -2), weight, EPS)  # state not contiguous
    odd = case(2, 4, 15)
    retention_step_cpp(odd[0], odd[1][..., :15], odd[2][..., :15], *odd[3:], EPS)  # odd Dh (tables of 16, cut)
    assert calls == [True, True] + [False] * 5

    qg, sg = qkv.clone().requires_grad_(), state.clone().requires_grad_()
    o, s = retention_step_cpp(qg, cos, sin, log_decay, sg, weight, EPS)  # an autograd graph to record
    (o.square().sum() + s.sum()).backward()
    assert calls[-1] is False and torch.isfinite(qg.grad).all() and qg.grad.abs().sum() > 0
    assert torch.isfinite(sg.grad).all()
    with torch.no_grad():  # no graph to record: the kernel takes it
        retention_step_cpp(qg, cos, sin, log_decay, sg, weight, EPS)
    assert calls[-1] is True


def test_dispatch_picks_the_kernel_on_cpu(ext, monkeypatch):
    assert dispatch.choose("retention_step", "cpu").name == "cpp"
    assert dispatch.choose("retention_step", "cuda").name == "reference"
    monkeypatch.setenv("LATENTLM_KERNELS", "reference")
    assert dispatch.choose("retention_step", "cpu").name == "reference"


def test_fallback_when_the_build_fails(monkeypatch):
    args = case(1, 4, 16)
    flat = lambda o, s: torch.cat([o.flatten(), s.flatten()])  # noqa: E731
    assert_reference_after_failed_build(monkeypatch, cpu, lambda: flat(*retention_step_cpp(*args, EPS)),
                                        lambda: flat(*retention_step_reference(*args, EPS)))
