"""The fused C++ CPU ternary matmul (kernels/ternary/cpu.py): bit-exact to the reference on every
ISA path this CPU has, cached build, dispatch, and the fallback when it cannot be built."""
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from latentlm.kernels import dispatch
from latentlm.kernels.ternary import (
    BLOCK_SIZE,
    absmean_ternary,
    cpu,
    cpu_isa,
    matmul,
    pack,
    pack_ternary,
    quantize_activations,
    ternary_matmul_int32,
    ternary_matmul_reference,
    unpack_ternary,
)

# (M, N, K, block size): GEMV and GEMM, odd N, K off the block size, tails shorter than one
# SIMD chunk (32 / 64 packed bytes = 128 / 256 weights), and more tokens than one tile of 4.
SHAPES = [
    (1, 1, 1, BLOCK_SIZE),
    (1, 7, 300, BLOCK_SIZE),
    (1, 33, 1000, 64),
    (1, 5, 4096, BLOCK_SIZE),
    (2, 9, 129, BLOCK_SIZE),
    (3, 17, 256, BLOCK_SIZE),
    (5, 31, 513, 32),
    (7, 3, 100, 4),
    (9, 11, 2050, BLOCK_SIZE),
    (13, 6, 40, 8),
]


@pytest.fixture(scope="module")
def ext():
    """Build (or load from the cache) once per test module: the first compile costs ~30 s."""
    e = cpu.extension()
    if e is None:
        pytest.skip("the C++ ternary CPU kernel cannot be built here")
    return e


def _case(m, n, k, block_size, seed):
    g = torch.Generator().manual_seed(seed)
    w_q = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    x = torch.randn(m, k, generator=g) * 3
    if m > 1:
        x[1] = 0.0  # an all-zero token (scale clamps)
    x[0, 0] = 1e3  # one outlier: x_q hits +-127 and most entries become small
    x_q, x_scale = quantize_activations(x)
    return x, x_q, x_scale, w_q, pack_ternary(w_q, torch.rand((), generator=g) + 0.1, block_size)


def test_isa_detection(ext):
    isas = cpu.supported_isas()
    assert "scalar" in isas and cpu_isa() in isas
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    if "avx512_vnni" in flags and "avx512bw" in flags:
        assert "avx512_vnni" in isas and cpu_isa() == "avx512_vnni"
    if "avx2" in flags:
        assert "avx2" in isas
    assert cpu_isa() == cpu.ISAS[ext.best_isa()]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bit_exact_on_every_isa(ext, shape):
    m, n, k, block_size = shape
    _, x_q, x_scale, w_q, packed = _case(m, n, k, block_size, seed=sum(shape))
    acc = ternary_matmul_int32(x_q, w_q)
    y = ternary_matmul_reference(x_q, x_scale, w_q, packed.scale)
    for isa in cpu.supported_isas():
        got_acc = cpu.matmul_int32(x_q, packed, isa=isa)
        got = cpu.ternary_matmul_cpp(x_q, x_scale, packed, isa=isa)
        assert got_acc.dtype == torch.int32 and torch.equal(got_acc, acc), isa
        assert got.dtype == torch.float32 and torch.equal(got, y), isa


def test_extreme_values_are_exact(ext):
    """x_q = -128 everywhere against all -1 / all +1 weights: the largest |acc| (and the sum-of-x correction)."""
    k = 1000
    x_q = torch.full((2, k), -128, dtype=torch.int8)
    x_q[1] = 127
    w_q = torch.stack([torch.full((k,), -1), torch.full((k,), 1), torch.zeros(k)]).to(torch.int8)
    packed = pack_ternary(w_q, 1.0)
    for isa in cpu.supported_isas():
        assert torch.equal(cpu.matmul_int32(x_q, packed, isa=isa), ternary_matmul_int32(x_q, w_q)), isa


def test_forced_isa_by_env(ext, monkeypatch):
    _, x_q, x_scale, w_q, packed = _case(3, 5, 300, BLOCK_SIZE, seed=1)
    y = ternary_matmul_reference(x_q, x_scale, w_q, packed.scale)
    for isa in cpu.supported_isas():
        monkeypatch.setenv(cpu.ISA_ENV, isa)
        assert cpu_isa() == isa
        assert torch.equal(cpu.ternary_matmul_cpp(x_q, x_scale, packed), y)
    monkeypatch.setenv(cpu.ISA_ENV, "no_such_isa")
    with pytest.raises(ValueError, match="unknown ternary ISA"):
        cpu.ternary_matmul_cpp(x_q, x_scale, packed)


