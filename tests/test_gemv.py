"""Small-batch linear (GEMV): the fused C++ CPU kernel against the reference (F.linear) with the
relative RMS error (fla style), both ISA paths, K and N that are not multiples of 8, every row
count up to MAX_ROWS, leading dims, with and without bias; what the kernel does not take goes to the
reference; dispatch picks the kernel on CPU unless the reference is forced."""

import pytest
import torch

from cpp_fallback import assert_reference_after_failed_build
from tolerance import fp32_bound, matmul_condition, rel_rms
from latentlm.kernels import dispatch
from latentlm.kernels.gemv import cpu, small_batch_linear_cpp, small_batch_linear_reference


def case(lead, k, n, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, k, generator=g)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    return x, w, b


def bound(x, w, b):
    """The relative RMS error allowed for x W^T + b in fp32 (tests/tolerance.py): fp32_bound of its
    condition kappa, the bias a (K+1)-th term. Measured <= 1.6 u kappa (K 1 to 1029, N 1 to 680, 1 to 16
    rows, both paths, against the reference and float64); a flat bound would not do: kappa reaches ~1e4
    where N = 1 (a single dot product that cancels)."""
    if b is not None:
        x, w = torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1), torch.cat([w, b[:, None]], 1)
    return fp32_bound(matmul_condition(x, w.t()))


def exact(x, w, b):
    """The reference in float64: the fp32 kernels' error against it is their own rounding only."""
    return small_batch_linear_reference(x.double(), w.double(), None if b is None else b.double()).float()


@pytest.fixture
def ext():
    if cpu.EXTENSION.get() is None:
        pytest.skip("the C++ small-batch linear kernel could not be built here")
    return cpu.EXTENSION.get()


