"""The reference backbone: a pre-norm Transformer with RoPE, SDPA and a growable KV cache.

Attention may be grouped-query (`config.n_kv_heads`): the cache then holds n_kv_heads heads per layer.
Decoding one token with no padding anywhere attends without a mask (a single query at the last
position sees every key); a continuation of several tokens uses the bottom-right-aligned causal mask.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from latentlm.backbones.attention import attend
from latentlm.backbones.config import BitNetConfig, TransformerConfig
from latentlm.backbones.kv_cache import KVBuffer, KVCache, any_padding, cache_rounded
from latentlm.backbones.layers import RMSNorm, ffn, linear, residual_ffn, rotary_angles
import latentlm.kernels.rotary_heads  # noqa: F401  (registers the rotary_heads implementations)
from latentlm.kernels import dispatch

__all__ = ["Attention", "KVCache", "Transformer", "attention_mask"]


def attention_mask(valid: Tensor, q_len: int) -> Tensor:
    """Boolean mask [B, 1, Tq, S] for the last `q_len` of S positions: causal, padding keys hidden.

    A query always sees itself, so a padding row never attends to nothing (which would give NaN).
    """
    s = valid.shape[1]
    q_pos = torch.arange(s - q_len, s, device=valid.device)[:, None]  # [Tq, 1]
    k_pos = torch.arange(s, device=valid.device)[None, :]  # [1, S]
    causal = k_pos <= q_pos  # [Tq, S]
    mask = causal[None] & valid[:, None, :]  # [B, Tq, S]
    mask = mask | (k_pos == q_pos)[None]
    return mask[:, None]


def attention_mask_for(valid: Tensor, q_len: int, padded: bool) -> tuple[Tensor | None, bool]:
    """(mask, causal) for attending from the last `q_len` of the S positions `valid` [B, S].

    Without padding, one query (decoding) needs no mask: it sees every key; queries at all S
    positions need only SDPA's causal flag. Otherwise: the boolean mask of `attention_mask`
    (bottom-right-aligned causal, padding hidden).
    """
    if not padded and q_len == 1:
        return None, False
    if not padded and q_len == valid.shape[1]:
        return None, True
    return attention_mask(valid, q_len), False


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig | BitNetConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.qkv = linear(config, d, d + 2 * config.kv_heads * config.head_dim)  # q: H heads; k, v: Hkv heads
        self.out = linear(config, d, d)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, past: KVBuffer | None, mask: Tensor | None, causal: bool
    ) -> tuple[Tensor, KVBuffer]:
        """x [B, T, D]; `past` the layer's cache of S - T positions or None; `mask` [B, 1, T, S] or None."""
        b, t, _ = x.shape
        h, hkv, dh = self.config.n_heads, self.config.kv_heads, self.config.head_dim
        # split into heads, q and k rotated, in one op (C++ on CPU): q [B, H, T, Dh], k and v [B, Hkv, T, Dh]
        q, k, v = dispatch.choose("rotary_heads", x.device).fn(self.qkv(x), cos, sin, h, hkv)
        k, v = cache_rounded(k, self.config.kv_dtype), cache_rounded(v, self.config.kv_dtype)
        kv = KVBuffer.from_tensors(k, v) if past is None else past.append(k, v)
        y = attend(q, kv.keys, kv.values, mask, causal)  # [B, H, T, Dh]
        y = y.transpose(1, 2).reshape(b, t, h * dh)  # [B, T, D]
        return self.out(y), kv


class Block(nn.Module):
    def __init__(self, config: TransformerConfig | BitNetConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = ffn(config)

    def forward(self, x, cos, sin, past, mask, causal):
        a, kv = self.attn(self.attn_norm(x), cos, sin, past, mask, causal)
        x = x + a
        return residual_ffn(x, self.mlp_norm, self.mlp), kv


class Transformer(nn.Module):
    """Backbone contract: forward(h [B, T, D], state=None, valid=None) -> (out [B, T, D], KVCache)."""

    def __init__(self, config: TransformerConfig | BitNetConfig) -> None:
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
        padded = (state is not None and state.padded) or any_padding(valid)
        mask, causal = attention_mask_for(all_valid, t, padded)
        cos, sin = rotary_angles(torch.arange(start, start + t, device=h.device), self.config.head_dim,
                                 self.config.rope_theta)
        layers = []
        for i, block in enumerate(self.blocks):
            h, kv = block(h, cos, sin, state.layers[i] if state is not None else None, mask, causal)
            layers.append(kv)
        return self.norm(h), KVCache(layers, all_valid, padded)

    @staticmethod
    def state_nbytes(state: KVCache) -> int:
        """Bytes of the cached keys and values in use; `state.allocated_nbytes()` adds the spare room."""
        return state.nbytes()
