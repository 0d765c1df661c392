"""Causal backbones behind one contract (DESIGN.md §3).

`build_backbone(BackboneConfig(kind=...))` returns an `nn.Module` with
`forward(h [B, T, D], state=None, valid=None) -> (out [B, T, D], state)` and `state_nbytes(state)`.
`state=None` runs the parallel form; otherwise `h` continues the sequence held in `state`.
"""
from __future__ import annotations

from torch import nn

from latentlm.backbones.config import BackboneConfig, BackboneKind
from latentlm.backbones.longnet import LongNet
from latentlm.backbones.transformer import KVCache, Transformer
from latentlm.backbones.yoco import YOCO

_BUILDERS = {"transformer": Transformer, "yoco": YOCO, "longnet": LongNet}


def build_backbone(config: BackboneConfig) -> nn.Module:
    if config.kind not in _BUILDERS:
        raise ValueError(
            f"backbone kind {config.kind!r} is not available in this release; use one of {sorted(_BUILDERS)}"
        )
    return _BUILDERS[config.kind](config)


__all__ = ["BackboneConfig", "BackboneKind", "KVCache", "LongNet", "Transformer", "YOCO", "build_backbone"]
