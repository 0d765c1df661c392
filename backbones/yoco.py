"""YOCO ("You Only Cache Once", Sun et al. 2024): a decoder-decoder backbone.

- Self-decoder, the first `n_layers // 2` layers: pre-norm blocks whose token mixer is gated
  retention (`self_decoder="gated_retention"`, constant-size state) or sliding-window attention
  (`self_decoder="sliding_window"`, a cache of the last `window` keys/values), each followed by the GLU MLP (SwiGLU, or ReLU^2 for BitNet).
- One global KV cache, computed once from the self-decoder's output after an RMSNorm
  (k = W_k x with RoPE, v = W_v x) and shared by every cross-decoder layer.
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

from latentlm.backbones.config import BackboneConfig
from latentlm.backbones.layers import RMSNorm, apply_rotary, ffn, linear, rotary_angles
from latentlm.backbones.transformer import attention_mask
from latentlm.kernels import dispatch
from latentlm.kernels.gated_retention import recurrent_gated_retention

GATE_LOGIT_NORMALIZER = 16.0  # log decay = logsigmoid(W_g x) / 16, as in YOCO's gRet


@dataclass
class YOCOState:
    """Everything YOCO needs to continue a sequence of `length` positions.

    The position offset of the next token is `length`; `valid` marks which past positions are real
    (False at left padding).
    """

    self_states: list  # per self-decoder layer: gated retention, Tensor [B, H, Dh, Dh] fp32;
    #                    sliding window, (keys, values) each [B, H, min(length, window), Dh]
    keys: Tensor  # the global KV cache: [B, H, S, Dh] (RoPE applied)
    values: Tensor  # [B, H, S, Dh]
    valid: Tensor  # [B, S] bool

    @property
    def length(self) -> int:
        return self.valid.shape[1]

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

    def __init__(self, config: BackboneConfig) -> None:
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
        q, k, v = self.qkv(x).view(b, t, 3, h, dh).permute(2, 0, 3, 1, 4)  # each [B, H, T, Dh]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin) * dh**-0.5
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
        h, dh, w = self.config.n_heads, self.config.head_dim, self.config.window
        q, k, v = self.qkv(x).view(b, t, 3, h, dh).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        if mask is None:  # no cache, no padding, T <= window: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(b, t, h * dh)
        return self.out(y), (k[:, :, -w:], v[:, :, -w:])


class CrossAttention(nn.Module):
    """Queries of this layer against the shared global keys/values."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.q = linear(config, d, d)
        self.out = linear(config, d, d)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        b, t, _ = x.shape
        h, dh = self.config.n_heads, self.config.head_dim
        q = apply_rotary(self.q(x).view(b, t, h, dh).transpose(1, 2), cos, sin)
        if mask is None:  # queries and keys are the same positions, no padding
            y = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, t, h * dh))


class SelfBlock(nn.Module):
    def __init__(self, config: BackboneConfig) -> None:
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
        return x + self.mlp(self.mlp_norm(x)), state


class CrossBlock(nn.Module):
    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = CrossAttention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = ffn(config)

    def forward(self, x, cos, sin, keys, values, mask):
        x = x + self.attn(self.attn_norm(x), cos, sin, keys, values, mask)
        return x + self.mlp(self.mlp_norm(x))


class YOCO(nn.Module):
    """Backbone contract: forward(h [B, T, D], state=None, valid=None, early_exit=False)
    -> (out [B, T, D], YOCOState), or out [B, 1, D] (the last position only) when early_exit=True."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        n_self = config.n_layers // 2
        d = config.d_model
        self.self_blocks = nn.ModuleList(SelfBlock(config) for _ in range(n_self))
        self.kv_norm = RMSNorm(d, config.norm_eps)
        self.kv = linear(config, d, 2 * d)  # the global KV projection, applied once
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
        cos, sin = rotary_angles(torch.arange(start, start + t, device=h.device), cfg.head_dim, cfg.rope_theta)

        # Self-decoder.
        if cfg.self_decoder == "gated_retention":
            aux = valid  # only the new positions matter: the past lives in the recurrent state
        else:
            past_len = min(start, cfg.window)
            aux = None if plain and t <= cfg.window else window_mask(all_valid[:, start - past_len:], t, cfg.window)
        self_states = []
        x = h
        for i, block in enumerate(self.self_blocks):
            x, s = block(x, cos, sin, state.self_states[i] if state is not None else None, aux)
            self_states.append(s)

        # The global KV, once.
        hd, nh = cfg.head_dim, cfg.n_heads
        k, v = self.kv(self.kv_norm(x)).view(b, t, 2, nh, hd).permute(2, 0, 3, 1, 4)  # each [B, H, T, Dh]
        k = apply_rotary(k, cos, sin)
        if state is not None:
            k = torch.cat([state.keys, k], dim=2)
            v = torch.cat([state.values, v], dim=2)
        new_state = YOCOState(self_states, k, v, all_valid)

        # Cross-decoder.
        if early_exit:
            x, cos, sin, q_len = x[:, -1:], cos[-1:], sin[-1:], 1
        else:
            q_len = t
        mask = None if plain and not early_exit else attention_mask(all_valid, q_len)
        for block in self.cross_blocks:
            x = block(x, cos, sin, k, v, mask)
        return self.norm(x), new_state

    def prefill(self, h: Tensor, valid: Tensor | None = None, early_exit: bool = True) -> tuple[Tensor, YOCOState]:
        """Process a prompt; with early exit (the default) only its last output is computed: [B, 1, D]."""
        return self.forward(h, None, valid, early_exit=early_exit)

    @staticmethod
    def state_nbytes(state: YOCOState) -> int:
        """Bytes of the state's tensors: the global KV plus the self-decoder states (like
        `Transformer.state_nbytes`, the small [B, S] bool `valid` mask is not counted)."""
        return sum(x.numel() * x.element_size() for x in state.tensors())
