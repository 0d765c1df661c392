"""Backbone configuration: one pydantic model per kind, a discriminated union on `kind` (docs/design.md §3).

`BackboneConfig` is the base of every kind and holds the fields all kinds share (sizes, FFN, RoPE, norm,
ternary weights). Each kind's model adds only the fields its implementation reads, so a saved config
(`config.json`, `model_dump()`) holds the fields of its own kind and no other:

    kind          fields besides the shared ones
    transformer   n_kv_heads, kv_dtype                                      (TransformerConfig)
    bitnet        n_kv_heads, kv_dtype                                      (BitNetConfig)
    retnet        chunk_size                                                (RetNetConfig)
    yoco          n_kv_heads, kv_dtype, chunk_size, self_decoder, window    (YOCOConfig)
    longnet       segment_lengths, dilation_rates                           (LongNetConfig)

`BackboneConfig` is used as before:
- called, `BackboneConfig(kind="retnet", d_model=...)` returns the model of that kind (a `RetNetConfig`);
  `kind` defaults to "transformer". `BackboneConfig.model_validate(dict)` likewise.
- as a field type (`backbone: BackboneConfig = BackboneConfig()`), it validates as the discriminated
  union `AnyBackboneConfig`: the dict's `kind` (default "transformer") picks the model.
- `isinstance(config, BackboneConfig)` holds for every kind.

A field of another kind (`window` for a transformer) is an error that names the field and the kinds it
applies to; an unknown field is an error too. The one exception is a config saved before configs were
split by kind: those saved every field of every kind, and the fields of other kinds are dropped when
they hold the old defaults (`drop_legacy_fields`), so old checkpoints keep loading.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args

from pydantic import (
    BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, model_validator,
)

BackboneKind = Literal["transformer", "retnet", "yoco", "longnet", "bitnet"]
GQA_KINDS = ("transformer", "bitnet", "yoco")  # the kinds with grouped-query attention (n_kv_heads)
DEFAULT_KIND = "transformer"

# Set once every kind's model exists (end of this module); until then `BackboneConfig` builds its own schema.
_UNION: Any = None
_ADAPTER: TypeAdapter | None = None


class BackboneConfig(BaseModel):
    """One causal sequence model: the fields every kind shares; `kind` picks the architecture.

    The base of the per-kind models. Calling it (or `model_validate`) returns the model of the given
    `kind`; as a pydantic field type it is the discriminated union of all kinds."""

    model_config = ConfigDict(extra="forbid")

    kind: BackboneKind = DEFAULT_KIND
    d_model: int = Field(256, ge=8)
    n_layers: int = Field(4, ge=1)
    n_heads: int = Field(4, ge=1)
    ffn_mult: float = Field(8 / 3, gt=0)  # GLU hidden = ffn_mult * d_model, rounded to 8
    ffn_act: Literal["swiglu", "relu2"] = "swiglu"  # relu2: squared-ReLU GLU (BitNet b1.58)
    rope_theta: float = Field(10_000.0, gt=0)
    norm_eps: float = Field(1e-6, gt=0)
    ternary: bool = False  # BitNet b1.58 weights (BitLinear) for every projection

    def __new__(cls, *args: Any, **data: Any) -> "BackboneConfig":
        if cls is BackboneConfig:  # BackboneConfig(kind=...) builds that kind's model (its __init__ validates)
            kind = data.get("kind", DEFAULT_KIND)
            cls = BACKBONE_CONFIGS.get(kind, cls) if isinstance(kind, str) else cls
        return super().__new__(cls)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        if _UNION is not None and cls is BackboneConfig:  # a field typed BackboneConfig: the union of kinds
            return handler.generate_schema(_UNION)
        return handler(source)

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> "BackboneConfig":
        if cls is BackboneConfig and _ADAPTER is not None:
            return _ADAPTER.validate_python(obj, **kwargs)
        return super().model_validate(obj, **kwargs)

    @classmethod
    def model_validate_json(cls, json_data: Any, **kwargs: Any) -> "BackboneConfig":
        if cls is BackboneConfig and _ADAPTER is not None:
            return _ADAPTER.validate_json(json_data, **kwargs)
        return super().model_validate_json(json_data, **kwargs)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if cls is BackboneConfig and _ADAPTER is not None:
            return _ADAPTER.json_schema(*args, **kwargs)
        return super().model_json_schema(*args, **kwargs)

    @model_validator(mode="before")
    @classmethod
    def _own_fields_only(cls, data: Any) -> Any:
        """Drop an old full dump's other-kind fields at their old defaults; any other field of another
        kind is an error naming it (unknown fields fail as extra inputs)."""
        if cls is BackboneConfig or cls not in BACKBONE_CONFIGS.values() or not isinstance(data, dict):
            return data
        data = drop_legacy_fields(data, cls)
        for name in data:
            if name not in cls.model_fields and name in FIELD_KINDS:
                raise ValueError(f"{name} applies to {_join(FIELD_KINDS[name])}; kind {cls._kind()!r} has no "
                                 f"{name}: leave it out")
        return data

    @model_validator(mode="after")
    def _check_heads(self) -> "BackboneConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dim {self.d_model // self.n_heads} must be even for rotary embeddings")
        return self

    @classmethod
    def _kind(cls) -> str:
        return cls.model_fields["kind"].default

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads of attention: n_kv_heads where the kind has grouped-query attention and it
        is set, else n_heads."""
        return self.n_heads

    @property
    def ffn_dim(self) -> int:
        return int(round(self.ffn_mult * self.d_model / 8)) * 8


