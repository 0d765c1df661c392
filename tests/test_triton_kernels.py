"""The Triton kernels (chunked retention, gated retention, ternary matmul) and the SDPA-gather dilated
attention against their pure-PyTorch references.

- CPU: the Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1) at tiny shapes, and must match
  the references within relative RMS error 1e-5 in fp32 (fla style), forward and backward; the ternary
  kernel must be bit-identical. The interpreter must be on before triton is first imported (triton jits
  its own standard library at import), so on a machine without CUDA tests/conftest.py imports triton
  under it before any test module loads, then removes the variable again, so that the dispatcher keeps
  choosing the references for the rest of the session; each interpreter test sets it for its own
  duration only.
- CUDA: the compiled kernels at real shapes (B=2, H=8, T=2048, D=64) in bf16/fp16 within 5e-3, fp32
  and a gradcheck. They skip without a GPU.
- The SDPA-gather dilated attention is pure PyTorch and is checked on CPU directly (1e-5).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

HAS_CUDA = torch.cuda.is_available()
# tests/conftest.py imports triton under the interpreter before any test module can import it.

from latentlm.kernels import dispatch  # noqa: E402
from latentlm.kernels.dilated_attention import dilated_attention, naive_dilated_attention  # noqa: E402
from latentlm.kernels.dilated_attention.sdpa_gather import dilated_attention_sdpa  # noqa: E402
from latentlm.kernels.gated_retention import chunk_gated_retention, parallel_gated_retention  # noqa: E402
from latentlm.kernels.gated_retention.triton_chunk import chunk_gated_retention_triton  # noqa: E402
from latentlm.kernels.retention import chunk_retention, parallel_retention  # noqa: E402
from latentlm.kernels.retention.triton_chunk import _tiles, chunk_retention_triton  # noqa: E402
from latentlm.kernels.ternary import absmean_ternary, pack_ternary, quantize_activations  # noqa: E402
from latentlm.kernels.ternary import ternary_matmul_reference  # noqa: E402
from latentlm.kernels.ternary import triton_gpu  # noqa: E402
from latentlm.kernels.triton_utils import interpreter_ready, triton_importable  # noqa: E402
from tolerance import rel_rms  # noqa: E402

TOL = 1e-5
GPU_TOL = 5e-3
needs_triton = pytest.mark.skipif(not triton_importable(), reason="triton is not installed")
needs_cuda = pytest.mark.skipif(not (HAS_CUDA and triton_importable()), reason="needs CUDA and triton")


@pytest.fixture
def interpret(monkeypatch):
    """TRITON_INTERPRET=1 for one test (skips where the interpreter cannot run in this process)."""
    if not triton_importable():
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if not interpreter_ready():
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set (CUDA machine, or another module "
                    "imported it first): run this file in its own process")


# ------------------------------------------------------------------------------------------------
# Retention and gated retention
# ------------------------------------------------------------------------------------------------

RET_DECAYS = {"paper": lambda h: [math.log1p(-(2.0 ** (-5 - i))) for i in range(h)],
              "strong": lambda h: [math.log([0.5, 0.05, 0.9, 0.7][i % 4]) for i in range(h)]}


def retention_inputs(b, h, t, dk, dv, gated, decay="strong", strength=1.0, device="cpu", dtype=torch.float32,
                     seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, dk, generator=gen) * dk**-0.5
    k = torch.randn(b, h, t, dk, generator=gen)
    v = torch.randn(b, h, t, dv, generator=gen)
    if gated:
        g = F.logsigmoid(torch.randn(b, h, t, generator=gen) * 2) / strength
    else:
        g = torch.tensor(RET_DECAYS[decay](h))
    s0 = torch.randn(b, h, dk, dv, generator=gen) * 0.1
    do = torch.randn(b, h, t, dv, generator=gen)
    ds = torch.randn(b, h, dk, dv, generator=gen) * 0.1
    args = [x.to(device=device, dtype=dtype).requires_grad_() for x in (q, k, v)]
    args.append(g.to(device).requires_grad_())
    return args, s0.to(device).requires_grad_(), do.to(device, dtype), ds.to(device)


def forward_backward(fn, args, s0, do, ds, chunk_size, with_state=True):
    """Outputs and gradients: [o, final state, dq, dk, dv, dg(, ds0)]."""
    if with_state:
        o, s = fn(*args, chunk_size=chunk_size, state=s0)
        loss = (o.float() * do.float()).sum() + (s * ds).sum()
        grads = torch.autograd.grad(loss, [*args, s0])
    else:
        o, s = fn(*args, chunk_size=chunk_size)
        grads = torch.autograd.grad((o.float() * do.float()).sum(), args)
    return [o.detach(), s.detach(), *grads]


NAMES = ("o", "state", "dq", "dk", "dv", "dlog_decay", "dstate0")


def assert_rel_rms(got, ref, tol, names=NAMES):
    errs = {n: rel_rms(a, b) for n, a, b in zip(names, got, ref)}
    bad = {n: f"{e:.2e}" for n, e in errs.items() if not e <= tol}
    assert not bad, f"relative RMS errors above {tol}: {bad} (all: {errs})"
    return errs


CASES = [  # (T, Dk, Dv, chunk_size, with_state)
    (20, 16, 16, 8, True),  # the brief's shape; chunk_size 8 -> tile 16 (results do not depend on it)
    (37, 16, 16, 16, True),  # T not a multiple of the chunk, three chunks, state in and out
    (33, 24, 40, 16, False),  # head dims that are not powers of two, zero initial state
    (40, 128, 32, 64, True),  # Dk = 128: BT 32, the forward loops over two K tiles
    (1, 16, 16, 16, True),  # one token
]


@needs_triton
@pytest.mark.parametrize("decay", ["paper", "strong"])
@pytest.mark.parametrize("t,dk,dv,chunk_size,with_state", CASES)
def test_triton_chunk_retention_interpreter(interpret, t, dk, dv, chunk_size, with_state, decay):
    args, s0, do, ds = retention_inputs(1, 2, t, dk, dv, gated=False, decay=decay)
    got = forward_backward(chunk_retention_triton, args, s0, do, ds, chunk_size, with_state)
    ref = forward_backward(chunk_retention, args, s0, do, ds, chunk_size, with_state)
    names = NAMES if with_state else NAMES[:6]
    if t == 1:  # one token and no state: the log decay has no effect, its gradient is 0 in both
        got, ref = got[:5] + got[6:], ref[:5] + ref[6:]
        names = names[:5] + names[6:]
    assert_rel_rms(got, ref, TOL, names)
    # the parallel oracle agrees too (zero initial state)
    o = chunk_retention_triton(*[a.detach() for a in args], chunk_size=chunk_size)[0]
    assert rel_rms(o, parallel_retention(*[a.detach() for a in args])) <= TOL


@needs_triton
@pytest.mark.parametrize("strength", [16.0, 1.0])
@pytest.mark.parametrize("t,dk,dv,chunk_size,with_state", CASES)
def test_triton_chunk_gated_retention_interpreter(interpret, t, dk, dv, chunk_size, with_state, strength):
    args, s0, do, ds = retention_inputs(1, 2, t, dk, dv, gated=True, strength=strength)
    got = forward_backward(chunk_gated_retention_triton, args, s0, do, ds, chunk_size, with_state)
    # the reference with the kernel's tile, so that the in-chunk cumulative sums are the same sums
    tile = _tiles(dk, dv, chunk_size, torch.float32)[0]
    ref = forward_backward(chunk_gated_retention, args, s0, do, ds, tile, with_state)
    names = NAMES if with_state else NAMES[:6]
    assert_rel_rms(got, ref, TOL, names)
    o = chunk_gated_retention_triton(*[a.detach() for a in args], chunk_size=chunk_size)[0]
    assert rel_rms(o, parallel_gated_retention(*[a.detach() for a in args])) <= TOL


@needs_triton
def test_triton_retention_gradcheck_interpreter(interpret):
    """Independent of the references: finite differences (float64 inputs, fp32 inside the kernel)."""
    args, s0, _, _ = retention_inputs(1, 1, 19, 16, 16, gated=False, dtype=torch.float64)
    q, k, v, g = (a.detach().double().requires_grad_() for a in args)
    s0 = s0.detach().double().requires_grad_()

    def fn(q, k, v, g, s0):
        o, s = chunk_retention_triton(q, k, v, g, chunk_size=16, state=s0)
        return o, s

    assert torch.autograd.gradcheck(fn, (q, k, v, g, s0), eps=1e-3, atol=2e-3, rtol=2e-3, fast_mode=True)


@needs_triton
def test_dispatch_picks_triton_only_under_the_interpreter_or_cuda(interpret, monkeypatch):
    for op in ("chunk_retention", "chunk_gated_retention", "ternary_matmul"):
        assert "triton" in dispatch.implementations(op)
        assert dispatch.choose(op, "cpu").name == "triton"  # TRITON_INTERPRET=1 (the fixture)
    monkeypatch.setenv("LATENTLM_KERNELS", "reference")
    assert dispatch.choose("chunk_retention", "cpu").name == "reference"
    monkeypatch.delenv("LATENTLM_KERNELS")
    monkeypatch.delenv("TRITON_INTERPRET")
    assert dispatch.choose("chunk_retention", "cpu").name == "reference"
    assert dispatch.choose("chunk_gated_retention", "cpu").name == "reference"
    assert dispatch.choose("chunk_retention", "cuda").name == "triton"
    assert dispatch.choose("ternary_matmul", "cuda").name == "triton"
    assert dispatch.choose("ternary_matmul", "cpu").name != "triton"


def test_triton_retention_rejects_bad_inputs():
    q = torch.zeros(1, 2, 4, 300)
    with pytest.raises(ValueError, match="head dims up to 256"):
        chunk_retention_triton(q, q, q[..., :8], torch.zeros(2))
    with pytest.raises(ValueError, match="log_decay"):
        chunk_retention_triton(q[..., :8], q[..., :8], q[..., :8], torch.zeros(3))
    with pytest.raises(ValueError, match="log_decay"):
        chunk_gated_retention_triton(q[..., :8], q[..., :8], q[..., :8], torch.zeros(1, 2, 5))


# ------------------------------------------------------------------------------------------------
# Ternary matmul
# ------------------------------------------------------------------------------------------------


def ternary_case(m, n, k, block_size, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen) * 3
    w = torch.randn(n, k, generator=gen)
    w_q, w_scale = absmean_ternary(w)
    x_q, x_scale = quantize_activations(x)
    packed = pack_ternary(w_q, w_scale, block_size)
    x_q, x_scale, packed = x_q.to(device), x_scale.to(device), packed.to(device)
    return x_q, x_scale, packed, ternary_matmul_reference(x_q, x_scale, w_q.to(device), w_scale.to(device))


TERNARY_CASES = [  # (M, N, K, block_size)
    (3, 5, 7, 128),  # K far below one block
    (17, 70, 300, 128),  # K not a multiple of the block; M, N not multiples of the tiles
    (2, 33, 256, 128),  # whole blocks
    (1, 9, 129, 4),  # tiny blocks (Q = 1 byte)
    (5, 20, 100, 36),  # Q = 9 bytes: not a power of two
    (4, 65, 520, 256),  # Q = 64: a wider byte tile
]


@needs_triton
@pytest.mark.parametrize("int_dot", [True, False], ids=["int8-dot", "fp16-dot"])
@pytest.mark.parametrize("m,n,k,block_size", TERNARY_CASES)
def test_triton_ternary_matmul_bit_exact_interpreter(interpret, monkeypatch, m, n, k, block_size, int_dot):
    monkeypatch.setattr(triton_gpu, "_int_dot_supported", lambda device: int_dot)
    x_q, x_scale, packed, ref = ternary_case(m, n, k, block_size)
    y = triton_gpu.ternary_matmul_triton(x_q, x_scale, packed)
    assert y.dtype == torch.float32 and y.shape == (m, n)
    assert torch.equal(y, ref)


@needs_triton
def test_triton_ternary_matmul_extremes_interpreter(interpret):
    """All-(-128) activations times all-(-1) weights: the largest |acc|, still exact."""
    k = 300
    x_q = torch.full((3, k), -128, dtype=torch.int8)
    x_scale = torch.tensor([[1.0], [0.37], [127.0]])
    w_q = -torch.ones(4, k, dtype=torch.int8)
    packed = pack_ternary(w_q, torch.tensor(0.013))
    y = triton_gpu.ternary_matmul_triton(x_q, x_scale, packed)
    assert torch.equal(y, ternary_matmul_reference(x_q, x_scale, w_q, packed.scale))


def test_triton_ternary_rejects_bad_inputs():
    x_q, x_scale, packed, _ = ternary_case(2, 3, 10, 128)
    with pytest.raises(ValueError, match="int8"):
        triton_gpu.ternary_matmul_triton(x_q.float(), x_scale, packed)
    with pytest.raises(ValueError, match="x_scale"):
        triton_gpu.ternary_matmul_triton(x_q, x_scale[:1], packed)


# ------------------------------------------------------------------------------------------------
# Dilated attention through batched SDPA over gathered segments (pure PyTorch: CPU directly)
# ------------------------------------------------------------------------------------------------

DILATED_PATTERNS = [
    ([4], [1]),
    ([4, 8], [1, 2]),
    ([8, 16], [1, 2]),  # T = 16, 32: the first pattern's blocks are plain causal (no mask)
    ([3, 8, 16], [1, 2, 4]),
    ([5, 12, 32], [1, 3, 4]),
    ([6, 10], [2, 4]),  # every r > 1: uncovered queries (o = 0, lse = -inf)
]


def dilated_case(t, tq, dv=8, pad=0, seed=0, dtype=torch.float32, device="cpu", b=2, h=4, d=8):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=gen)
    k = torch.randn(b, h, t, d, generator=gen)
    v = torch.randn(b, h, t, dv, generator=gen)
    valid = None
    if pad:
        valid = torch.ones(b, t, dtype=torch.bool)
        valid[-1, :pad] = False  # left padding of the last row
        valid[0, t // 2] = False  # an interior invalid key
        valid = valid.to(device)
    do = torch.randn(b, h, tq, dv, generator=gen)
    dl = torch.randn(b, h, tq, generator=gen)
    qkv = [x.to(device=device, dtype=dtype).requires_grad_() for x in (q, k, v)]
    return qkv, valid, do.to(device), dl.to(device)


def dilated_outputs(fn, qkv, valid, do, dl, ws, rs, **kw):
    o, lse = fn(*qkv, ws, rs, valid=valid, return_lse=True, **kw)
    covered = torch.isfinite(lse)
    loss = (o.float() * do).sum() + (torch.where(covered, lse, torch.zeros_like(lse)) * dl).sum()
    grads = torch.autograd.grad(loss, qkv)
    return [o.detach().float(), torch.where(covered, lse, torch.full_like(lse, -1e4)).detach(), *grads], covered


@pytest.mark.parametrize("backend", ["auto", "math"])
@pytest.mark.parametrize("t,tq,dv,pad", [(1, 1, 8, 0), (13, 13, 8, 0), (16, 16, 8, 0), (23, 23, 6, 0),
                                         (32, 32, 8, 0), (23, 5, 8, 0), (23, 1, 8, 0), (20, 20, 8, 3),
                                         (20, 7, 8, 2)])
@pytest.mark.parametrize("ws,rs", DILATED_PATTERNS)
def test_sdpa_gather_equals_dilated_and_naive(ws, rs, t, tq, dv, pad, backend):
    qkv, valid, do, dl = dilated_case(t, tq, dv, pad)
    got, covered = dilated_outputs(dilated_attention_sdpa, qkv, valid, do, dl, ws, rs, backend=backend)
    ref, ref_covered = dilated_outputs(dilated_attention, qkv, valid, do, dl, ws, rs)
    assert torch.equal(covered, ref_covered)
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), got, ref):
        assert torch.isfinite(a).all(), name
        assert (a - b).abs().max().item() <= 1e-5, f"{name}: max error {(a - b).abs().max().item():.2e}"
    o_naive = naive_dilated_attention(*[x.detach() for x in qkv], ws, rs, valid=valid)
    assert (got[0] - o_naive).abs().max().item() <= 1e-5


def test_sdpa_gather_fused_cpu_kernel_and_custom_offsets():
    """The fused CPU flash kernel is really used (backend="fused" may not fall back) and head offsets
    other than LongNet's default are honoured."""
    ws, rs, offsets = [4, 8], [1, 2], [[0, 0, 0, 0], [1, 0, 1, 1]]
    qkv, valid, do, dl = dilated_case(21, 21)
    got, _ = dilated_outputs(dilated_attention_sdpa, qkv, valid, do, dl, ws, rs, offsets=offsets, backend="fused")
    ref, _ = dilated_outputs(dilated_attention, qkv, valid, do, dl, ws, rs, offsets=offsets)
    for a, b in zip(got, ref):
        assert (a - b).abs().max().item() <= 1e-5


