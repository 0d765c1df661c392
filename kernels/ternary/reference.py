"""BitNet b1.58 (W1.58 A8) reference: quantisers, the 2-bit packed weight format and the
integer matmul. Pure PyTorch; this module is the oracle for the fast kernels (C++ CPU, Triton
GPU) that will live beside it, so every integer step here is exact.

Quantisers (BitNet b1.58, arXiv 2402.17764):

- weights, per tensor ("absmean"): s_w = max(mean|W|, 1e-5), W_q = round(clamp(W / s_w, -1, 1))
  in {-1, 0, 1}; W ~= W_q * s_w.
- activations, per token ("absmax", int8): s_x = 127 / max(max|x|, 1e-5) over the last dim,
  x_q = round(clamp(x * s_x, -128, 127)); x ~= x_q / s_x.

Both quantisers work in float32 whatever the input dtype, and `round` is round-half-to-even
(torch.round). Scales are float32 tensors (the weight scale 0-d), never Python floats, so that
no device sync happens and every consumer performs the very same float32 operations.

Matmul: acc = x_q @ W_q^T accumulated exactly in int32, then y = acc / s_x * s_w (float32, in that
order). |acc| <= 127 * K, so the int32 accumulator and its float32 conversion are exact for
K <= 132_104 (127 * K < 2**24).

Packed format (`PackedTernary`, I2_S-like): 2 bits per weight, codes {-1: 0, 0: 1, +1: 2}
(3 is invalid). Each row of K weights is padded with zeros (code 1) up to a multiple of
`block_size` (a multiple of 4, default 128) and cut into blocks; a block of B weights is B/4
contiguous bytes. Inside a block, with Q = B/4, byte j holds the weights at block offsets
j, j+Q, j+2Q, j+3Q in bits [1:0], [3:2], [5:4], [7:6] respectively, so a kernel that loads the
Q bytes of a block and shifts by 0, 2, 4, 6 gets four contiguous runs of Q weights.
`data` is uint8 [N, K_pad / 4], row-major: row n's blocks follow each other.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BLOCK_SIZE = 128
CODE_OF = {-1: 0, 0: 1, 1: 2}  # weight value -> 2-bit code
_INT8_MAX = 127
_EPS = 1e-5


def absmean_ternary(w: Tensor) -> tuple[Tensor, Tensor]:
    """Per-tensor absmean ternary quantisation. w [..] -> (w_q int8 in {-1, 0, 1}, scale 0-d fp32).

    Dequantised weight: w_q * scale. No gradient flows (use BitLinear for the STE).
    """
    w = w.detach().float()
    scale = w.abs().mean().clamp(min=_EPS)
    w_q = (w / scale).clamp(-1, 1).round()
    return w_q.to(torch.int8), scale


def quantize_activations(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token absmax int8 quantisation over the last dim. x [..., K] -> (x_q int8 [..., K],
    scale fp32 [..., 1]) with x ~= x_q / scale. No gradient flows."""
    x = x.detach().float()
    scale = _INT8_MAX / x.abs().amax(dim=-1, keepdim=True).clamp(min=_EPS)
    x_q = (x * scale).clamp(-128, 127).round()
    return x_q.to(torch.int8), scale


def ternary_matmul_int32(x_q: Tensor, w_q: Tensor) -> Tensor:
    """Exact integer product acc = x_q @ w_q^T: x_q int8 [M, K], w_q int8 [N, K] -> int32 [M, N].

    On CPU the accumulation is int32; elsewhere (CUDA has no integer GEMM in torch) it is a
    float64 GEMM of the same integers, which is exact as long as |acc| < 2**53.
    """
    if x_q.dtype != torch.int8 or w_q.dtype != torch.int8:
        raise TypeError(f"x_q and w_q must be int8, got {x_q.dtype} and {w_q.dtype}")
    if x_q.dim() != 2 or w_q.dim() != 2 or x_q.shape[1] != w_q.shape[1]:
        raise ValueError(f"need x_q [M, K] and w_q [N, K], got {tuple(x_q.shape)} and {tuple(w_q.shape)}")
    if x_q.device.type == "cpu":
        return x_q.to(torch.int32) @ w_q.to(torch.int32).T
    return (x_q.double() @ w_q.double().T).to(torch.int32)


