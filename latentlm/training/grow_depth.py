"""Depth up-scaling: a Transformer backbone grown by zero-output copies of some of its blocks.

A pre-norm residual block adds `attn.out(...)` and `mlp.down(...)` to its input. A copy of a block with
both projections zero adds nothing, so the grown model computes exactly what the old one did, and
training goes on from there with more depth (SOLAR-style up-scaling; the copy, not fresh weights, gives
the new block's other projections features that already mean something).

Why: with 4 blocks the shapes model could not find an object named only by its shape (colour questions
about two-object scenes 54-76% right in every answer form); stage 5i grown to 6 blocks and trained 2000
steps (stage 5l) answers 91% of them (BENCHMARKS.md, "Reading pictures").
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from latentlm.errors import ConfigError


def zero_output_copy(block: nn.Module) -> nn.Module:
    """A copy of a pre-norm residual block that adds nothing to its input until trained."""
    if not (hasattr(block, "attn") and hasattr(block.attn, "out") and hasattr(block, "mlp")
            and hasattr(block.mlp, "down")):
        raise ConfigError("init_grow: only Transformer backbones (blocks with attn.out and mlp.down) can be grown")
    new = copy.deepcopy(block)
    with torch.no_grad():
        new.attn.out.weight.zero_()
        new.mlp.down.weight.zero_()
    return new


def grow_blocks(backbone: nn.Module, after: list[int]) -> None:
    """Insert a zero-output copy of block i right after it, for each i in `after` (indices of the old
    blocks). The backbone's config says how many blocks it has: it is updated too."""
    blocks = list(backbone.blocks)
    bad = [i for i in after if not 0 <= i < len(blocks)]
    if bad or len(set(after)) != len(after):
        raise ConfigError(f"init_grow: {sorted(after)} must name distinct blocks of the {len(blocks)} in the "
                          f"init_from model (0 to {len(blocks) - 1})")
    grown = []
    for i, block in enumerate(blocks):
        grown.append(block)
        if i in after:
            grown.append(zero_output_copy(block))
    backbone.blocks = nn.ModuleList(grown)
    backbone.config.n_layers = len(grown)