def test_sdpa_gather_dispatch_and_empty():
    assert dispatch.choose("dilated_attention", "cpu").name == "nested_flash"  # nested.py; see test_dilated_nested
    assert dispatch.choose("dilated_attention", "cuda").name == "sdpa_gather"
    q = torch.zeros(1, 2, 0, 8)
    o, lse = dilated_attention_sdpa(q, torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 4), [4], [1], return_lse=True)
    assert o.shape == (1, 2, 0, 4) and lse.shape == (1, 2, 0)
    with pytest.raises(ValueError, match="backend"):
        dilated_attention_sdpa(q, q, q, [4], [1], backend="nope")


# ------------------------------------------------------------------------------------------------
# CUDA: the compiled kernels at real shapes
# ------------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gated", [False, True], ids=["retention", "gated"])
def test_cuda_chunk_retention_real_shapes(gated, dtype):
    args, s0, do, ds = retention_inputs(2, 8, 2048, 64, 64, gated=gated, strength=16.0, device="cuda", dtype=dtype)
    fn = chunk_gated_retention_triton if gated else chunk_retention_triton
    ref_fn = chunk_gated_retention if gated else chunk_retention
    got = forward_backward(fn, args, s0, do, ds, 64)
    # the reference in fp32 from the same (rounded) inputs
    ref_args = [a.detach().float().requires_grad_() for a in args]
    ref = forward_backward(ref_fn, ref_args, s0, do.float(), ds, 64)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    assert_rel_rms(got, ref, GPU_TOL)


