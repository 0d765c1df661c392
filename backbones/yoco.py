"""YOCO ("You Only Cache Once", Sun et al. 2024): a decoder-decoder backbone.

- Self-decoder, the first `n_layers // 2` layers: pre-norm blocks whose token mixer is gated
  retention (`self_decoder="gated_retention"`, constant-size state) or sliding-window attention
  (`self_decoder="sliding_window"`, a cache of the last `window` keys/values), each followed by the GLU MLP (SwiGLU, or ReLU^2 for BitNet).
- One global KV cache, computed once from the self-decoder's output after an RMSNorm
  (k = W_k x with RoPE, v = W_v x) and shared by every cross-decoder layer. It has `n_kv_heads`
  heads (grouped-query attention, as YOCO 3B's 8 KV heads for 24 query heads; default n_heads) and
  grows in place while decoding (`KVBuffer`). `kv_dtype="float16"` stores it in half precision
  (keys and values rounded in every forward, so decoding still equals the full forward): half the
  state, and half the bytes a decoded token reads (BENCHMARKS.md "Backbones"). `kv_dtype="bfloat16"`
  as well, and on CPUs with AVX-512 BF16 the cross-decoder's attention then computes in bf16: the
  fastest decoding, equal to the full forward to bf16 precision.
- Cross-decoder, the remaining layers: pre-norm blocks of causal cross-attention from the layer's
  queries to the global KV (the query at position n sees global keys 0..n), each followed by the GLU MLP (SwiGLU, or ReLU^2 for BitNet).
- A final RMSNorm.

So the cache that grows with the sequence is one layer's worth of keys and values, not `n_layers`.

Prefill early exit: the global KV does not depend on the cross-decoder, so when only the prompt's
last output is needed (to predict the next token), `forward(..., early_exit=True)` runs the
self-decoder and the global KV over all of `h` but the cross-decoder only at the last position, and
returns outputs of shape [B, 1, D]. The state it returns is the same as without early exit, so the
decoding that follows gives the same results.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentlm.backbones.attention import attend
from latentlm.backbones.config import YOCOConfig
from latentlm.backbones.kv_cache import KVBuffer, any_padding, cache_rounded
from latentlm.backbones.layers import RMSNorm, ffn, linear, residual_ffn, rotary_angles
from latentlm.backbones.transformer import attention_mask_for
import latentlm.kernels.gated_retention_step  # noqa: F401  (registers the gated_retention_step implementations)
import latentlm.kernels.rotary_heads  # noqa: F401  (registers the rotary_heads implementations)
from latentlm.kernels import dispatch
from latentlm.kernels.gated_retention import recurrent_gated_retention

GATE_LOGIT_NORMALIZER = 16.0  # log decay = logsigmoid(W_g x) / 16, as in YOCO's gRet


@dataclass(frozen=True)
class YOCOState:
    """Everything YOCO needs to continue a sequence of `length` positions.

    The position offset of the next token is `length`; `valid` marks which past positions are real
    (False at left padding), `padded` whether any is not (a Python bool: decoding needs no sync).
    """

    self_states: list  # per self-decoder layer: gated retention, Tensor [B, H, Dh, Dh] fp32;
    #                    sliding window, (keys, values) each [B, H, min(length, window), Dh]
    kv: KVBuffer  # the global KV cache, n_kv_heads heads (RoPE applied to the keys)
    valid: Tensor  # [B, S] bool
    padded: bool

    @classmethod
    def from_tensors(cls, self_states: list, keys: Tensor, values: Tensor, valid: Tensor) -> "YOCOState":
        """A state from the self-decoder states, global keys and values [B, Hkv, S, Dh] and `valid` [B, S]."""
        if keys.shape[2] != valid.shape[1]:
            raise ValueError(f"keys hold {keys.shape[2]} positions but valid has {valid.shape[1]}")
        return cls(self_states, KVBuffer.from_tensors(keys, values), valid, any_padding(valid))

    @property
    def keys(self) -> Tensor:
        return self.kv.keys  # [B, Hkv, S, Dh]

    @property
    def values(self) -> Tensor:
        return self.kv.values  # [B, Hkv, S, Dh]

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def allocated_nbytes(self) -> int:
        """Bytes allocated for the state's tensors, the global KV's spare room for decoding included."""
        return self.kv.allocated_nbytes() + sum(x.numel() * x.element_size() for x in self.tensors()[2:])

    def tensors(self) -> list[Tensor]:
        out = [self.keys, self.values]
        for s in self.self_states:
            out.extend(s if isinstance(s, tuple) else (s,))
        return out


def window_mask(valid: Tensor, q_len: int, window: int) -> Tensor:
    """Boolean mask [B, 1, Tq, S] for the last `q_len` of the S positions whose validity is `valid`
    [B, S]: each query sees the real keys among itself and the `window - 1` positions before it.

    A query always sees itself, so a padding row never attends to nothing.
    """
    s = valid.shape[1]
    q_pos = torch.arange(s - q_len, s, device=valid.device)[:, None]
    k_pos = torch.arange(s, device=valid.device)[None, :]
    band = (k_pos <= q_pos) & (k_pos > q_pos - window)  # [Tq, S]
    return ((band[None] & valid[:, None, :]) | (k_pos == q_pos)[None])[:, None]


class GatedRetention(nn.Module):
    """Multi-head gated retention (YOCO's gRet): q, k with RoPE, a data-dependent scalar decay per
    head and token, per-head RMSNorm of the output and a swish output gate."""

    def __init__(self, config: YOCOConfig) -> None:
        super().__init__()
        self.config = config
        d, h, dh = config.d_model, config.n_heads, config.head_dim
        self.qkv = linear(config, d, 3 * d)
        self.gate = linear(config, d, d)  # output gate
        self.decay = linear(config, d, h)  # decay logits, one per head
        self.head_norm = RMSNorm(dh, config.norm_eps)
        self.out = linear(config, d, d)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, state: Tensor | None, valid: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """x [B, T, D]; state [B, H, Dh, Dh] or None; valid [B, T] (new positions only) or None."""
        b, t, d = x.shape
        h, dh = self.config.n_heads, self.config.head_dim
        if t == 1 and state is not None and valid is None:  # decoding: one fused op (C++ on CPU)
            step = dispatch.choose("gated_retention_step", x.device).fn
            o, state = step(self.qkv(x), self.decay(x), cos, sin, state, self.head_norm.weight, self.head_norm.eps,
                            GATE_LOGIT_NORMALIZER)
            return self.out(F.silu(self.gate(x)) * o), state  # o [B, 1, D], state [B, H, Dh, Dh]
        q, k, v = dispatch.choose("rotary_heads", x.device).fn(self.qkv(x), cos, sin, h, h)  # each [B, H, T, Dh]
        k = k * dh**-0.5
        log_decay = F.logsigmoid(self.decay(x).float()).transpose(1, 2) / GATE_LOGIT_NORMALIZER  # [B, H, T]
        if valid is not None:
            # A padding position is a no-op on the state: nothing written (k = v = 0), nothing decayed.
            pad = ~valid[:, None, :]
            k = k.masked_fill(pad[..., None], 0)
            v = v.masked_fill(pad[..., None], 0)
            log_decay = log_decay.masked_fill(pad, 0)
        if t == 1 and state is not None:
            o, state = recurrent_gated_retention(q, k, v, log_decay, state)
        else:
            chunked = dispatch.choose("chunk_gated_retention", x.device).fn  # Triton on GPU, else the reference
            o, state = chunked(q, k, v, log_decay, self.config.chunk_size, state)
        o = self.head_norm(o).transpose(1, 2).reshape(b, t, d)
        return self.out(F.silu(self.gate(x)) * o), state


class SlidingWindowAttention(nn.Module):
    """Causal attention over the last `config.window` positions (the query's own included)."""

    def __init__(self, config: YOCOConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.qkv = linear(config, d, 3 * d)
        self.out = linear(config, d, d)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, past: tuple[Tensor, Tensor] | None, mask: Tensor | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        b, t, _ = x.shape
        h, dh, w = self.config.n_heads, self.config.head_dim, self.config.window
        q, k, v = dispatch.choose("rotary_heads", x.device).fn(self.qkv(x), cos, sin, h, h)  # each [B, H, T, Dh]
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        if mask is None and (past is not None or t > w):  # SDPA's causal flag knows no cache and no window
            mask = window_mask(torch.ones(b, k.shape[2], dtype=torch.bool, device=x.device), t, w)
        y = attend(q, k, v, mask, causal=mask is None)  # no mask left: no cache, no padding, T <= window
        y = y.transpose(1, 2).reshape(b, t, h * dh)
        return self.out(y), (k[:, :, -w:], v[:, :, -w:])


class CrossAttention(nn.Module):
    """Queries of this layer (n_heads) against the shared global keys/values (n_kv_heads)."""

    def __init__(self, config: YOCOConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.q = linear(config, d, d)
        self.out = linear(config, d, d)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None, causal: bool
    ) -> Tensor:
        """x [B, T, D]; keys, values [B, Hkv, S, Dh]; mask [B, 1, T, S] or None (see `attention_mask_for`)."""
        b, t, _ = x.shape
        h, dh = self.config.n_heads, self.config.head_dim
        q, _, _ = dispatch.choose("rotary_heads", x.device).fn(self.q(x), cos, sin, h, 0)  # [B, H, T, Dh]
        y = attend(q, keys, values, mask, causal)
        return self.out(y.transpose(1, 2).reshape(b, t, h * dh))


class SelfBlock(nn.Module):
    def __init__(self, config: YOCOConfig) -> None:
        super().__init__()
        self.mixer_norm = RMSNorm(config.d_model, config.norm_eps)
        if config.self_decoder == "gated_retention":
            self.mixer = GatedRetention(config)
        else:
            self.mixer = SlidingWindowAttention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = ffn(config)

    def forward(self, x, cos, sin, state, aux):
        a, state = self.mixer(self.mixer_norm(x), cos, sin, state, aux)
        x = x + a
        return residual_ffn(x, self.mlp_norm, self.mlp), state


class CrossBlock(nn.Module):
    def __init__(self, config: YOCOConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = CrossAttention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = ffn(config)

    def forward(self, x, cos, sin, keys, values, mask, causal):
        x = x + self.attn(self.attn_norm(x), cos, sin, keys, values, mask, causal)
        return residual_ffn(x, self.mlp_norm, self.mlp)


class YOCO(nn.Module):
    """Backbone contract: forward(h [B, T, D], state=None, valid=None, early_exit=False)
    -> (out [B, T, D], YOCOState), or out [B, 1, D] (the last position only) when early_exit=True."""

    def __init__(self, config: YOCOConfig) -> None:
        super().__init__()
        self.config = config
        n_self = config.n_layers // 2
        d = config.d_model
        self.self_blocks = nn.ModuleList(SelfBlock(config) for _ in range(n_self))
        self.kv_norm = RMSNorm(d, config.norm_eps)
        self.kv = linear(config, d, 2 * config.kv_heads * config.head_dim)  # the global KV projection, once
        self.cross_blocks = nn.ModuleList(CrossBlock(config) for _ in range(config.n_layers - n_self))
        self.norm = RMSNorm(d, config.norm_eps)

    def forward(
        self, h: Tensor, state: YOCOState | None = None, valid: Tensor | None = None, early_exit: bool = False
    ) -> tuple[Tensor, YOCOState]:
        """`valid` [B, T] marks real tokens (False at left padding); padding never contributes.

        `early_exit=True` skips the cross-decoder everywhere but the last position of `h`; the
        output is then [B, 1, D] and the returned state is unchanged by the skip.
        """
        cfg = self.config
        b, t, _ = h.shape
        start = state.length if state is not None else 0
        new_valid = valid if valid is not None else torch.ones(b, t, dtype=torch.bool, device=h.device)
        all_valid = new_valid if state is None else torch.cat([state.valid, new_valid], dim=1)  # [B, S]
        plain = state is None and valid is None
        new_padding = any_padding(valid)
        padded = (state is not None and state.padded) or new_padding
        cos, sin = rotary_angles(torch.arange(start, start + t, device=h.device), cfg.head_dim, cfg.rope_theta)

        # Self-decoder.
        if cfg.self_decoder == "gated_retention":
            # only the new positions matter (the past lives in the recurrent state); an all-True `valid`
            # masks nothing, and without it a decoding step takes the fused op
            aux = valid if new_padding else None
        else:
            past_len = min(start, cfg.window)
            aux = None if plain and t <= cfg.window else window_mask(all_valid[:, start - past_len:], t, cfg.window)
        self_states = []
        x = h
        for i, block in enumerate(self.self_blocks):
            x, s = block(x, cos, sin, state.self_states[i] if state is not None else None, aux)
            self_states.append(s)

        # The global KV, once.
        rotary_heads = dispatch.choose("rotary_heads", x.device).fn  # k rotated; k, v each [B, Hkv, T, Dh]
        _, k, v = rotary_heads(self.kv(self.kv_norm(x)), cos, sin, 0, cfg.kv_heads)
        k, v = cache_rounded(k, cfg.kv_dtype), cache_rounded(v, cfg.kv_dtype)
        kv = KVBuffer.from_tensors(k, v) if state is None else state.kv.append(k, v)
        new_state = YOCOState(self_states, kv, all_valid, padded)

        # Cross-decoder.
        if early_exit:
            x, cos, sin, q_len = x[:, -1:], cos[-1:], sin[-1:], 1
        else:
            q_len = t
        mask, causal = attention_mask_for(all_valid, q_len, padded)
        keys, values = kv.keys, kv.values  # [B, Hkv, S, Dh]
        for block in self.cross_blocks:
            x = block(x, cos, sin, keys, values, mask, causal)
        return self.norm(x), new_state

    def prefill(self, h: Tensor, valid: Tensor | None = None, early_exit: bool = True) -> tuple[Tensor, YOCOState]:
        """Process a prompt; with early exit (the default) only its last output is computed: [B, 1, D]."""
        return self.forward(h, None, valid, early_exit=early_exit)

    @staticmethod
    def state_nbytes(state: YOCOState) -> int:
        """Bytes of the state's tensors: the global KV in use plus the self-decoder states (like
        `Transformer.state_nbytes`, the small [B, S] bool `valid` mask is not counted).
        `state.allocated_nbytes()` adds the global KV's spare room."""
        return sum(x.numel() * x.element_size() for x in state.tensors())
