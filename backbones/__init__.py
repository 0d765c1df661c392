"""Causal backbones behind one contract (docs/design.md §3).

`build_backbone(BackboneConfig(kind=...))` returns an `nn.Module` with
`forward(h [B, T, D], state=None, valid=None) -> (out [B, T, D], state)` and `state_nbytes(state)`.
`state=None` runs the parallel form; otherwise `h` continues the sequence held in `state`.
`valid` [B, T] is False at left padding, which every kind keeps invisible.
`state_nbytes` counts the positions in use; KV caches grow in place while decoding (`kv_cache`), and
their `state.allocated_nbytes()` adds the spare room.
"""
from __future__ import annotations

from torch import nn

from latentlm.backbones.config import (
    BACKBONE_CONFIGS, AnyBackboneConfig, BackboneConfig, BackboneKind, BitNetConfig, LongNetConfig, RetNetConfig,
    TransformerConfig, YOCOConfig, drop_legacy_fields, with_kind,
)
from latentlm.backbones.kv_cache import KVCache
from latentlm.backbones.longnet import LongNet
from latentlm.backbones.presets import PRESETS, preset
from latentlm.backbones.retnet import RetNet
from latentlm.backbones.transformer import Transformer
from latentlm.backbones.yoco import YOCO


def _bitnet(config: BitNetConfig) -> nn.Module:
    """BitNet b1.58: the Transformer with BitLinear projections and a squared-ReLU GLU, no biases."""
    return Transformer(config.model_copy(update={"ternary": True, "ffn_act": "relu2"}))


_BUILDERS = {"transformer": Transformer, "retnet": RetNet, "yoco": YOCO, "longnet": LongNet, "bitnet": _bitnet}


def build_backbone(config: BackboneConfig) -> nn.Module:
    return _BUILDERS[config.kind](config)


__all__ = [
    "BACKBONE_CONFIGS", "PRESETS", "AnyBackboneConfig", "BackboneConfig", "BackboneKind", "BitNetConfig", "KVCache",
    "LongNet", "LongNetConfig", "RetNet", "RetNetConfig", "Transformer", "TransformerConfig", "YOCO", "YOCOConfig",
    "build_backbone", "drop_legacy_fields", "preset", "with_kind",
]
