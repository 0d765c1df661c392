"""YOCO gated-retention decoding step (rotary, data-dependent decay, state update, q S', head norm in
one op): the fused C++ CPU kernel against the PyTorch reference (relative RMS, fla style) over several
chained steps, both ISA paths, head sizes that are and are not multiples of the vector width, decay
logits far out on both sides (logsigmoid's stable form); the reference is the layer's old op-by-op
path bit for bit; what the kernel does not take goes to the reference."""

import pytest
import torch
import torch.nn.functional as F

from cpp_fallback import assert_reference_after_failed_build
from step_condition import condition
from tolerance import fp32_bound, rel_rms
from latentlm.backbones.config import BackboneConfig
from latentlm.backbones.layers import rotary_angles
from latentlm.backbones.yoco import GATE_LOGIT_NORMALIZER, GatedRetention
from latentlm.kernels import dispatch
from latentlm.kernels.gated_retention_step import cpu, gated_retention_step_cpp, gated_retention_step_reference

EPS = 1e-6
NORM = GATE_LOGIT_NORMALIZER
FAR = (-200.0, -30.0, 30.0, 200.0)  # logits where a naive log(sigmoid(x)) loses digits or gives -inf


def case(b, h, dh, seed=0, position=0):
    """qkv [B, 1, 3D], decay logits [B, 1, H] (some far out), the rotary tables at `position`,
    state [B, H, Dh, Dh], weight [Dh]."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, 1, 3 * h * dh, generator=g)
    logits = 4 * torch.randn(b, 1, h, generator=g)
    far = torch.tensor(FAR)[torch.randint(len(FAR), (b, 1, h), generator=g)]
    logits = torch.where(torch.rand(b, 1, h, generator=g) < 0.3, far, logits)
    cos, sin = rotary_angles(torch.tensor([position]), dh, 10000.0)
    state = torch.randn(b, h, dh, dh, generator=g)
    weight = 1 + 0.5 * torch.randn(dh, generator=g)
    return qkv, logits, cos, sin, state, weight


@pytest.fixture
def ext():
    if not cpu.available():
        pytest.skip("the C++ gated retention step kernel could not be built here")
    return cpu.EXTENSION.get()


def assert_step_close(got, ref, qkv, cos, sin):
    """A step's (o, S') against the reference's from the same state, in relative RMS (tests/tolerance.py):
    S' = gamma S + k^T v elementwise, within fp32_bound() (measured <= 1.5 u); o = q S' sums Dh terms
    that may cancel, within fp32_bound(kappa), kappa its condition (`step_condition`): ~sqrt(Dh) from a
    random state, up to ~1e4 from zeros or after a decay near 0 (logits far out), where the state has
    rank 1, 2... (measured <= 2.7 u kappa; the head norm after it does not add to that)."""
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
    chain of states against the reference's within fp32_bound() too (measured <= 2.2 u over 5 steps)."""
    *_, state, weight = case(b, h, dh)
    s_got = s_ref = state if with_state else None
    for step in range(5):
        qkv, logits, cos, sin, *_ = case(b, h, dh, seed=step + 1, position=7 + step)
        o_got, s_next = gated_retention_step_cpp(qkv, logits, cos, sin, s_got, weight, EPS, NORM, avx2=avx2)
        o_ref, s_same = gated_retention_step_reference(qkv, logits, cos, sin, s_got, weight, EPS, NORM)
        s_got, s_ref = s_next, gated_retention_step_reference(qkv, logits, cos, sin, s_ref, weight, EPS, NORM)[1]
        assert o_got.shape == (b, 1, h * dh) and s_got.shape == (b, h, dh, dh) and s_got.dtype == torch.float32
        assert_step_close((o_got, s_got), (o_ref, s_same), qkv, cos, sin)
        assert rel_rms(s_got, s_ref) <= fp32_bound(), step


