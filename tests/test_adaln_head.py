"""The diffusion head's sampling loop of one latent in one call: the fused C++ CPU kernel against the
reference (naive.py, in fp32 and in float64) with the relative RMS error (fla style), guided and not,
rows 1-8, widths 32 and 256, depth 1-3, latent dims 4 and 16, 1-20 steps, both solver coefficient sets
and both ISA paths; what the kernel does not take goes to the reference; dispatch picks it on CPU."""

import itertools

import pytest
import torch

from cpp_fallback import assert_reference_after_failed_build
from tolerance import U_FP32, rel_rms
from latentlm.diffusion_head import DiffusionHead, DiffusionHeadConfig
from latentlm.kernels import dispatch
from latentlm.kernels.adaln_head import HeadWeights, adaln_head_sample_cpp, adaln_head_sample_reference, cpu
from latentlm.solver_recurrence import solver_coefficients

# Relative RMS bound of a whole latent's loop, two fp32 evaluations against each other (tests/tolerance.py).
# Per step the loop is ~2L + 2 sums of up to W terms (random weights: little cancellation), two LayerNorms
# per block, SiLU's exp (a polynomial on the AVX2 path), the guidance mix (cfg 2.5 scales the cond - uncond
# difference) and the solver's affine step (epsilon's first step, 13.5 x - 12.5 out, cancels); the solver
# damps what earlier steps got wrong, so the error does not grow with the steps (20 no worse than 5).
# Measured, 6 seeds x rows 1-8 x guided or not x the shapes below x 1, 5, 20 steps x both coefficient sets
# x both paths: kernel vs fp32 reference <= 26 u, kernel vs float64 <= 21 u, fp32 reference vs float64
# <= 15 u. The bound is 6x the worst; a wrong coefficient, step or modulation moves the result by >= 1e-3.
LOOP = 160 * U_FP32  # ~9.5e-6

SHAPES = [(4, 32, 1), (16, 32, 2), (4, 256, 3), (16, 256, 3)]  # (latent dim D, width W, depth L)


def coefficients(steps, prediction_type="v_prediction"):
    head = DiffusionHead(4, 8, DiffusionHeadConfig(prediction_type=prediction_type))
    return solver_coefficients(head.sampler(), steps)


def case(rows, d, w, depth, coefs, guided, seed=0):
    """Random weights at unit gain, modulations of 0.3, biases of 0.2, noise: (x, mods, coefs, weights)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    weights = HeadWeights(r(w, d) * d**-0.5, r(w) * 0.2, r(depth, w, w) * w**-0.5, r(depth, w) * 0.2,
                          r(depth, w, w) * w**-0.5, r(depth, w) * 0.2, r(d, w) * w**-0.5, r(d) * 0.2,
                          (1e-6,) * (depth + 1))
    n = 2 * rows if guided else rows
    return r(rows, d), r(coefs.shape[0], n, (3 * depth + 2) * w) * 0.3, coefs, weights


def exact(x, mods, coefs, weights, cfg_scale, guided):
    """The reference in float64: the kernel's error against it is its own rounding only."""
    w64 = HeadWeights(*(t.double() for t in weights[:8]), weights.eps)
    return adaln_head_sample_reference(x.double(), mods.double(), coefs.double(), w64, cfg_scale, guided).float()


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops (conftest)


@pytest.fixture
def ext():
    if cpu.EXTENSION.get() is None:
        pytest.skip("the C++ diffusion-head kernel could not be built here")
    return cpu.EXTENSION.get()


@pytest.mark.parametrize("d, w, depth", SHAPES)
@pytest.mark.parametrize("guided", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 3, 8])
def test_kernel_equals_reference(ext, rows, guided, d, w, depth):
    for steps, pt, seed in itertools.product((1, 5, 20), ("v_prediction", "epsilon"), (0, 1)):
        args = case(rows, d, w, depth, coefficients(steps, pt), guided, seed)
        ref, ref64 = adaln_head_sample_reference(*args, 2.5, guided), exact(*args, 2.5, guided)
        for avx2 in (True, False):
            got = adaln_head_sample_cpp(*args, 2.5, guided, avx2=avx2)
            assert got.shape == (rows, d) and got.dtype == torch.float32
            assert rel_rms(got, ref) <= LOOP, (steps, pt, seed, avx2)
            assert rel_rms(got, ref64) <= LOOP, (steps, pt, seed, avx2)


