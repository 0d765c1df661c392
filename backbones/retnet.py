"""RetNet ("Retentive Network", Sun et al. 2023, arXiv 2307.08621): a pre-norm stack of multi-scale
retention and GLU MLP blocks, with a constant-size recurrent state.

Multi-scale retention, per layer and head h = 0..H-1:

- q = RoPE(W_q x), k = RoPE(W_k x) * d_head^-0.5, v = W_v x (RoPE is the rotation of
  `layers.rotary_angles`; its relative-position property is what keeps the three forms equal);
- a fixed decay gamma_h = 1 - 2^(-5-h), used as log gamma_h computed in float64, so that small
  2^(-5-h) are not lost to rounding;
- retention o = (q k^T ⊙ D) v, D[n, m] = gamma_h^(n-m) for n >= m (`latentlm.kernels.retention`,
  unnormalised);
- a per-head RMSNorm of o (the paper's GroupNorm with one group per head, without mean
  subtraction); it makes the layer invariant to the scale of o (up to its eps), so the ops need no
  normalisation;
- a swish gate: out = W_o (swish(W_g x) ⊙ norm(o)).

Forms, all the same function (to rounding):

- no state, T <= `PARALLEL_MAX_CHUNKS * chunk_size`: the parallel form (short sequences);
- no state, longer T: the chunkwise form (training and prefill of long sequences: time and memory
  linear in T);
- with a state: the recurrent form for T == 1 (decoding), the chunkwise form for T > 1.

Decoding (recurrent, T == 1, no padding mask) runs everything between the qkv projection and the
gate (rotary, state update, q S, head norm) as one op, "retention_step" (`latentlm.kernels.retention_step`:
fused C++ on CPU), since at batch 1 the ~15 small torch ops it replaces cost more than their maths.

`forward(..., form=...)` forces one of "parallel", "chunk", "recurrent" (tests, benchmarks).

The state holds, per layer, S [B, H, Dh, Dh] fp32, and the position offset: its size does not grow
with the sequence.

Padding: a position whose `valid` is False writes nothing into the state (its k and v are zeroed).
The decay still ticks over it, so such a position is invisible exactly when it comes before every
real token of its row, which is left padding (the collate function's layout): a left-padded row
gives the same outputs as the unpadded row, now and in every later call. (Its state is the same
up to the rotary turn of the pad length along the key axis, since rotary angles are absolute.)
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentlm.backbones.config import RetNetConfig
from latentlm.backbones.kv_cache import any_padding
from latentlm.backbones.layers import RMSNorm, ffn, linear, residual_ffn, rotary_angles
import latentlm.kernels.retention_step  # noqa: F401  (registers the retention_step implementations)
import latentlm.kernels.rotary_heads  # noqa: F401  (registers the rotary_heads implementations)
from latentlm.kernels import dispatch
from latentlm.kernels.retention import (  # importing registers the chunk_retention implementations
    parallel_retention,
    recurrent_retention,
    retention_final_state,
)

Form = Literal["parallel", "chunk", "recurrent"]
# Without a state, the parallel form is used up to this many chunks of `config.chunk_size`, and the
# chunkwise form beyond. Both compute the same function; the parallel form's [B, H, T, T] scores
# cost O(T^2) time and memory, the chunkwise form's O(T * chunk_size). Measured on CPU (fp32,
# forward + backward, one thread), the two are even at T = 2 chunks of 64 and the chunkwise form is
# 2-6x faster at T = 256, so the parallel form is kept for sequences that fit in one chunk.
PARALLEL_MAX_CHUNKS = 1


@functools.lru_cache(maxsize=16)
def retnet_log_decay(n_heads: int, device: torch.device | None = None) -> Tensor:
    """log gamma_h = log(1 - 2^(-5-h)), h = 0..n_heads-1: [H] fp32, computed in float64.

    Cached per (n_heads, device), so decoding does no host-to-device copy per step; not a buffer, so
    that casting the model to bf16 cannot round it. Read-only. Made outside inference mode, so that
    a first call under `torch.inference_mode()` cannot cache a tensor that training then rejects.
    """
    with torch.inference_mode(False):
        h = torch.arange(n_heads, dtype=torch.float64)
        return torch.log1p(-torch.pow(2.0, -5.0 - h)).to(torch.float32).to(device)


@dataclass
class RetNetState:
    """Everything RetNet needs to continue a sequence: constant size, whatever its length."""

    states: list[Tensor]  # per layer: S [B, H, Dh, Dh] fp32
    offset: int  # positions seen so far (left padding included): the next token's rotary position

    @property
    def length(self) -> int:
        return self.offset


class MultiScaleRetention(nn.Module):
    def __init__(self, config: RetNetConfig) -> None:
        super().__init__()
        self.config = config
        d, dh = config.d_model, config.head_dim
        self.qkv = linear(config, d, 3 * d)
        self.gate = linear(config, d, d)
        self.head_norm = RMSNorm(dh, config.norm_eps)
        self.out = linear(config, d, d)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, log_decay: Tensor, state: Tensor | None,
        valid: Tensor | None, form: Form,
    ) -> tuple[Tensor, Tensor]:
        """x [B, T, D]; state [B, H, Dh, Dh] or None; valid [B, T] (new positions) or None."""
        b, t, d = x.shape
        h, dh = self.config.n_heads, self.config.head_dim
        if form == "recurrent" and t == 1 and valid is None:  # decoding: one fused op (C++ on CPU)
            step = dispatch.choose("retention_step", x.device).fn
            o, state = step(self.qkv(x), cos, sin, log_decay, state, self.head_norm.weight, self.head_norm.eps)
            return self.out(F.silu(self.gate(x)) * o), state  # o [B, 1, D], state [B, H, Dh, Dh]
        q, k, v = dispatch.choose("rotary_heads", x.device).fn(self.qkv(x), cos, sin, h, h)  # each [B, H, T, Dh]
        k = k * dh**-0.5
        if valid is not None:  # padding writes nothing into the state
            pad = ~valid[:, None, :, None]  # [B, 1, T, 1]
            k = k.masked_fill(pad, 0)
            v = v.masked_fill(pad, 0)
        if form == "parallel":
            o = parallel_retention(q, k, v, log_decay)
            if state is not None:  # the parallel op starts from zero: add the past, gamma^(n+1) q_n S_0
                g = log_decay.float()[:, None]
                past = ((torch.arange(1, t + 1, device=x.device).float()[None] * g).exp()[..., None]
                        * q.float()) @ state.float()
                o = (o.float() + past).to(o.dtype)
            state = retention_final_state(k, v, log_decay, state)
        elif form == "recurrent":
            o, state = recurrent_retention(q, k, v, log_decay, state)
        else:
            chunked = dispatch.choose("chunk_retention", x.device).fn  # Triton on GPU, else the reference
            o, state = chunked(q, k, v, log_decay, self.config.chunk_size, state)
        o = self.head_norm(o).transpose(1, 2).reshape(b, t, d)
        return self.out(F.silu(self.gate(x)) * o), state


class Block(nn.Module):
    def __init__(self, config: RetNetConfig) -> None:
        super().__init__()
        self.retention_norm = RMSNorm(config.d_model, config.norm_eps)
        self.retention = MultiScaleRetention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = ffn(config)

    def forward(self, x, cos, sin, log_decay, state, valid, form):
        a, state = self.retention(self.retention_norm(x), cos, sin, log_decay, state, valid, form)
        x = x + a
        return residual_ffn(x, self.mlp_norm, self.mlp), state


class RetNet(nn.Module):
    """Backbone contract: forward(h [B, T, D], state=None, valid=None) -> (out [B, T, D], RetNetState)."""

    def __init__(self, config: RetNetConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)

    def choose_form(self, t: int, state: RetNetState | None) -> Form:
        if state is None:
            return "parallel" if t <= PARALLEL_MAX_CHUNKS * self.config.chunk_size else "chunk"
        return "recurrent" if t == 1 else "chunk"

    def forward(
        self, h: Tensor, state: RetNetState | None = None, valid: Tensor | None = None, form: Form | None = None
    ) -> tuple[Tensor, RetNetState]:
        """`valid` [B, T] marks real tokens (False at left padding); padding never contributes.

        `form` forces the retention form (None: chosen from T and whether a state is given).
        """
        cfg = self.config
        t = h.shape[1]
        form = form or self.choose_form(t, state)
        if form not in ("parallel", "chunk", "recurrent"):
            raise ValueError(f"form must be 'parallel', 'chunk' or 'recurrent', got {form!r}")
        if form == "recurrent" and t == 1 and not any_padding(valid):
            valid = None  # masks nothing; without it the step takes the fused op
        start = state.offset if state is not None else 0
        cos, sin = rotary_angles(torch.arange(start, start + t, device=h.device), cfg.head_dim, cfg.rope_theta)
        log_decay = retnet_log_decay(cfg.n_heads, h.device)
        states = []
        for i, block in enumerate(self.blocks):
            h, s = block(h, cos, sin, log_decay, state.states[i] if state is not None else None, valid, form)
            states.append(s)
        return self.norm(h), RetNetState(states, start + t)

    @staticmethod
    def state_nbytes(state: RetNetState) -> int:
        return sum(s.numel() * s.element_size() for s in state.states)