@pytest.mark.parametrize("avx2", [True, False])
@pytest.mark.parametrize("normalizer", [NORM, 1.0, 3.0])
def test_decay_is_exp_of_logsigmoid_over_the_normalizer(ext, normalizer, avx2):
    """With k = 0 the step only decays: S' = gamma S, per (b, h). gamma must be exp(F.logsigmoid(x) /
    normalizer) to an ulp or two, far out on both sides included (x = -200: sigmoid underflows to 0
    in fp32, so log(sigmoid(x)) would give gamma = 0 where the stable form gives exp(-200 / 16))."""
    logits = torch.tensor([-1e4, -200.0, -80.0, -30.0, -1.0, 0.0, 1e-3, 1.0, 30.0, 80.0, 200.0, 1e4])
    b, h, dh = 1, logits.numel(), 8
    qkv = torch.randn(b, 1, 3 * h * dh)
    qkv[..., h * dh:2 * h * dh] = 0  # k = 0
    cos, sin = rotary_angles(torch.tensor([3]), dh, 10000.0)
    state = torch.ones(b, h, dh, dh)
    _, s = gated_retention_step_cpp(qkv, logits.view(b, 1, h), cos, sin, state, None, EPS, normalizer, avx2=avx2)
    want = torch.exp(F.logsigmoid(logits) / normalizer)
    gamma = s[0, :, 0, 0]
    assert torch.equal(s, gamma[None, :, None, None].expand_as(s))
    assert torch.allclose(gamma, want, rtol=4e-7, atol=0), (gamma, want)
    assert gamma[-2:].eq(1).all() and gamma[0] == 0  # 1 at the far positive end; exp(-1e4 / n) is 0
    if normalizer == NORM:
        assert gamma[1] > 0  # exp(-200 / 16): no underflow


def test_state_is_not_modified_in_place(ext):
    qkv, logits, cos, sin, state, weight = case(1, 4, 64)
    before = state.clone()
    _, new = gated_retention_step_cpp(qkv, logits, cos, sin, state, weight, EPS, NORM)
    assert torch.equal(state, before) and new.data_ptr() != state.data_ptr()


@pytest.mark.parametrize("avx2", [True, False])
@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_eps_and_no_weight(ext, eps, avx2):
    qkv, logits, cos, sin, state, weight = case(2, 4, 16)
    qkv, state = qkv * 1e-2, state * 1e-3  # o ~ 1e-4 per entry: eps matters
    for w in (weight, None):
        got = gated_retention_step_cpp(qkv, logits, cos, sin, state, w, eps, NORM, avx2=avx2)
        ref = gated_retention_step_reference(qkv, logits, cos, sin, state, w, eps, NORM)
        assert_step_close(got, ref, qkv, cos, sin)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_heads_spread_over_threads(ext, monkeypatch, threads):
    monkeypatch.setattr(cpu, "MIN_PARALLEL_FLOATS", 0)  # one head per work item
    qkv, logits, cos, sin, state, weight = case(3, 5, 32)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = gated_retention_step_cpp(qkv, logits, cos, sin, state, weight, EPS, NORM)
    finally:
        torch.set_num_threads(before)
    ref = gated_retention_step_reference(qkv, logits, cos, sin, state, weight, EPS, NORM)
    assert_step_close(got, ref, qkv, cos, sin)


def layer_and_inputs(seed=0):
    torch.manual_seed(seed)
    config = BackboneConfig(kind="yoco", d_model=64, n_layers=2, n_heads=4)
    layer = GatedRetention(config).eval()
    with torch.no_grad():
        layer.head_norm.weight.normal_()
        layer.decay.weight.mul_(20)  # logits of tens: decays from ~0.1 to ~1
    dh = config.head_dim
    x, state = torch.randn(2, 1, 64), torch.randn(2, 4, dh, dh)
    cos, sin = rotary_angles(torch.tensor([5]), dh, config.rope_theta)
    return layer, x, cos, sin, state


def test_reference_is_the_layers_op_by_op_path(monkeypatch):
    """With every op forced to its reference, a decoding step through the new op equals, bit for bit,
    the layer's op-by-op path (taken when a padding mask is given, here all True)."""
    monkeypatch.setenv("LATENTLM_KERNELS", "reference")
    layer, x, cos, sin, state = layer_and_inputs()
    with torch.no_grad():
        fused = layer(x, cos, sin, state, None)
        op_by_op = layer(x, cos, sin, state, torch.ones(2, 1, dtype=torch.bool))
    assert torch.equal(fused[0], op_by_op[0]) and torch.equal(fused[1], op_by_op[1])


def test_layer_decodes_through_the_kernel(ext, monkeypatch):
    """The layer's decoding step on CPU goes through the kernel and matches its op-by-op path."""
    calls = []
    real = ext.gated_retention_step
    monkeypatch.setattr(cpu.EXTENSION, "_ext", type("Spy", (), {"gated_retention_step": staticmethod(
        lambda *a: calls.append(1) or real(*a))})())
    layer, x, cos, sin, state = layer_and_inputs()
    with torch.no_grad():
        fused = layer(x, cos, sin, state, None)
        op_by_op = layer(x, cos, sin, state, torch.ones(2, 1, dtype=torch.bool))
    assert calls == [1]
    # the step's bounds (`assert_step_close`) for Dh = 16 from a random state, kappa ~2-3: output (through
    # the gate and out projection) measured <= 2.5e-7 over 300 seeds, the state <= 1 u
    assert rel_rms(fused[0], op_by_op[0]) <= fp32_bound(2) and rel_rms(fused[1], op_by_op[1]) <= fp32_bound()


