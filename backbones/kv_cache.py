"""Growable key/value caches: decoding a token writes it in place instead of copying the whole cache.

A `KVBuffer` keeps one attention layer's keys and values in storage [B, H, capacity, Dh] of which the
first `length` positions are used; `keys` / `values` are views [B, H, length, Dh]. Appending t
positions writes them into the spare room when there is some, so a decoded token costs O(t), not
O(length) as `torch.cat` did. When the room runs out, the buffer grows to the needed length plus
max(256, needed // 8), rounded up to a multiple of 256, and copies once: amortised O(1) per token,
with bounded slack (at most max(256, length / 8) + 255 spare positions).

States stay immutable from the user's view. Each storage has a shared mark of how far it is filled;
a buffer appends in place only when its own length equals that mark (it is the newest state on that
storage), and otherwise copies into a fresh storage. So two continuations from one state never
write over each other: positions below the mark are never written again.

Appends that autograd tracks (grad enabled and a tensor that requires grad) are plain concatenations:
an in-place write into storage that an earlier step saved for backward would break the backward pass.

Precision (`BackboneConfig.kv_dtype`): `cache_rounded` gives keys and values as a cache of that dtype
holds them (fp16, bf16: half the bytes), and the attention layers call it in every forward, so a
decoded token sees the same numbers as the parallel forward. fp16 or bf16 positions go into fp32
storage in place (exactly); the reverse would round, so it grows into fp32 storage instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

GROWTH_QUANTUM = 256  # capacity is a multiple of this many positions, and grows by at least this many


def grown_capacity(needed: int) -> int:
    """Capacity for `needed` positions: needed + max(256, needed // 8), rounded up to a multiple of 256."""
    target = needed + max(GROWTH_QUANTUM, needed // 8)
    return -(-target // GROWTH_QUANTUM) * GROWTH_QUANTUM


def any_padding(valid: Tensor | None) -> bool:
    """Whether `valid` [B, T] has a False (a padding position); None means no padding. Syncs once."""
    return valid is not None and not bool(valid.all())


def cache_rounded(x: Tensor, kv_dtype: str) -> Tensor:
    """Keys or values [B, Hkv, T, Dh] as a cache of `kv_dtype` holds them (`BackboneConfig.kv_dtype`).

    float16 / bfloat16: without autograd, the rounded tensor itself (what the cache stores and the
    decode kernel reads); with autograd, x's dtype holding the rounded values, gradients passed straight
    through (a 16-bit backward would lose small gradients). Either way attention sees the same numbers,
    so decoding equals the parallel forward (bf16: up to the decode kernel's bf16 arithmetic, see
    BackboneConfig.kv_dtype); only a value that two code paths compute an fp32 ulp apart can round to
    neighbouring 16-bit values (fp16: <= 5e-5 relative in the outputs, tests/test_transformer.py).
    """
    if kv_dtype == "float32":
        return x
    rounded = x.to(getattr(torch, kv_dtype))
    if not (torch.is_grad_enabled() and x.requires_grad):
        return rounded
    return x + (rounded.to(x.dtype) - x).detach()


class _Mark:
    """How many positions of one storage are filled; shared by every buffer on that storage."""

    __slots__ = ("filled",)

    def __init__(self, filled: int) -> None:
        self.filled = filled


class KVBuffer:
    """One layer's keys and values: storage [B, H, capacity, Dh], the first `length` positions used."""

    __slots__ = ("_k", "_v", "length", "_mark")

    def __init__(self, key_store: Tensor, value_store: Tensor, length: int, mark: _Mark) -> None:
        self._k, self._v = key_store, value_store  # each [B, H, capacity, Dh]
        self.length = length
        self._mark = mark

    @classmethod
    def from_tensors(cls, keys: Tensor, values: Tensor) -> "KVBuffer":
        """Wrap keys and values [B, H, S, Dh] as a full buffer (no copy; the first append grows it)."""
        if keys.shape != values.shape or keys.dim() != 4:
            raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must both be [B, H, S, Dh]")
        return cls(keys, values, keys.shape[2], _Mark(keys.shape[2]))

    @property
    def keys(self) -> Tensor:
        return self._k[:, :, :self.length]  # [B, H, S, Dh]

    @property
    def values(self) -> Tensor:
        return self._v[:, :, :self.length]  # [B, H, S, Dh]

    @property
    def capacity(self) -> int:
        return self._k.shape[2]

    def append(self, keys: Tensor, values: Tensor) -> "KVBuffer":
        """A buffer of length + t positions: these, then `keys` / `values` [B, H, t, Dh]. `self` is unchanged."""
        t = keys.shape[2]
        n = self.length + t
        if torch.is_grad_enabled() and (keys.requires_grad or values.requires_grad or self._k.requires_grad):
            return KVBuffer.from_tensors(torch.cat([self.keys, keys], 2), torch.cat([self.values, values], 2))
        if self._writable(keys, n):
            self._k[:, :, self.length:n] = keys
            self._v[:, :, self.length:n] = values
            self._mark.filled = n
            return KVBuffer(self._k, self._v, n, self._mark)
        k_store = self._fresh_storage(self._k, keys, n)
        v_store = self._fresh_storage(self._v, values, n)
        return KVBuffer(k_store, v_store, n, _Mark(n))

    def _writable(self, new: Tensor, n: int) -> bool:
        """May positions length..n-1 be written into this storage in place?"""
        frozen = self._k.is_inference() and not torch.is_inference_mode_enabled()  # inference tensors are read-only
        exact = torch.promote_types(self._k.dtype, new.dtype) == self._k.dtype  # e.g. fp16 into fp32 storage
        return (self._mark.filled == self.length and n <= self.capacity and exact
                and new.device == self._k.device and not frozen)

    def _fresh_storage(self, store: Tensor, new: Tensor, n: int) -> Tensor:
        """New storage [B, H, grown_capacity(n), Dh] holding the used positions of `store`, then `new`."""
        b, h, _, dh = store.shape
        out = store.new_empty(b, h, grown_capacity(n), dh, dtype=torch.promote_types(store.dtype, new.dtype))
        out[:, :, :self.length] = store[:, :, :self.length]
        out[:, :, self.length:n] = new
        return out

    def nbytes(self) -> int:
        """Bytes of the positions in use (keys and values)."""
        return 2 * self.keys.numel() * self._k.element_size()

    def allocated_nbytes(self) -> int:
        """Bytes of the storage, spare room included."""
        return (self._k.numel() + self._v.numel()) * self._k.element_size()


@dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer so far, and which key positions are real (not padding).

    `padded` says whether any position is padding, kept as a Python bool so that decoding needs no
    device sync to know that a single query may attend without a mask.
    """

    layers: list[KVBuffer]
    valid: Tensor  # [B, S] bool
    padded: bool

    @classmethod
    def from_tensors(cls, keys: list[Tensor], values: list[Tensor], valid: Tensor) -> "KVCache":
        """A cache from per-layer keys and values [B, H, S, Dh] and `valid` [B, S] (no copy)."""
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} layers of keys but {len(values)} of values")
        for k in keys:
            if k.shape[2] != valid.shape[1]:
                raise ValueError(f"keys hold {k.shape[2]} positions but valid has {valid.shape[1]}")
        return cls([KVBuffer.from_tensors(k, v) for k, v in zip(keys, values)], valid, any_padding(valid))

    @property
    def keys(self) -> list[Tensor]:
        return [layer.keys for layer in self.layers]  # per layer [B, H, S, Dh]

    @property
    def values(self) -> list[Tensor]:
        return [layer.values for layer in self.layers]  # per layer [B, H, S, Dh]

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def nbytes(self) -> int:
        """Bytes of the keys and values in use (the [B, S] bool `valid` is not counted)."""
        return sum(layer.nbytes() for layer in self.layers)

    def allocated_nbytes(self) -> int:
        """Bytes allocated for keys and values, the spare room for decoding in place included."""
        return sum(layer.allocated_nbytes() for layer in self.layers)
