"""Backbone configuration, shared by every kind (DESIGN.md §3)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

BackboneKind = Literal["transformer", "retnet", "yoco", "longnet", "bitnet"]
GQA_KINDS = ("transformer", "bitnet", "yoco")  # the kinds with grouped-query attention (n_kv_heads)


class BackboneConfig(BaseModel):
    """One causal sequence model. `kind` picks the architecture; sizes are shared by all kinds."""

    kind: BackboneKind = "transformer"
    d_model: int = Field(256, ge=8)
    n_layers: int = Field(4, ge=1)
    n_heads: int = Field(4, ge=1)
    # Grouped-query attention: key/value heads, each shared by n_heads // n_kv_heads query heads (None:
    # n_heads, plain multi-head attention). Transformer, BitNet and YOCO's global KV only.
    n_kv_heads: int | None = Field(None, ge=1)
    # Storage of the KV cache (Transformer, BitNet; YOCO's global KV). "float16" and "bfloat16" round the
    # keys and values to that dtype in every forward (gradients pass straight through) and cache them so:
    # half the state and half the bytes each decoded token reads. With float16, decoding still equals the
    # full forward, which sees the same rounded values. With bfloat16, the CPU decode kernel also computes
    # in bf16 where the CPU has AVX-512 BF16 and the heads come in groups of 4 per KV head with a head dim
    # that is a multiple of 32 (queries and softmax weights rounded, as bf16 attention on GPUs): the
    # fastest decoding, matching the full forward to bf16 precision (~1e-2), not exactly.
    kv_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    ffn_mult: float = Field(8 / 3, gt=0)  # GLU hidden = ffn_mult * d_model, rounded to 8
    ffn_act: Literal["swiglu", "relu2"] = "swiglu"  # relu2: squared-ReLU GLU (BitNet b1.58)
    rope_theta: float = Field(10_000.0, gt=0)
    norm_eps: float = Field(1e-6, gt=0)
    ternary: bool = False  # BitNet b1.58 weights (BitLinear) for every projection

    # RetNet, YOCO: chunk size of the chunkwise retention form (used whenever T > chunk_size).
    chunk_size: int = Field(64, ge=1)
    # YOCO: the self-decoder's token mixer, and its window when sliding-window attention is chosen.
    self_decoder: Literal["gated_retention", "sliding_window"] = "gated_retention"
    window: int = Field(1024, ge=1)
    # LongNet: geometric segment lengths w_i and dilation rates r_i, one pair per pattern.
    segment_lengths: list[int] = Field(default_factory=lambda: [2048, 4096, 8192, 16384])
    dilation_rates: list[int] = Field(default_factory=lambda: [1, 2, 4, 8])

    @model_validator(mode="after")
    def _check(self) -> "BackboneConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dim {self.d_model // self.n_heads} must be even for rotary embeddings")
        if self.n_kv_heads is not None:
            if self.kind not in GQA_KINDS:
                raise ValueError(f"n_kv_heads={self.n_kv_heads} applies to {', '.join(GQA_KINDS[:-1])} and "
                                 f"{GQA_KINDS[-1]} (grouped-query attention); kind {self.kind!r} has no KV heads: "
                                 "leave n_kv_heads unset")
            if self.n_heads % self.n_kv_heads:
                raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads} "
                                 "(each KV head serves the same number of query heads)")
        if self.kv_dtype != "float32" and self.kind not in GQA_KINDS:
            raise ValueError(f"kv_dtype={self.kv_dtype!r} applies to the KV caches of {', '.join(GQA_KINDS[:-1])} and "
                             f"{GQA_KINDS[-1]}; kind {self.kind!r} keeps its state in float32: leave kv_dtype unset")
        if len(self.segment_lengths) != len(self.dilation_rates) or not self.segment_lengths:
            raise ValueError("segment_lengths and dilation_rates need one entry per pattern, equally many")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads of attention: n_kv_heads, or n_heads when unset."""
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_dim(self) -> int:
        return int(round(self.ffn_mult * self.d_model / 8)) * 8