def test_the_kernel_is_deterministic_and_leaves_its_inputs(ext):
    x, mods, coefs, weights = case(2, 16, 256, 3, coefficients(20), True, seed=3)
    before = [t.clone() for t in (x, mods, coefs, *weights[:8])]
    a = adaln_head_sample_cpp(x, mods, coefs, weights, 3.0, True)
    b = adaln_head_sample_cpp(x, mods, coefs, weights, 3.0, True)
    assert torch.equal(a, b)
    assert all(torch.equal(t, u) for t, u in zip(before, (x, mods, coefs, *weights[:8])))


def test_what_the_kernel_does_not_take_goes_to_the_reference(ext, monkeypatch):
    calls = []  # one per call the kernel computed (it answers None to inputs it does not take)
    real = ext.adaln_head_sample

    def spy(*args):
        y = real(*args)
        if y is not None:
            calls.append(1)
        return y

    monkeypatch.setattr(cpu.EXTENSION, "_ext", type("Spy", (), {"adaln_head_sample": staticmethod(spy)})())
    x, mods, coefs, weights = case(2, 4, 32, 2, coefficients(5), True, seed=4)
    ref = adaln_head_sample_reference(x, mods, coefs, weights, 2.0, True)
    assert rel_rms(adaln_head_sample_cpp(x, mods, coefs, weights, 2.0, True), ref) <= LOOP and calls == [1]

    w64 = HeadWeights(*(t.double() for t in weights[:8]), weights.eps)
    y64 = adaln_head_sample_cpp(x.double(), mods.double(), coefs.double(), w64, 2.0, True)  # not fp32
    assert y64.dtype == torch.float64 and rel_rms(y64, ref) <= LOOP
    strided = mods.transpose(0, 1).contiguous().transpose(0, 1)  # mods not contiguous
    assert rel_rms(adaln_head_sample_cpp(x, strided, coefs, weights, 2.0, True), ref) <= LOOP
    with pytest.raises(RuntimeError):  # 2R rows of modulations for R unguided rows: refused, and the reference fails
        adaln_head_sample_cpp(x, mods, coefs, weights, 2.0, False)
    many = case(cpu.MAX_ROWS // 2 + 1, 4, 32, 2, coefficients(5), True, seed=5)  # too many rows
    assert rel_rms(adaln_head_sample_cpp(*many, 2.0, True), adaln_head_sample_reference(*many, 2.0, True)) <= LOOP
    assert calls == [1]
    x_grad = x.clone().requires_grad_()  # an autograd graph to record: the reference, gradients reach it
    y = adaln_head_sample_cpp(x_grad, mods, coefs, weights, 2.0, True)
    y.sum().backward()
    assert rel_rms(y.detach(), ref) <= LOOP and x_grad.grad is not None and calls == [1]
    with torch.no_grad():
        assert rel_rms(adaln_head_sample_cpp(x_grad, mods, coefs, weights, 2.0, True), ref) <= LOOP
    assert calls == [1, 1]


def test_dispatch_picks_the_kernel_on_cpu(ext, monkeypatch):
    assert dispatch.choose("adaln_head_sample", "cpu").name == "cpp"
    assert dispatch.choose("adaln_head_sample", "cuda").name == "reference"
    monkeypatch.setenv("LATENTLM_KERNELS", "reference")
    assert dispatch.choose("adaln_head_sample", "cpu").name == "reference"


def test_fallback_when_the_build_fails(monkeypatch):
    args = case(1, 4, 32, 1, coefficients(3), True, seed=6)
    assert_reference_after_failed_build(monkeypatch, cpu, lambda: adaln_head_sample_cpp(*args, 2.0, True),
                                        lambda: adaln_head_sample_reference(*args, 2.0, True))