@needs_cuda
@pytest.mark.parametrize("gated", [False, True], ids=["retention", "gated"])
def test_cuda_chunk_retention_fp32(gated):
    args, s0, do, ds = retention_inputs(2, 4, 1000, 128, 64, gated=gated, device="cuda")
    fn = chunk_gated_retention_triton if gated else chunk_retention_triton
    ref_fn = chunk_gated_retention if gated else chunk_retention
    got = forward_backward(fn, args, s0, do, ds, 64)
    ref = forward_backward(ref_fn, args, s0, do, ds, 32 if gated else 64)
    assert_rel_rms(got, ref, 1e-4)


@needs_cuda
@pytest.mark.parametrize("gated", [False, True], ids=["retention", "gated"])
def test_cuda_chunk_retention_gradcheck(gated):
    args, s0, _, _ = retention_inputs(1, 2, 45, 16, 16, gated=gated, device="cuda", dtype=torch.float64)
    inputs = [a.detach().double().requires_grad_() for a in args] + [s0.detach().double().requires_grad_()]
    fn = chunk_gated_retention_triton if gated else chunk_retention_triton

    def f(q, k, v, g, s):
        return fn(q, k, v, g, chunk_size=16, state=s)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-3, atol=2e-3, rtol=2e-3, fast_mode=True)


