"""RMSNorm: the fused C++ CPU kernel against the PyTorch reference (relative RMS, fla style), both
ISA paths, widths that are and are not multiples of the vector width; training goes to the reference."""

import pytest
import torch

from cpp_fallback import assert_reference_after_failed_build
from tolerance import rel_rms
from latentlm.backbones.layers import RMSNorm
from latentlm.kernels import dispatch
from latentlm.kernels.rms_norm import cpu, rms_norm_cpp, rms_norm_reference


@pytest.fixture
def ext():
    if not cpu.available():
        pytest.skip("the C++ RMSNorm kernel could not be built here")
    return cpu.EXTENSION.get()


@pytest.mark.parametrize("avx2", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 256), (3, 5, 64), (2, 7), (4, 1, 3, 17), (300, 128), (1, 1)])
@pytest.mark.parametrize("weighted", [True, False])
def test_kernel_equals_reference(ext, shape, avx2, weighted):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * 3
    w = torch.randn(shape[-1], generator=g) if weighted else None
    got, ref = rms_norm_cpp(x, w, 1e-6, avx2=avx2), rms_norm_reference(x, w, 1e-6)
    assert got.shape == x.shape and rel_rms(got, ref) <= 1e-6


def test_eps_matters_for_tiny_rows(ext):
    x = torch.full((2, 8), 1e-4)
    for eps in (1e-6, 1e-2):
        assert rel_rms(rms_norm_cpp(x, None, eps), rms_norm_reference(x, None, eps)) <= 1e-6


def test_what_the_kernel_does_not_take_goes_to_the_reference(ext, monkeypatch):
    calls = []
    real = ext.rms_norm
    monkeypatch.setattr(cpu.EXTENSION, "_ext", type("Spy", (), {
        "rms_norm": staticmethod(lambda *a: calls.append(1) or real(*a))})())
    x, w = torch.randn(3, 16), torch.randn(16)
    rms_norm_cpp(x, w, 1e-6)
    assert calls == [1]
    assert rms_norm_cpp(x.double(), w.double(), 1e-6).dtype == torch.float64  # not fp32
    rms_norm_cpp(x.t().contiguous().t(), w, 1e-6)  # not contiguous
    rms_norm_cpp(torch.empty(0, 16), w, 1e-6)  # empty
    xg = x.clone().requires_grad_()
    rms_norm_cpp(xg, w, 1e-6).sum().backward()  # an autograd graph to record
    assert calls == [1] and torch.isfinite(xg.grad).all()


def test_module_trains_through_the_reference_and_infers_through_the_kernel(ext):
    norm = RMSNorm(32)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(4, 32, requires_grad=True)
    norm(x).square().sum().backward()
    assert norm.weight.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        assert rel_rms(norm(x), rms_norm_reference(x, norm.weight, norm.eps)) <= 1e-6


def test_dispatch_picks_the_kernel_on_cpu(ext, monkeypatch):
    assert dispatch.choose("rms_norm", "cpu").name == "cpp"
    assert dispatch.choose("rms_norm", "cuda").name == "reference"
    monkeypatch.setenv("LATENTLM_KERNELS", "reference")
    assert dispatch.choose("rms_norm", "cpu").name == "reference"


def test_fallback_when_the_build_fails(monkeypatch):
    x, w = torch.randn(2, 8), torch.randn(8)
    assert_reference_after_failed_build(monkeypatch, cpu, lambda: rms_norm_cpp(x, w, 1e-6),
                                        lambda: rms_norm_reference(x, w, 1e-6))
