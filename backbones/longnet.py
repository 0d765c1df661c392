"""LongNet (Ding et al. 2023): a pre-norm Transformer whose attention is dilated attention.

- Blocks: RMSNorm -> dilated self-attention (RoPE on q and k) -> residual; RMSNorm -> GLU MLP (SwiGLU, or ReLU^2 for BitNet) -> residual.
- A final RMSNorm.
- Patterns from the config: `segment_lengths` w_i and `dilation_rates` r_i, one pair each; head j
  uses offset j mod r_i. Under pattern i the query at position n sees the keys m <= n of its own
  w_i-segment that lie, like n, on the head's grid (every r_i-th position from the offset). The keys a
  query sees are the UNION over patterns, under one softmax: a key that two patterns cover is
  counted once (torchscale issue #108; see `latentlm.kernels.dilated_attention`).
- State: the same `KVCache` as the Transformer (keys and values of every layer, growing in place
  while decoding, and which positions are real). Decoding attends, for the new query at position n,
  to exactly the cached keys the patterns give position n, through the same kernel (it accepts
  Tq <= S queries over S keys), so prefill + decoding equals the parallel forward. Cost per decoded
  token: O(sum_i w_i / r_i) keys per head.
- Padding (`valid`, False at left padding): padding keys are never seen, and segment and grid positions
  count from each row's first real token, so a left-padded row gives the same outputs as the row alone.
  This runs in the efficient kernel too; there is no dense fallback.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from latentlm.backbones.config import LongNetConfig
from latentlm.backbones.layers import RMSNorm, ffn, linear, residual_ffn, rotary_angles
from latentlm.backbones.kv_cache import KVBuffer, KVCache, any_padding
import latentlm.kernels.dilated_attention  # noqa: F401  (registers the dilated_attention implementations)
import latentlm.kernels.rotary_heads  # noqa: F401  (registers the rotary_heads implementations)
from latentlm.kernels import dispatch


class DilatedSelfAttention(nn.Module):
    def __init__(self, config: LongNetConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.qkv = linear(config, d, 3 * d)
        self.out = linear(config, d, d)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, past: KVBuffer | None, valid: Tensor | None
    ) -> tuple[Tensor, KVBuffer]:
        """x [B, T, D]; past: the layer's cache of S - T positions or None; valid [B, S] (all positions) or None."""
        b, t, _ = x.shape
        h, dh = self.config.n_heads, self.config.head_dim
        q, k, v = dispatch.choose("rotary_heads", x.device).fn(self.qkv(x), cos, sin, h, h)  # each [B, H, T, Dh]
        kv = KVBuffer.from_tensors(k, v) if past is None else past.append(k, v)  # [B, H, S, Dh] each
        # GPU: batched SDPA over gathered segments; CPU: nested patterns fast path (else the reference)
        attend = dispatch.choose("dilated_attention", x.device).fn
        y = attend(q, kv.keys, kv.values, self.config.segment_lengths, self.config.dilation_rates, valid=valid)
        y = y.transpose(1, 2).reshape(b, t, h * dh)
        return self.out(y), kv


class Block(nn.Module):
    def __init__(self, config: LongNetConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = DilatedSelfAttention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = ffn(config)

    def forward(self, x, cos, sin, past, valid):
        a, kv = self.attn(self.attn_norm(x), cos, sin, past, valid)
        x = x + a
        return residual_ffn(x, self.mlp_norm, self.mlp), kv


class LongNet(nn.Module):
    """Backbone contract: forward(h [B, T, D], state=None, valid=None) -> (out [B, T, D], KVCache)."""

    def __init__(self, config: LongNetConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)

    def forward(self, h: Tensor, state: KVCache | None = None, valid: Tensor | None = None) -> tuple[Tensor, KVCache]:
        """`valid` [B, T] marks real tokens (False at left padding); padding is never attended to."""
        b, t, _ = h.shape
        start = state.length if state is not None else 0
        new_valid = valid if valid is not None else torch.ones(b, t, dtype=torch.bool, device=h.device)
        all_valid = new_valid if state is None else torch.cat([state.valid, new_valid], dim=1)  # [B, S]
        plain = state is None and valid is None  # no padding anywhere: the kernel needs no mask
        padded = (state is not None and state.padded) or any_padding(valid)
        cos, sin = rotary_angles(torch.arange(start, start + t, device=h.device), self.config.head_dim,
                                 self.config.rope_theta)
        layers = []
        for i, block in enumerate(self.blocks):
            h, kv = block(h, cos, sin, state.layers[i] if state is not None else None, None if plain else all_valid)
            layers.append(kv)
        return self.norm(h), KVCache(layers, all_valid, padded)

    @staticmethod
    def state_nbytes(state: KVCache) -> int:
        """Bytes of the cached keys and values in use; `state.allocated_nbytes()` adds the spare room."""
        return state.nbytes()
