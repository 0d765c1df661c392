"""The reference backbone: a pre-norm Transformer with RoPE, SDPA and a KV cache."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentlm.backbones.config import BackboneConfig
from latentlm.backbones.layers import RMSNorm, apply_rotary, ffn, linear, rotary_angles


@dataclass
class KVCache:
    """Keys and values of every layer so far, and which key positions are real (not padding)."""

    keys: list[Tensor]  # per layer [B, H, S, Dh]
    values: list[Tensor]  # per layer [B, H, S, Dh]
    valid: Tensor  # [B, S] bool

    @property
    def length(self) -> int:
        return self.valid.shape[1]


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


class Attention(nn.Module):
    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.qkv = linear(config, d, 3 * d)
        self.out = linear(config, d, d)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, past: tuple[Tensor, Tensor] | None, mask: Tensor | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        b, t, _ = x.shape
        h, dh = self.config.n_heads, self.config.head_dim
        q, k, v = self.qkv(x).view(b, t, 3, h, dh).permute(2, 0, 3, 1, 4)  # each [B, H, T, Dh]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # [B, H, S, Dh]
            v = torch.cat([past[1], v], dim=2)
        if mask is None:  # no padding and no cache: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(b, t, h * dh)  # [B, T, D]
        return self.out(y), (k, v)


class Block(nn.Module):
    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = ffn(config)

    def forward(self, x, cos, sin, past, mask):
        a, kv = self.attn(self.attn_norm(x), cos, sin, past, mask)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), kv


class Transformer(nn.Module):
    """Backbone contract: forward(h [B, T, D], state=None, valid=None) -> (out [B, T, D], KVCache)."""

    def __init__(self, config: BackboneConfig) -> None:
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
        plain = state is None and valid is None
        mask = None if plain else attention_mask(all_valid, t)
        cos, sin = rotary_angles(torch.arange(start, start + t, device=h.device), self.config.head_dim,
                                 self.config.rope_theta)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            past = (state.keys[i], state.values[i]) if state is not None else None
            h, (k, v) = block(h, cos, sin, past, mask)
            keys.append(k)
            values.append(v)
        return self.norm(h), KVCache(keys, values, all_valid)

    @staticmethod
    def state_nbytes(state: KVCache) -> int:
        return sum(t.numel() * t.element_size() for t in state.keys + state.values)