def test_matmul_dispatches_to_cpp_and_matches_reference(ext):
    assert dispatch.choose("ternary_matmul", "cpu").name == "cpp"
    assert {"cpp", "reference"} <= set(dispatch.implementations("ternary_matmul"))
    torch.manual_seed(0)
    w = torch.randn(19, 200) * 0.05
    packed = pack(w, block_size=64)
    w_q, s_w = absmean_ternary(w)
    assert torch.equal(unpack_ternary(packed), w_q) and torch.equal(packed.scale, s_w)
    for lead in [(), (1,), (3,), (2, 5)]:
        x = torch.randn(*lead, 200)
        x_q, x_scale = quantize_activations(x)
        expect = ternary_matmul_reference(x_q.reshape(-1, 200), x_scale.reshape(-1, 1), w_q, s_w)
        y = matmul(x, packed)
        assert y.shape == (*lead, 19) and y.dtype == torch.float32
        assert torch.equal(y, expect.reshape(*lead, 19))
        assert torch.equal(matmul(x.bfloat16(), packed), matmul(x.bfloat16().float(), packed))
    with pytest.raises(ValueError, match="features"):
        matmul(torch.randn(2, 199), packed)


def test_reference_can_be_forced(ext, monkeypatch):
    _, _, _, _, packed = _case(1, 7, 300, BLOCK_SIZE, seed=2)
    x = torch.randn(4, 300)
    fast = matmul(x, packed)
    monkeypatch.setenv("LATENTLM_KERNELS", "reference")
    assert dispatch.choose("ternary_matmul", "cpu").name == "reference"
    assert torch.equal(matmul(x, packed), fast)


def test_thread_counts_agree(ext):
    _, x_q, x_scale, _, packed = _case(6, 301, 700, BLOCK_SIZE, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu.ternary_matmul_cpp(x_q, x_scale, packed)
        torch.set_num_threads(2)
        two = cpu.ternary_matmul_cpp(x_q, x_scale, packed)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_build_is_cached(ext):
    """A second process finds the library built: it loads it without compiling (same file, fast)."""
    lib = cpu.library_path()
    assert lib.exists() and cpu.build_directory() == lib.parent
    before = lib.stat().st_mtime_ns
    code = textwrap.dedent("""
        import time
        from latentlm.kernels.ternary import cpu
        t = time.perf_counter()
        assert cpu.extension() is not None
        print(time.perf_counter() - t)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    seconds = float(out.stdout.strip().splitlines()[-1])
    assert lib.stat().st_mtime_ns == before, "the cached library was rebuilt"
    assert seconds < 10, f"loading the cached library took {seconds:.1f} s"


def test_fallback_when_the_build_fails(ext, monkeypatch):
    """No compiler: one warning, then the reference runs (same bits) and dispatch picks it."""
    def no_compiler():
        raise RuntimeError("c++: command not found")

    monkeypatch.setattr(cpu.EXTENSION, "build", no_compiler)
    monkeypatch.setattr(cpu.EXTENSION, "_ext", None)  # undone after the test: the loaded module comes back
    monkeypatch.setattr(cpu.EXTENSION, "_tried", False)
    _, _, _, _, packed = _case(1, 7, 300, BLOCK_SIZE, seed=4)
    x = torch.randn(3, 300)
    x_q, x_scale = quantize_activations(x)
    expect = ternary_matmul_reference(x_q, x_scale, unpack_ternary(packed), packed.scale)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ys = [matmul(x, packed) for _ in range(3)]
        assert dispatch.choose("ternary_matmul", "cpu").name == "reference"
        assert cpu_isa() == "reference" and not cpu.available("cpu")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "could not be built" in messages[0] and "reference" in messages[0], messages
    assert all(torch.equal(y, expect) for y in ys)
    with pytest.raises(RuntimeError, match="unavailable"):
        cpu.ternary_matmul_cpp(x_q, x_scale, packed)


def test_fallback_with_a_missing_compiler(tmp_path):
    """The real failure, in a fresh process: an empty cache and CXX pointing nowhere."""
    code = textwrap.dedent("""
        import warnings, torch
        from latentlm.kernels.ternary import matmul, pack, cpu_isa, quantize_activations, unpack_ternary
        from latentlm.kernels.ternary import ternary_matmul_reference
        torch.manual_seed(0)
        p = pack(torch.randn(5, 70), block_size=64)
        x = torch.randn(2, 70)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = matmul(x, p)
            y2 = matmul(x, p)
        assert len(caught) == 1 and "could not be built" in str(caught[0].message), [str(w.message) for w in caught]
        x_q, s = quantize_activations(x)
        assert torch.equal(y, ternary_matmul_reference(x_q, s, unpack_ternary(p), p.scale)) and torch.equal(y, y2)
        assert cpu_isa() == "reference"
        print("ok")
    """)
    env = {**os.environ, "LATENTLM_CACHE": str(tmp_path), "CXX": str(tmp_path / "no-such-c++"),
           "OMP_NUM_THREADS": "1", "MAX_JOBS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr
