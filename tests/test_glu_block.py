"""The feed-forward block op (RMSNorm, GLU, residual in one call): the fused C++ CPU kernel against the
reference with the relative RMS error (fla style), both activations and ISA paths, sizes that are not
multiples of 8, every row count up to MAX_ROWS; what the kernel does not take goes to the reference;
the backbones' blocks route through it and give what their modules give."""

import pytest
import torch

from cpp_fallback import assert_reference_after_failed_build
from tolerance import U_FP32, rel_rms
from latentlm.backbones import BackboneConfig, build_backbone
from latentlm.backbones.layers import residual_ffn
from latentlm.kernels import dispatch
from latentlm.kernels.gemv import cpu as gemv_cpu
from latentlm.kernels.glu_block import ACTIVATIONS, cpu, glu_block_cpp, glu_block_reference


def case(lead, d, f, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, d, generator=g)
    norm = 0.5 + torch.rand(d, generator=g)
    w_gate, w_up = (torch.randn(f, d, generator=g) * d**-0.5 for _ in range(2))
    w_down = torch.randn(d, f, generator=g) * f**-0.5
    return tuple(t.to(dtype) for t in (x, norm, w_gate, w_up, w_down))


# Relative RMS bounds in fp32 (tests/tolerance.py). The block is a chain of ~10 roundings per element (the
# norm, the activation's exp, the products, the residual) around three sums of small condition here
# (random weights: kappa <= ~12), ReLU^2 doubling the relative error of what it squares. Measured over 8
# seeds x 1-16 rows x both paths and activations, against float64 and the fp32 reference: the whole
# output within 15.5 u, the feed-forward part alone within 58 u (D = 1 with ReLU^2: the norm of a single
# value; <= 13 u from D = 7). The bounds are 10x those; a missed or doubled term is off by >= 1e-3.
TOTAL = 160 * U_FP32  # ~9.5e-6
PART = 640 * U_FP32  # ~3.8e-5


def exact(x, norm, w_gate, w_up, w_down, act):
    """The reference in float64: the kernel's error against it is its own rounding only."""
    return glu_block_reference(x.double(), norm.double(), 1e-6, w_gate.double(), w_up.double(), w_down.double(),
                               act).float()


@pytest.fixture
def ext():
    if cpu.EXTENSION.get() is None:
        pytest.skip("the C++ feed-forward block kernel could not be built here")
    return cpu.EXTENSION.get()


@pytest.mark.parametrize("avx2", [True, False])
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("d, f", [(1, 1), (7, 19), (64, 170), (256, 683)])
def test_kernel_equals_reference(ext, d, f, act, avx2):
    for rows in range(1, cpu.MAX_ROWS + 1):
        x, norm, wg, wu, wd = case((rows,), d, f, seed=rows)
        got = glu_block_cpp(x, norm, 1e-6, wg, wu, wd, act, avx2=avx2)
        ref = exact(x, norm, wg, wu, wd, act)
        assert got.shape == x.shape and got.dtype == torch.float32
        assert rel_rms(got, ref) <= TOTAL, rows
        part, ref_part = got - x, ref - x  # the feed-forward part alone, not hidden by x
        if ref_part.abs().max() > 0:  # (ReLU^2 with one gate unit can be 0 for every row)
            assert rel_rms(part, ref_part) <= PART, rows
        else:
            assert part.abs().max() <= 1e-6, rows
        assert rel_rms(got, glu_block_reference(x, norm, 1e-6, wg, wu, wd, act)) <= TOTAL, rows


@pytest.mark.parametrize("lead", [(1, 1), (2, 3), (1, 1, 1)])
def test_leading_dims_eps_and_threads(ext, lead):
    x, norm, wg, wu, wd = case(lead, 96, 200, seed=3)
    ref = glu_block_reference(x, norm, 0.5, wg, wu, wd, "silu")
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(glu_block_cpp(x, norm, 0.5, wg, wu, wd, "silu"))
    finally:
        torch.set_num_threads(threads)
    assert outs[0].shape == (*lead, 96) and rel_rms(outs[0], ref) <= TOTAL
    assert torch.equal(outs[0], outs[1])


def test_prefetching_into_l2_or_l1_gives_the_same_result(ext, monkeypatch):
    """Weights of gemv.FAR_WEIGHT_BYTES or more are prefetched into L2, smaller ones into L1: bit for bit
    the same block."""
    x, norm, wg, wu, wd = case((3,), 256, 683, seed=4)
    outs = []
    for far_bytes in (0, 1 << 40):
        monkeypatch.setattr(gemv_cpu, "FAR_WEIGHT_BYTES", far_bytes)
        outs.append(glu_block_cpp(x, norm, 1e-6, wg, wu, wd, "silu"))
    assert torch.equal(outs[0], outs[1]) and rel_rms(outs[0], exact(x, norm, wg, wu, wd, "silu")) <= TOTAL


