"""BitLinear: BitNet b1.58 ternary projections (W1.58 A8) for any backbone, and their packed form.

`BitLinear` trains a full-precision ("latent") weight and, in training and eval alike, computes

    x_n = RMSNorm(x)                              # per token, fp32; see "input norm" below
    x_q, s_x = quantize_activations(x_n)          # per-token absmax int8, s_x [..., 1]
    W_q, s_w = absmean_ternary(W)                 # per-tensor absmean ternary
    y = (x_q @ W_q^T) / s_x * s_w  (+ bias)

with straight-through estimators for both quantisers, so gradients reach W and x as if y were
(x_n @ W^T) evaluated at the quantised points: dL/dx_n = g @ (W_q s_w), dL/dW = g^T @ (x_q / s_x).

Exactness. The STE is written as q + (v - v.detach()) on the integer grid (v = x_n * s_x and
v = W / s_w, scales detached), not as v + (q - v).detach(): the two have the same gradient, but
the former's forward value is q bit for bit. The float32 matmul then multiplies integer-valued
tensors (|x_q| <= 127, W_q in {-1, 0, 1}) whose partial sums are integers below 2**24 for
K <= 132_104, so it is exact in any summation order and equals the int32 accumulator of
`ternary_matmul_reference`; the dequantisation is the same two float32 ops in the same order.
Hence BitLinear's fp32 forward == ternary_matmul_reference(quantize_activations(norm(x)),
absmean_ternary(W)) exactly (torch.equal), and every token's output depends on that token alone,
whatever the batch or sequence shape. (Under CUDA autocast the matmul runs in bf16, whose inputs
are still exact but whose output is rounded to bf16.)

Input norm. BitNet b1.58 normalises a BitLinear's input before the int8 absmax quantiser (the
"LN" in y = W_q Quant(LN(x)); SubLN in b1.58 2B4T). Here it is an RMSNorm over the input features,
in fp32, with eps = config.norm_eps; by default it has no learned gain (`norm_affine=False`),
since our blocks already apply a learned pre-norm before qkv / gate / up. `norm_affine=True` adds
a learned per-feature gain (2B4T-style SubLN); `norm=False` drops the norm.

`PackedBitLinear` is the inference form: the 2-bit packed weight (`PackedTernary`) and its scale
are buffers (uint8 `packed`, fp32 0-d `weight_scale`), so `model.state_dict()` saves straight to
safetensors; its forward calls `latentlm.kernels.ternary.matmul`, which dispatches to the fused
C++ kernel on CPU (straight from the packed bytes) or to the reference (unpack + int32 matmul),
with the same bits either way. `pack_model` swaps every BitLinear of a model for one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentlm.kernels.ternary import (
    BLOCK_SIZE,
    PackedTernary,
    absmean_ternary,
    pack_ternary,
    quantize_activations,
)
from latentlm.kernels.ternary import matmul as ternary_matmul


def _rms_norm(x: Tensor, use_norm: bool, weight: Tensor | None, eps: float) -> Tensor:
    """The BitLinear input norm, in fp32, per token."""
    x = x.float()
    if not use_norm:
        return x
    return F.rms_norm(x, (x.shape[-1],), None if weight is None else weight.float(), eps)


class BitLinear(nn.Linear):
    """A ternary projection trained with quantisation in the loop (module docstring).

    `weight` is the latent full-precision weight the optimiser updates; no bias by default.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        norm: bool = True,
        norm_affine: bool = False,
        eps: float = 1e-6,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.use_norm = norm
        self.eps = eps
        if norm and norm_affine:
            self.norm_weight = nn.Parameter(torch.ones(in_features, device=device, dtype=dtype))
        else:
            self.register_parameter("norm_weight", None)

    def input_norm(self, x: Tensor) -> Tensor:
        return _rms_norm(x, self.use_norm, self.norm_weight, self.eps)

    def forward(self, x: Tensor) -> Tensor:
        x_n = self.input_norm(x)  # fp32 [..., K]
        x_q, s_x = quantize_activations(x_n)  # detached: int8 [..., K], fp32 [..., 1]
        w_q, s_w = absmean_ternary(self.weight)  # detached: int8 [N, K], fp32 0-d
        v_x = x_n * s_x
        x_int = x_q.float() + (v_x - v_x.detach())  # value: x_q exactly; gradient: identity on v_x
        v_w = self.weight.float() / s_w
        w_int = w_q.float() + (v_w - v_w.detach())
        y = F.linear(x_int, w_int) / s_x * s_w
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)

    @torch.no_grad()
    def export_packed(self, block_size: int = BLOCK_SIZE) -> PackedTernary:
        """The ternary weight and its scale in the 2-bit packed format."""
        w_q, s_w = absmean_ternary(self.weight)
        return pack_ternary(w_q, s_w, block_size)

    def extra_repr(self) -> str:
        norm = "none" if not self.use_norm else ("rms_affine" if self.norm_weight is not None else "rms")
        return f"{super().extra_repr()}, norm={norm}, eps={self.eps}"


