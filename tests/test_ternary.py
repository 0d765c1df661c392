"""The ternary reference ops (kernels/ternary/reference.py): quantisers, packing, exact int32 matmul."""
import pytest
import torch

from latentlm.kernels.ternary import (
    PackedTernary,
    absmean_ternary,
    pack_ternary,
    quantize_activations,
    ternary_matmul_int32,
    ternary_matmul_reference,
    unpack_ternary,
)


def test_absmean_ternary():
    torch.manual_seed(0)
    w = torch.randn(24, 40) * 0.02
    w_q, scale = absmean_ternary(w)
    assert w_q.dtype == torch.int8 and w_q.shape == w.shape
    assert set(w_q.unique().tolist()) <= {-1, 0, 1}
    assert scale.dtype == torch.float32 and scale.dim() == 0
    assert torch.equal(scale, w.abs().mean())
    assert torch.equal(w_q.float(), torch.round(torch.clamp(w / scale, -1, 1)))
    # the three levels are all used for a Gaussian weight, and zeros where |w| < scale / 2
    assert set(w_q.unique().tolist()) == {-1, 0, 1}
    assert torch.equal(w_q == 0, (w / scale).abs() < 0.5)
    # an all-zero weight: scale clamps at 1e-5, no NaN
    z_q, z_s = absmean_ternary(torch.zeros(3, 5))
    assert torch.equal(z_q, torch.zeros(3, 5, dtype=torch.int8)) and z_s.item() == pytest.approx(1e-5)


def test_quantize_activations():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 33) * 3
    x[0, 0] = 0.0  # an all-zero token
    x_q, s = quantize_activations(x)
    assert x_q.dtype == torch.int8 and x_q.shape == x.shape and s.shape == (2, 5, 1)
    assert torch.equal(x_q[0, 0], torch.zeros(33, dtype=torch.int8)) and torch.isfinite(s).all()
    amax = x.abs().amax(-1)
    assert torch.equal(s[..., 0], 127 / amax.clamp(min=1e-5))
    assert torch.equal(x_q.float(), torch.round(torch.clamp(x * s, -128, 127)))
    # the largest entry of every non-zero token maps to +-127; dequantisation error <= half a step
    assert (x_q.abs().amax(-1)[amax > 0] == 127).all()
    assert ((x_q.float() / s - x).abs() <= 0.5 / s + 1e-6).all()
    # per token: quantising a subset of tokens gives the same bits
    sub_q, sub_s = quantize_activations(x[1:, 2:4])
    assert torch.equal(sub_q, x_q[1:, 2:4]) and torch.equal(sub_s, s[1:, 2:4])


def test_pack_layout_is_pinned():
    """The byte layout the fast kernels will read: codes {-1:0, 0:1, 1:2}; in a block of B weights,
    byte j holds offsets j, j+B/4, j+2B/4, j+3B/4 in bits [1:0], [3:2], [5:4], [7:6]."""
    w = torch.tensor([[-1, 0, 1, 0, 1, 1, -1, 0, 1, -1]], dtype=torch.int8)  # K=10, block 8 -> pad to 16
    p = pack_ternary(w, 0.5, block_size=8)
    assert p.shape == (1, 10) and p.block_size == 8 and p.padded_k == 16 and p.scale.item() == 0.5
    # block 0: byte0 = w0,w2,w4,w6 = -1,1,1,-1 -> 0|2<<2|2<<4|0<<6; byte1 = w1,w3,w5,w7 = 0,0,1,0
    # block 1: w8,w9 then six padding zeros: byte0 = w8,w10,w12,w14 = 1,0,0,0; byte1 = w9,w11,w13,w15
    expect = [0 | 2 << 2 | 2 << 4 | 0 << 6, 1 | 1 << 2 | 2 << 4 | 1 << 6,
              2 | 1 << 2 | 1 << 4 | 1 << 6, 0 | 1 << 2 | 1 << 4 | 1 << 6]
    assert p.data.dtype == torch.uint8 and p.data.tolist() == [expect]
    assert torch.equal(unpack_ternary(p), w)