def test_what_the_kernel_does_not_take_goes_to_the_reference(ext, monkeypatch):
    calls = []
    real = ext.gated_retention_step

    def spy(*a):
        out = real(*a)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(cpu.EXTENSION, "_ext", type("Spy", (), {"gated_retention_step": staticmethod(spy)})())
    qkv, logits, cos, sin, state, weight = case(2, 4, 16)
    gated_retention_step_cpp(qkv, logits, cos, sin, state, weight, EPS, NORM)
    gated_retention_step_cpp(qkv, logits, cos, sin, None, weight, EPS, NORM)  # no state: zeros
    assert calls == [True, True]

    args64 = [t.double() for t in (qkv, logits, cos, sin, state, weight)]
    got = gated_retention_step_cpp(*args64, EPS, NORM)  # not fp32
    ref = gated_retention_step_reference(*args64, EPS, NORM)
    assert got[0].dtype == torch.float64 and torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    q2, l2, c2, s2, *_ = case(2, 4, 16, seed=1, position=3)
    two = (torch.cat([qkv, q2], 1), torch.cat([logits, l2], 1), torch.cat([cos, c2]), torch.cat([sin, s2]))  # T = 2
    assert gated_retention_step_cpp(*two, state, weight, EPS, NORM)[0].shape == (2, 2, 64)
    strided = torch.randn(2, 1, 2 * qkv.shape[-1])[..., ::2]  # qkv not contiguous
    gated_retention_step_cpp(strided, logits, cos, sin, state, weight, EPS, NORM)
    gated_retention_step_cpp(qkv, logits, cos, sin, state.transpose(-1, -2), weight, EPS, NORM)  # state not contiguous
    strided_logits = torch.randn(2, 1, 8)[..., ::2]  # decay logits not contiguous
    gated_retention_step_cpp(qkv, strided_logits, cos, sin, state, weight, EPS, NORM)
    odd = case(2, 4, 15)
    gated_retention_step_cpp(odd[0], odd[1], odd[2][..., :15], odd[3][..., :15], *odd[4:], EPS, NORM)  # odd Dh
    assert calls == [True, True] + [False] * 6

    gated_retention_step_cpp(qkv, logits[:1], cos, sin, state, weight, EPS, NORM)  # logits of another batch
    with pytest.raises(ValueError, match="features per token"):  # logits [B, H, 1]: not taken, and the
        # reference refuses them too: read as 1 head, qkv does not split into 3 heads of Dh
        gated_retention_step_cpp(qkv, logits.view(2, 4, 1), cos, sin, state, weight, EPS, NORM)
    assert calls == [True, True] + [False] * 8

    qg, sg = qkv.clone().requires_grad_(), state.clone().requires_grad_()
    lg = logits.clone().requires_grad_()
    o, s = gated_retention_step_cpp(qg, lg, cos, sin, sg, weight, EPS, NORM)  # an autograd graph to record
    (o.square().sum() + s.sum()).backward()
    assert calls[-1] is False and torch.isfinite(qg.grad).all() and qg.grad.abs().sum() > 0
    assert torch.isfinite(sg.grad).all() and torch.isfinite(lg.grad).all() and lg.grad.abs().sum() > 0
    with torch.no_grad():  # no graph to record: the kernel takes it
        gated_retention_step_cpp(qg, lg, cos, sin, sg, weight, EPS, NORM)
    assert calls[-1] is True


def test_dispatch_picks_the_kernel_on_cpu(ext, monkeypatch):
    assert dispatch.choose("gated_retention_step", "cpu").name == "cpp"
    assert dispatch.choose("gated_retention_step", "cuda").name == "reference"
    monkeypatch.setenv("LATENTLM_KERNELS", "reference")
    assert dispatch.choose("gated_retention_step", "cpu").name == "reference"


def test_fallback_when_the_build_fails(monkeypatch):
    args = case(1, 4, 16)
    flat = lambda o, s: torch.cat([o.flatten(), s.flatten()])  # noqa: E731
    assert_reference_after_failed_build(monkeypatch, cpu, lambda: flat(*gated_retention_step_cpp(*args, EPS, NORM)),
                                        lambda: flat(*gated_retention_step_reference(*args, EPS, NORM)))