def test_what_the_kernel_does_not_take_goes_to_the_reference(ext, monkeypatch):
    calls = []  # one per call the kernel computed (it answers None to inputs it does not take)
    real = ext.glu_block

    def spy(*args):
        y = real(*args)
        if y is not None:
            calls.append(1)
        return y

    monkeypatch.setattr(cpu.EXTENSION, "_ext", type("Spy", (), {"glu_block": staticmethod(spy)})())
    x, norm, wg, wu, wd = case((2,), 32, 48, seed=8)
    ref = glu_block_reference(x, norm, 1e-6, wg, wu, wd)
    assert rel_rms(glu_block_cpp(x, norm, 1e-6, wg, wu, wd), ref) <= TOTAL and calls == [1]

    y64 = glu_block_cpp(*(t.double() for t in (x, norm)), 1e-6, wg.double(), wu.double(), wd.double())
    assert y64.dtype == torch.float64 and rel_rms(y64.float(), ref) <= TOTAL  # not fp32
    many = torch.randn(cpu.MAX_ROWS + 1, 32, generator=torch.Generator().manual_seed(9))  # too many rows
    assert rel_rms(glu_block_cpp(many, norm, 1e-6, wg, wu, wd), glu_block_reference(many, norm, 1e-6, wg, wu, wd)) <= TOTAL
    xt = torch.randn(32, 2, generator=torch.Generator().manual_seed(4)).t()  # x not contiguous
    assert rel_rms(glu_block_cpp(xt, norm, 1e-6, wg, wu, wd), glu_block_reference(xt, norm, 1e-6, wg, wu, wd)) <= TOTAL
    assert rel_rms(glu_block_cpp(x, norm, 1e-6, wg.t().contiguous().t(), wu, wd), ref) <= TOTAL  # weight strided
    assert calls == [1]
    wg_grad = wg.clone().requires_grad_()  # an autograd graph to record: the reference, gradients reach it
    y = glu_block_cpp(x, norm, 1e-6, wg_grad, wu, wd)
    y.sum().backward()
    assert rel_rms(y.detach(), ref) <= TOTAL and wg_grad.grad is not None and wg_grad.grad.abs().sum() > 0
    assert calls == [1]
    with torch.no_grad():
        assert rel_rms(glu_block_cpp(x, norm, 1e-6, wg_grad, wu, wd), ref) <= TOTAL
    assert calls == [1, 1]
    with pytest.raises(ValueError, match="activation must be one of"):
        glu_block_cpp(x, norm, 1e-6, wg, wu, wd, "gelu")


def test_dispatch_picks_the_kernel_on_cpu(ext, monkeypatch):
    assert dispatch.choose("glu_block", "cpu").name == ("cpp" if ext.supports_avx2() else "reference")
    assert dispatch.choose("glu_block", "cuda").name == "reference"
    monkeypatch.setenv("LATENTLM_KERNELS", "reference")
    assert dispatch.choose("glu_block", "cpu").name == "reference"


def test_fallback_when_the_build_fails(monkeypatch):
    x, norm, wg, wu, wd = case((3,), 40, 9)
    assert_reference_after_failed_build(monkeypatch, cpu, lambda: glu_block_cpp(x, norm, 1e-6, wg, wu, wd),
                                        lambda: glu_block_reference(x, norm, 1e-6, wg, wu, wd))


@pytest.mark.parametrize("kind, ffn_act, ternary", [("transformer", "swiglu", False), ("retnet", "relu2", False),
                                                    ("bitnet", "relu2", True)])
@torch.no_grad()
def test_blocks_route_through_the_op_and_match_their_modules(kind, ffn_act, ternary, monkeypatch):
    config = BackboneConfig(kind=kind, d_model=64, n_layers=1, n_heads=2, ffn_act=ffn_act, ternary=ternary)
    torch.manual_seed(0)
    block = build_backbone(config).blocks[0]
    x = torch.randn(1, 1, 64)
    got = residual_ffn(x, block.mlp_norm, block.mlp)
    assert rel_rms(got, x + block.mlp(block.mlp_norm(x))) <= TOTAL
    seen = []
    real = dispatch.choose

    def spy(op, device):
        seen.append(op)
        return real(op, device)

    monkeypatch.setattr(dispatch, "choose", spy)
    residual_ffn(x, block.mlp_norm, block.mlp)
    assert ("glu_block" in seen) == (not ternary)  # BitLinear quantises its inputs: module by module