def ternary_matmul_reference(x_q: Tensor, x_scale: Tensor, w_q: Tensor, w_scale: Tensor | float) -> Tensor:
    """y = (x_q @ w_q^T) / x_scale * w_scale, fp32 [M, N]; the product is exact integer arithmetic.

    x_q int8 [M, K], x_scale [M, 1] (from `quantize_activations`), w_q int8 [N, K], w_scale 0-d
    (from `absmean_ternary`).
    """
    acc = ternary_matmul_int32(x_q, w_q)
    w_scale = torch.as_tensor(w_scale, dtype=torch.float32, device=acc.device)
    return acc.float() / x_scale.float() * w_scale


@dataclass
class PackedTernary:
    """A ternary weight [N, K] packed 4 per byte (layout in the module docstring)."""

    data: Tensor  # uint8 [N, K_pad // 4]
    shape: tuple[int, int]  # (N, K), unpadded
    block_size: int
    scale: Tensor  # 0-d fp32: the dequantised weight is unpack(...) * scale

    @property
    def padded_k(self) -> int:
        return self.data.shape[1] * 4

    def to(self, device) -> "PackedTernary":
        return PackedTernary(self.data.to(device), self.shape, self.block_size, self.scale.to(device))


def _padded(k: int, block_size: int) -> int:
    return -(-k // block_size) * block_size


def pack_ternary(w_q: Tensor, scale: Tensor | float = 1.0, block_size: int = BLOCK_SIZE) -> PackedTernary:
    """Pack int8 w_q [N, K] with values in {-1, 0, 1} into a `PackedTernary` (exactly invertible)."""
    if w_q.dim() != 2:
        raise ValueError(f"w_q must be [N, K], got shape {tuple(w_q.shape)}")
    if block_size <= 0 or block_size % 4:
        raise ValueError(f"block_size must be a positive multiple of 4, got {block_size}")
    if w_q.dtype.is_floating_point or w_q.dtype == torch.bool:
        raise TypeError(f"w_q must be an integer tensor, got {w_q.dtype}")
    if w_q.numel() and (w_q.min() < -1 or w_q.max() > 1):
        raise ValueError("w_q values must be in {-1, 0, 1}")
    n, k = w_q.shape
    k_pad = _padded(k, block_size)
    q = block_size // 4
    codes = torch.ones(n, k_pad, dtype=torch.uint8, device=w_q.device)  # padding encodes 0
    codes[:, :k] = (w_q.to(torch.int16) + 1).to(torch.uint8)
    codes = codes.view(n, k_pad // block_size, 4, q)  # [N, blocks, group g, byte j]
    data = codes[:, :, 0] | (codes[:, :, 1] << 2) | (codes[:, :, 2] << 4) | (codes[:, :, 3] << 6)
    scale = torch.as_tensor(scale, dtype=torch.float32, device=w_q.device).detach().clone().reshape(())
    return PackedTernary(data.reshape(n, k_pad // 4).contiguous(), (n, k), block_size, scale)


def unpack_ternary(packed: PackedTernary) -> Tensor:
    """Inverse of `pack_ternary`: int8 [N, K] in {-1, 0, 1}."""
    n, k = packed.shape
    b = packed.block_size
    data = packed.data
    if data.dtype != torch.uint8 or data.dim() != 2 or data.shape[0] != n or (data.shape[1] * 4) % b \
            or data.shape[1] * 4 < k or data.shape[1] * 4 - k >= b:
        raise ValueError(f"packed data {tuple(data.shape)} {data.dtype} does not fit shape {packed.shape}, block {b}")
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=data.device)
    blocks = data.view(n, -1, 1, b // 4)  # [N, blocks, 1, Q]
    codes = (blocks >> shifts.view(1, 1, 4, 1)) & 3  # [N, blocks, 4, Q]
    codes = codes.reshape(n, -1)[:, :k]
    if (codes == 3).any():
        raise ValueError("packed data holds the invalid code 3")
    return codes.to(torch.int8) - 1
