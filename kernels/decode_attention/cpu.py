"""One decoding step of attention, fused in C++ for CPU (csrc/decode_attention_cpu.cpp).

Split-K over the cache: threads take (batch, KV head, chunk of keys) items; each reads its key rows
once for all the query heads of the group, and its value rows once, keeping a running max and sum
per query; a second pass merges the chunks by their maxima. The cache is streamed once per call,
from any view whose rows are contiguous (a KV buffer with spare room is one), fp32 only.
Built on first use (`latentlm.kernels.cpp_build`); AVX2+FMA where the CPU has it, else scalar loops.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cpp_build import CppExtension
from .naive import decode_attention_reference

SOURCES = (Path(__file__).resolve().parent / "csrc" / "decode_attention_cpu.cpp",)
EXTENSION = CppExtension("decode_attention_cpu", SOURCES, "the C++ decode attention CPU kernel")
CHUNK = 512  # keys per work item
# Smaller caches (keys + values bytes) go to the reference: while they sit in the CPU's caches, the
# fused SDPA kernel's re-reads are cheap and it is as fast or faster (measured on a 2-core AMD EPYC:
# 4 heads / 4 KV heads x 64 at 4k keys, 8 MiB: 0.167 ms here, 0.149 ms reference; 24 / 8 x 128 at 1k
# keys, 8 MiB: 0.348 ms here, 0.368 ms reference; at 16k keys this kernel is 1.6-1.9x faster).
MIN_CACHE_BYTES = 8 << 20


def available(device: torch.device | str = "cpu") -> bool:
    """Whether the C++ kernel runs on `device` (CPU only; builds it on first call)."""
    return torch.device(device).type == "cpu" and EXTENSION.get() is not None


def _fits(q: Tensor, k: Tensor, v: Tensor) -> bool:
    rows = all(x.stride(-1) == 1 and x.stride(-2) == x.shape[-1] for x in (k, v))
    return (q.dtype == k.dtype == v.dtype == torch.float32 and rows and k.shape[2] > 0
            and 2 * k.numel() * k.element_size() >= MIN_CACHE_BYTES
            and not (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))))


def decode_attention_cpp(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, avx2: bool = True) -> Tensor:
    """Same arguments and result as `decode_attention_reference`; inputs the kernel does not take
    (not fp32, rows not contiguous, an autograd graph to record) or a cache below MIN_CACHE_BYTES go
    to the reference."""
    ext = EXTENSION.get()
    if ext is None or not _fits(q, k, v):
        return decode_attention_reference(q, k, v, scale)
    b, h, _, d = q.shape
    hkv = k.shape[1]
    scale = d**-0.5 if scale is None else float(scale)
    qg = q.reshape(b, hkv, h // hkv, d).contiguous()  # [B, Hkv, g, D]
    return ext.decode_attention(qg, k, v, scale, CHUNK, avx2).reshape(b, h, 1, d)
