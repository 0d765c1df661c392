"""Pick the fastest available implementation of an op for a device.

Each op has a pure-PyTorch reference (always available, the oracle) and may have fast paths
(C++ on CPU, Triton on GPU) registered with a priority and an availability check. Setting
`LATENTLM_KERNELS=reference` forces the references everywhere (debugging, comparisons).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Implementation:
    name: str
    fn: Callable
    available: Callable[[torch.device], bool]
    priority: int  # higher wins; the reference has 0


_REGISTRY: dict[str, list[Implementation]] = {}


def register(op: str, name: str, fn: Callable, available: Callable[[torch.device], bool] = lambda d: True,
             priority: int = 0) -> None:
    """Register `fn` as implementation `name` of `op`; name "reference" marks the oracle."""
    impls = [i for i in _REGISTRY.get(op, []) if i.name != name]
    impls.append(Implementation(name, fn, available, priority))
    _REGISTRY[op] = sorted(impls, key=lambda i: -i.priority)


def forced_reference() -> bool:
    value = os.environ.get("LATENTLM_KERNELS")
    return value is not None and value.strip().lower() == "reference"


def choose(op: str, device: torch.device | str) -> Implementation:
    """The implementation of `op` that runs on `device`: the reference when forced, else the best available."""
    impls = _REGISTRY.get(op)  # called per layer per decoded token: kept cheap (a few us)
    if impls is None:
        raise KeyError(f"no implementation of {op!r} is registered; known ops: {sorted(_REGISTRY)}")
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if forced_reference():
        return next(i for i in impls if i.name == "reference")
    for impl in impls:
        if impl.available(device):
            return impl
    raise RuntimeError(f"no implementation of {op!r} runs on {device}")


def implementations(op: str) -> list[str]:
    return [i.name for i in _REGISTRY.get(op, [])]