@needs_cuda
def test_cuda_dispatch_picks_triton():
    for op in ("chunk_retention", "chunk_gated_retention", "ternary_matmul"):
        assert dispatch.choose(op, "cuda").name == "triton"


@needs_cuda
@pytest.mark.parametrize("m,n,k,block_size", [(1, 4096, 4096, 128), (77, 1000, 2000, 128), (256, 512, 1100, 64)])
def test_cuda_ternary_matmul_bit_exact(m, n, k, block_size):
    x_q, x_scale, packed, ref = ternary_case(m, n, k, block_size, device="cuda")
    assert torch.equal(triton_gpu.ternary_matmul_triton(x_q, x_scale, packed), ref)


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("ws,rs,tq,pad", [([512, 1024, 2048], [1, 2, 4], 2048, 0),
                                          ([256, 1024], [1, 4], 2048, 100),
                                          ([512, 1024, 2048], [1, 2, 4], 16, 0)])
def test_cuda_sdpa_gather_real_shapes(ws, rs, tq, pad, dtype):
    qkv, valid, do, dl = dilated_case(2048, tq, 64, pad, dtype=dtype, device="cuda", b=2, h=8, d=64)
    got, covered = dilated_outputs(dilated_attention_sdpa, qkv, valid, do, dl, ws, rs, backend="fused")
    ref_qkv = [x.detach().float().requires_grad_() for x in qkv]
    ref, ref_covered = dilated_outputs(dilated_attention, ref_qkv, valid, do, dl, ws, rs)
    assert torch.equal(covered, ref_covered)
    tol = 1e-5 if dtype == torch.float32 else GPU_TOL
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), got, ref):
        assert rel_rms(a, b) <= tol, f"{name}: relative RMS error {rel_rms(a, b):.2e}"