class PackedBitLinear(nn.Module):
    """Inference-only BitLinear from a packed ternary weight; the matmul is dispatched (C++ on CPU).

    Buffers (all saved in the state dict): `packed` uint8 [out, K_pad/4], `weight_scale` fp32 0-d,
    and `norm_weight` / `bias` (fp32) when present.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        norm: bool = True,
        norm_affine: bool = False,
        eps: float = 1e-6,
        block_size: int = BLOCK_SIZE,
        device=None,
    ) -> None:
        super().__init__()
        if block_size <= 0 or block_size % 4:
            raise ValueError(f"block_size must be a positive multiple of 4, got {block_size}")
        self.in_features, self.out_features = in_features, out_features
        self.use_norm, self.eps, self.block_size = norm, eps, block_size
        k_pad = -(-in_features // block_size) * block_size
        # 0b01010101: every weight is 0 until a real packed weight is loaded
        self.register_buffer("packed", torch.full((out_features, k_pad // 4), 0x55, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones((), dtype=torch.float32, device=device))
        self.register_buffer("norm_weight", torch.ones(in_features, device=device) if norm and norm_affine else None)
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)

    @classmethod
    def from_packed(
        cls,
        packed: PackedTernary,
        bias: Tensor | None = None,
        *,
        norm: bool = True,
        norm_weight: Tensor | None = None,
        eps: float = 1e-6,
    ) -> "PackedBitLinear":
        n, k = packed.shape
        m = cls(k, n, bias is not None, norm=norm, norm_affine=norm_weight is not None, eps=eps,
                block_size=packed.block_size, device=packed.data.device)
        with torch.no_grad():
            m.packed.copy_(packed.data)
            m.weight_scale.copy_(packed.scale)
            if norm_weight is not None:
                m.norm_weight.copy_(norm_weight.detach().float())
            if bias is not None:
                m.bias.copy_(bias.detach().float())
        return m

    @classmethod
    def from_bitlinear(cls, layer: BitLinear, block_size: int = BLOCK_SIZE) -> "PackedBitLinear":
        return cls.from_packed(layer.export_packed(block_size), layer.bias, norm=layer.use_norm,
                               norm_weight=layer.norm_weight, eps=layer.eps)

    def packed_weight(self) -> PackedTernary:
        return PackedTernary(self.packed, (self.out_features, self.in_features), self.block_size, self.weight_scale)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        x_n = _rms_norm(x, self.use_norm, self.norm_weight, self.eps)
        y = ternary_matmul(x_n, self.packed_weight())  # quantises x_n per token; fp32 [..., out]
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        norm = "none" if not self.use_norm else ("rms_affine" if self.norm_weight is not None else "rms")
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, norm={norm}, eps={self.eps}, block_size={self.block_size}")


def pack_model(module: nn.Module, block_size: int = BLOCK_SIZE) -> nn.Module:
    """Replace every BitLinear in `module` (in place) by its PackedBitLinear; returns the module
    (or the PackedBitLinear itself when `module` is a BitLinear). To load a packed checkpoint,
    build the model, `pack_model` it, then `load_state_dict` the saved packed state."""
    if isinstance(module, BitLinear):
        return PackedBitLinear.from_bitlinear(module, block_size)
    for name, child in list(module.named_children()):
        if isinstance(child, BitLinear):
            setattr(module, name, PackedBitLinear.from_bitlinear(child, block_size))
        else:
            pack_model(child, block_size)
    return module


__all__ = ["BitLinear", "PackedBitLinear", "pack_model"]