class _GroupedQueryConfig(BackboneConfig):
    """The fields of the kinds with grouped-query attention: Transformer, BitNet, YOCO (its global KV)."""

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

    @model_validator(mode="after")
    def _check_kv_heads(self) -> "_GroupedQueryConfig":
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads} "
                             "(each KV head serves the same number of query heads)")
        return self

    @property
    def kv_heads(self) -> int:
        """Key/value heads of attention: n_kv_heads, or n_heads when unset."""
        return self.n_kv_heads or self.n_heads


class TransformerConfig(_GroupedQueryConfig):
    """Pre-norm Transformer with RoPE and a GLU FFN."""

    kind: Literal["transformer"] = "transformer"


class BitNetConfig(_GroupedQueryConfig):
    """BitNet b1.58: the Transformer with ternary projections and a squared-ReLU GLU (`build_backbone`
    sets both whatever `ternary` and `ffn_act` say)."""

    kind: Literal["bitnet"] = "bitnet"


class RetNetConfig(BackboneConfig):
    """RetNet: multi-scale retention."""

    kind: Literal["retnet"] = "retnet"
    # Chunk size of the chunkwise retention form (used whenever T > chunk_size).
    chunk_size: int = Field(64, ge=1)


class YOCOConfig(_GroupedQueryConfig):
    """YOCO: a self-decoder (gated retention or sliding-window attention), then a cross-decoder over
    one global KV cache (grouped-query: n_kv_heads, stored as kv_dtype)."""

    kind: Literal["yoco"] = "yoco"
    # Chunk size of the self-decoder's chunkwise gated retention (used whenever T > chunk_size).
    chunk_size: int = Field(64, ge=1)
    # The self-decoder's token mixer, and its window when sliding-window attention is chosen.
    self_decoder: Literal["gated_retention", "sliding_window"] = "gated_retention"
    window: int = Field(1024, ge=1)


class LongNetConfig(BackboneConfig):
    """LongNet: dilated attention."""

    kind: Literal["longnet"] = "longnet"
    # Geometric segment lengths w_i and dilation rates r_i, one pair per pattern.
    segment_lengths: list[int] = Field(default_factory=lambda: [2048, 4096, 8192, 16384])
    dilation_rates: list[int] = Field(default_factory=lambda: [1, 2, 4, 8])

    @model_validator(mode="after")
    def _check_patterns(self) -> "LongNetConfig":
        if len(self.segment_lengths) != len(self.dilation_rates) or not self.segment_lengths:
            raise ValueError("segment_lengths and dilation_rates need one entry per pattern, equally many")
        return self