@pytest.mark.parametrize("avx2", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n", [1, 5, 680])
@pytest.mark.parametrize("k", [1, 7, 64, 257])
def test_kernel_equals_reference(ext, k, n, bias, avx2):
    for rows in range(1, cpu.MAX_ROWS + 1):
        x, w, b = case((rows,), k, n, bias, seed=rows)
        got = small_batch_linear_cpp(x, w, b, avx2=avx2)
        assert got.shape == (rows, n) and got.dtype == torch.float32
        assert rel_rms(got, exact(x, w, b)) <= bound(x, w, b), rows
        assert rel_rms(got, small_batch_linear_reference(x, w, b)) <= bound(x, w, b), rows


@pytest.mark.parametrize("avx2", [True, False])
@pytest.mark.parametrize("lead", [(1, 1), (2, 3), (1, 1, 1), (2, 2, 2)])
def test_leading_dims_and_views(ext, lead, avx2):
    x, w, b = case(lead, 300, 37, seed=3)
    got = small_batch_linear_cpp(x, w, b, avx2=avx2)
    assert got.shape == (*lead, 37) and rel_rms(got, exact(x, w, b)) <= bound(x, w, b)
    xt = torch.randn(300, 2, generator=torch.Generator().manual_seed(4)).t()  # x need not be contiguous
    assert rel_rms(small_batch_linear_cpp(xt, w, avx2=avx2), exact(xt, w, None)) <= bound(xt, w, None)


def test_large_matrix_and_weight_views(ext):
    x, w, b = case((3,), 1029, 517, seed=5)  # tails in both dims, long rows, many blocks per thread
    ref = exact(x, w, b)
    for avx2 in (True, False):
        assert rel_rms(small_batch_linear_cpp(x, w, b, avx2=avx2), ref) <= bound(x, w, b)
    flat = torch.randn(1000 * 256, generator=torch.Generator().manual_seed(11))  # weights as views of one buffer
    for offset, n in ((0, 768), (768 * 256 + 3, 100)):
        wv = flat[offset:offset + n * 256].view(n, 256)
        xv = torch.randn(1, 256, generator=torch.Generator().manual_seed(n))
        assert rel_rms(small_batch_linear_cpp(xv, wv), exact(xv, wv, None)) <= bound(xv, wv, None)


def test_prefetch_settings_do_not_change_the_result(ext):
    x, w, b = case((2,), 256, 700, seed=6)
    expect = ext.small_batch_linear(x, w, b, 2, True, 0, 0, 0)
    assert rel_rms(expect, exact(x, w, b)) <= bound(x, w, b)
    for prefetch in (64, 1024, 1 << 20):
        for min_parallel in (0, 1 << 40):  # two threads, one thread
            for far_bytes in (0, 1 << 40):  # prefetched into L2, into L1
                got = ext.small_batch_linear(x, w, b, 2, True, prefetch, min_parallel, 0, far_bytes)
                assert torch.equal(got, expect)


def test_thread_counts_agree(ext):
    x, w, b = case((4,), 256, 683, seed=7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = small_batch_linear_cpp(x, w, b)
        torch.set_num_threads(2)
        two = small_batch_linear_cpp(x, w, b)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_what_the_kernel_does_not_take_goes_to_the_reference(ext, monkeypatch):
    calls = []  # one per call the kernel computed (it answers None to inputs it does not take)
    real = ext.small_batch_linear

    def spy(*args):
        y = real(*args)
        if y is not None:
            calls.append(1)
        return y

    monkeypatch.setattr(cpu.EXTENSION, "_ext", type("Spy", (), {"small_batch_linear": staticmethod(spy)})())
    x, w, b = case((2,), 64, 10, seed=8)
    ref = small_batch_linear_reference(x, w, b)
    assert rel_rms(small_batch_linear_cpp(x, w, b), ref) <= bound(x, w, b)
    assert calls == [1]

    x64 = small_batch_linear_cpp(x.double(), w.double(), b.double())  # not fp32
    assert x64.dtype == torch.float64 and rel_rms(x64.float(), ref) <= bound(x, w, b)
    bf = small_batch_linear_cpp(x.bfloat16(), w.bfloat16(), b.bfloat16())
    assert bf.dtype == torch.bfloat16 and rel_rms(bf.float(), ref) <= 2e-2
    many = torch.randn(cpu.MAX_ROWS + 1, 64, generator=torch.Generator().manual_seed(9))  # too many rows
    assert rel_rms(small_batch_linear_cpp(many, w, b), small_batch_linear_reference(many, w, b)) <= bound(many, w, b)
    wt = w.t().contiguous().t()  # weight not contiguous
    assert rel_rms(small_batch_linear_cpp(x, wt, b), ref) <= bound(x, w, b)
    bs = torch.randn(20, generator=torch.Generator().manual_seed(10))[::2]  # bias not contiguous
    assert rel_rms(small_batch_linear_cpp(x, w, bs), small_batch_linear_reference(x, w, bs)) <= bound(x, w, bs)
    xg = x.clone().requires_grad_()  # an autograd graph to record
    y = small_batch_linear_cpp(xg, w, b)
    y.sum().backward()
    assert rel_rms(y.detach(), ref) <= bound(x, w, b) and torch.allclose(xg.grad, w.sum(0).expand(2, 64))
    wg = w.clone().requires_grad_()
    small_batch_linear_cpp(x, wg, b).sum().backward()
    assert torch.allclose(wg.grad, x.sum(0).expand(10, 64))
    assert calls == [1]
    with torch.no_grad():  # no graph to record: the kernel again
        assert rel_rms(small_batch_linear_cpp(xg, wg, b), ref) <= bound(x, w, b)
    assert calls == [1, 1]


def test_dispatch_picks_the_kernel_on_cpu(ext, monkeypatch):
    # the kernel where it has its AVX2 path (its scalar path is slower than F.linear)
    assert dispatch.choose("small_batch_linear", "cpu").name == ("cpp" if ext.supports_avx2() else "reference")
    assert dispatch.choose("small_batch_linear", "cuda").name == "reference"
    monkeypatch.setenv("LATENTLM_KERNELS", "reference")
    assert dispatch.choose("small_batch_linear", "cpu").name == "reference"


def test_fallback_when_the_build_fails(monkeypatch):
    x, w, b = case((3,), 40, 9)
    assert_reference_after_failed_build(monkeypatch, cpu, lambda: small_batch_linear_cpp(x, w, b),
                                        lambda: small_batch_linear_reference(x, w, b))