@pytest.mark.parametrize("block_size", [4, 64, 128])
def test_pack_unpack_round_trip(block_size):
    g = torch.Generator().manual_seed(block_size)
    shapes = [(1, 1), (3, 5), (7, block_size), (5, block_size + 1), (9, 3 * block_size - 3), (16, 300), (2, 1000)]
    for n, k in shapes:
        w_q = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
        p = pack_ternary(w_q, block_size=block_size)
        k_pad = -(-k // block_size) * block_size
        assert isinstance(p, PackedTernary) and p.shape == (n, k)
        assert p.data.shape == (n, k_pad // 4) and p.data.dtype == torch.uint8
        assert torch.equal(unpack_ternary(p), w_q), (n, k)
        # padding holds the code of 0 and is dropped on unpack
        blocks = p.data.view(n, k_pad // block_size, block_size // 4)
        codes = torch.stack([(blocks >> s) & 3 for s in (0, 2, 4, 6)], -2).reshape(n, k_pad)
        assert (codes[:, k:] == 1).all() and (codes != 3).all()


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="-1, 0, 1"):
        pack_ternary(torch.tensor([[2, 0]], dtype=torch.int8))
    with pytest.raises(ValueError, match="multiple of 4"):
        pack_ternary(torch.zeros(2, 3, dtype=torch.int8), block_size=6)
    with pytest.raises(TypeError):
        pack_ternary(torch.zeros(2, 3))
    p = pack_ternary(torch.zeros(2, 8, dtype=torch.int8), block_size=8)
    bad = PackedTernary(torch.full_like(p.data, 0xFF), p.shape, p.block_size, p.scale)
    with pytest.raises(ValueError, match="invalid code"):
        unpack_ternary(bad)


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 7, 33), (17, 9, 257), (3, 4, 4099)])
def test_int32_matmul_is_exact(m, n, k):
    g = torch.Generator().manual_seed(k)
    x_q = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    w_q = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    acc = ternary_matmul_int32(x_q, w_q)
    assert acc.dtype == torch.int32 and acc.shape == (m, n)
    exact = x_q.double() @ w_q.double().T  # integer products and sums: exact in float64
    assert torch.equal(acc.double(), exact)
    # extreme accumulators: all -128 against all -1 / all 1
    x_q = torch.full((2, k), -128, dtype=torch.int8)
    w_q = torch.stack([torch.full((k,), -1, dtype=torch.int8), torch.ones(k, dtype=torch.int8)])
    assert ternary_matmul_int32(x_q, w_q).tolist() == [[128 * k, -128 * k]] * 2


def test_reference_matmul_dequantises():
    torch.manual_seed(0)
    x, w = torch.randn(6, 200), torch.randn(11, 200) * 0.05
    x_q, x_s = quantize_activations(x)
    w_q, w_s = absmean_ternary(w)
    y = ternary_matmul_reference(x_q, x_s, w_q, w_s)
    acc = x_q.double() @ w_q.double().T
    assert y.dtype == torch.float32 and y.shape == (6, 11)
    # the same float32 ops on the exact accumulator, bit for bit
    assert torch.equal(y, acc.float() / x_s * w_s)
    # and within float32 rounding of the float64 dequantised product
    y64 = acc / x_s.double() * w_s.double()
    assert ((y.double() - y64).abs() / y64.abs().max()).max() <= 1e-6
    # it approximates the float matmul it stands for (W1.58 A8 quantisation error)
    dense = x @ (w_q.float() * w_s).T
    assert ((y - dense).abs().max() / dense.abs().max()) < 0.05


def test_reference_matmul_checks_inputs():
    with pytest.raises(TypeError):
        ternary_matmul_int32(torch.zeros(2, 3), torch.zeros(4, 3, dtype=torch.int8))
    with pytest.raises(ValueError):
        ternary_matmul_int32(torch.zeros(2, 3, dtype=torch.int8), torch.zeros(4, 5, dtype=torch.int8))