# Every kind's model, in the order error messages list kinds.
BACKBONE_CONFIGS: dict[str, type[BackboneConfig]] = {
    "transformer": TransformerConfig, "bitnet": BitNetConfig, "retnet": RetNetConfig, "yoco": YOCOConfig,
    "longnet": LongNetConfig,
}
_SHARED_FIELDS = frozenset(BackboneConfig.model_fields)
# Each field that only some kinds have -> those kinds.
FIELD_KINDS: dict[str, tuple[str, ...]] = {}
for _kind, _model in BACKBONE_CONFIGS.items():
    for _name in _model.model_fields:
        if _name not in _SHARED_FIELDS:
            FIELD_KINDS[_name] = FIELD_KINDS.get(_name, ()) + (_kind,)

# Before configs were split by kind, one model held every field and a saved config.json held them all,
# each kind's with its default when unused. These are those defaults; `_LEGACY_ALWAYS_SAVED` are the
# fields every such config held (n_kv_heads and kv_dtype came later), and no kind's model has them all.
LEGACY_DEFAULTS: dict[str, Any] = {
    "n_kv_heads": None, "kv_dtype": "float32", "chunk_size": 64, "self_decoder": "gated_retention",
    "window": 1024, "segment_lengths": [2048, 4096, 8192, 16384], "dilation_rates": [1, 2, 4, 8],
}
_LEGACY_ALWAYS_SAVED = ("chunk_size", "self_decoder", "window", "segment_lengths", "dilation_rates")


def _join(items: tuple[str, ...], word: str = "and") -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {word} {items[-1]}"


def drop_legacy_fields(data: dict, model: type[BackboneConfig] | None = None) -> dict:
    """`data` less the other kinds' fields an old, all-fields config saved at their defaults.

    Only a dict with every field an old config always saved (`_LEGACY_ALWAYS_SAVED`, which no kind's
    model has together) counts as old; other dicts, and other-kind fields that differ from the old
    defaults, are returned as they are (validation then names such a field). `model` is the kind's
    model; by default the one `data["kind"]` names."""
    if not isinstance(data, dict) or not all(k in data for k in _LEGACY_ALWAYS_SAVED):
        return data
    kind = data.get("kind", DEFAULT_KIND)
    model = model or (BACKBONE_CONFIGS.get(kind) if isinstance(kind, str) else None)
    if model is None:
        return data
    return {k: v for k, v in data.items()
            if k in model.model_fields or k not in LEGACY_DEFAULTS or v != LEGACY_DEFAULTS[k]}


def with_kind(config: BackboneConfig, kind: str) -> BackboneConfig:
    """`config` as a backbone of `kind` (`latentlm train --backbone KIND`).

    The shared fields and those `kind` also has carry over; a field `kind` lacks is dropped when it was
    left unset or at its default, and otherwise kept so that validation fails naming it (a YOCO config's
    `n_kv_heads: 2` does not silently vanish when switched to RetNet)."""
    target = BACKBONE_CONFIGS.get(kind)
    data: dict[str, Any] = {}
    for name, info in type(config).model_fields.items():
        value = getattr(config, name)
        if name in _SHARED_FIELDS or (target is not None and name in target.model_fields):
            data[name] = value
        elif target is not None and name in config.model_fields_set and value != info.get_default(
                call_default_factory=True):
            data[name] = value
    return BackboneConfig(**(data | {"kind": kind}))


def _kind_of(value: Any) -> str | None:
    """The discriminator: a dict's `kind` (default "transformer"), or a config's."""
    if isinstance(value, dict):
        kind = value.get("kind", DEFAULT_KIND)
        return kind if isinstance(kind, str) else None
    return getattr(value, "kind", None)


AnyBackboneConfig = Annotated[
    Union[tuple(Annotated[model, Tag(kind)] for kind, model in BACKBONE_CONFIGS.items())],  # noqa: UP007
    Discriminator(
        _kind_of, custom_error_type="backbone_kind",
        custom_error_message="kind must be one of " + _join(tuple(repr(k) for k in get_args(BackboneKind)), "or"),
    ),
]
_UNION = AnyBackboneConfig
_ADAPTER = TypeAdapter(AnyBackboneConfig)
