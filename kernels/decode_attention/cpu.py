"""One decoding step of attention, fused in C++ for CPU (csrc/decode_attention_cpu.cpp).

Split-K over the cache: threads take (batch, KV head, chunk of keys) items; an item walks its keys in
blocks of ~16 KiB of values with an online softmax (running max, sum and output accumulators per query
of the group). AVX2 path: scores for 8 keys at a time (one transposing horizontal sum per 8 scores, each
key row read once for all the queries of the group), a vectorised exp2, and the weighted sum of values
in register tiles of the group's queries x D slices; the next block's keys are prefetched while this
block's are scored and its values while this block's are summed, so memory requests stay in flight
through every phase (into L2 for caches of FAR_CACHE_BYTES or more, larger than the cores' L2, else
into L1); a second pass merges the chunks by their maxima. AVX-512 path: the same phases with 32
registers, scores in tiles of 4 queries x 4 keys (each key vector loaded once for the 4 queries, one
16-sum reduction per tile; at D = 64 two queries share each FMA, 8-sums) and the softmax on whole tiles; taken by default when the group is a
multiple of 4 queries, where it is faster (`cpu_isa`).
The cache is streamed once per call, from any view whose rows are contiguous (a KV buffer with spare
room is one): q fp32, the cache fp32, fp16 or bf16 (`BackboneConfig.kv_dtype`: each row widened
exactly as it is read, so the kernel does the same fp32 arithmetic on half the bytes). AVX-512 BF16
path (`avx512_bf16`, a bf16 cache with g a multiple of 4 and D of 32, where the CPU has it): bf16 dot
products instead (vdpbf16ps, twice the work of an fp32 FMA per instruction), the scaled queries and the
softmax weights rounded to bf16 as bf16 attention kernels on GPUs do, so it agrees with the reference
to bf16 precision (relative RMS ~2e-3), not fp32's. Built on first use (`latentlm.kernels.cpp_build`);
AVX-512 or AVX2+FMA where the CPU has them, else scalar loops; `isa=` or
$LATENTLM_DECODE_ATTENTION_ISA forces a path, for tests and comparisons.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cpp_build import CppExtension
from ..isa_paths import IsaPaths
from .naive import decode_attention_reference

SOURCES = (Path(__file__).resolve().parent / "csrc" / "decode_attention_cpu.cpp",)
EXTENSION = CppExtension("decode_attention_cpu", SOURCES, "the C++ decode attention CPU kernel")
ISAS = ("scalar", "avx2", "avx512", "avx512_bf16")  # the kernel's codes are the indices
PATHS = IsaPaths(EXTENSION, ISAS, "LATENTLM_DECODE_ATTENTION_ISA", "decode attention")
CHUNK = 512  # most keys per work item (the kernel makes chunks equal, and smaller to keep both threads busy)
# Caches (keys + values bytes) below this go to the reference. The old one-key-at-a-time kernel lost to
# the reference below ~8 MiB; this one is faster at every size measured (2-core AMD EPYC, batch 1, through
# this wrapper, fastest of 40 interleaved calls: 4 / 1 KV heads x 64 at 16 keys 0.010 ms vs 0.031 ms
# reference, 4 / 4 x 64 at 64 keys 0.015 vs 0.023, 24 / 8 x 128 at 256 keys 0.070 vs 0.180, 4 / 1 x 64
# at 1k keys 0.040 vs 0.105), so every cache takes the kernel.
MIN_CACHE_BYTES = 0
# Caches (keys + values bytes) from this size on are prefetched into L2, smaller ones into L1. A cache
# larger than the cores' L2 comes from L3 or from memory on every call, and L1 prefetches (each holding
# one of a core's few L1 miss buffers until its line arrives) held that stream back: from memory at
# ~15-20 GB/s; from L3 less, but still. A cache that stays in L2 gains from L1 prefetches. 2-core AMD EPYC
# (Zen 4, 1 MiB L2 per core, 32 MiB L3): L2 prefetches made 24 / 8 x 128 at 16k keys (128 MiB) 1.7x
# faster, 4 / 4 x 64 at 16k (32 MiB) 1.2-1.4x, the yoco-3b preset at 16k 468 -> 410 ms per token, and,
# inside a d=256 YOCO 4 / 1 x 64 (the cache in L3 between layers), the 16k step 1.06-1.11x faster with an
# fp32 cache (8 MiB) and 0.97-1.10x with bf16 (4 MiB), fastest of 40-50 interleaved rounds, four runs
# (the threshold was 16 MiB until 2026-12-04: a run of the session before measured the 8 MiB case
# 1.03-1.13x faster with L1 prefetches, which these runs did not reproduce); at 4k-8k keys (2-4 MiB) the
# two read the same. L1 prefetches made the op alone at 1k keys (0.5 MiB) 1.14x faster (bf16: 1.03x).
# (csrc/decode_attention_cpu.cpp, "Prefetching")
FAR_CACHE_BYTES = 2 << 20
CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the kernel reads


def available(device: torch.device | str = "cpu") -> bool:
    """Whether the C++ kernel runs on `device` (CPU only; builds it on first call)."""
    return EXTENSION.runs_on(device)


def supported_isas() -> list[str]:
    """The ISA paths this CPU can run (empty when the extension is unavailable)."""
    return PATHS.supported()


def cpu_isa(group: int = 4, isa: str | None = None, dim: int = 64, bf16: bool = False) -> str:
    """The path a call with `group` query heads per KV head of `dim` takes: "avx512_bf16" (a `bf16`
    cache, g a multiple of 4, dim of 32), "avx512" (g a multiple of 4), "avx2" or "scalar", honouring
    a forced `isa` / $LATENTLM_DECODE_ATTENTION_ISA; "reference" when the extension is unavailable."""
    return PATHS.in_use(isa, group=group, dim=dim, bf16=bf16)


def _fits(q: Tensor, k: Tensor, v: Tensor) -> bool:
    d = k.shape[-1]
    return (q.dtype == torch.float32 and k.dtype in CACHE_DTYPES and v.dtype == k.dtype
            and k.stride(-1) == 1 and v.stride(-1) == 1 and k.stride(-2) == d and v.stride(-2) == d
            and k.shape[2] > 0 and 2 * k.numel() * k.element_size() >= MIN_CACHE_BYTES
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)))


def decode_attention_cpp(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None,
                         isa: str | None = None) -> Tensor:
    """Same arguments and result as `decode_attention_reference`; inputs the kernel does not take
    (q not fp32, a cache not of CACHE_DTYPES, rows not contiguous, an autograd graph to record, a
    cache below MIN_CACHE_BYTES) go to the reference. `isa` forces an ISA path (ISAS)."""
    ext = EXTENSION.get()
    if ext is None or not _fits(q, k, v):
        return decode_attention_reference(q, k, v, scale)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    far = 2 * k.numel() * k.element_size() >= FAR_CACHE_BYTES
    # q [B, H, 1, D] contiguous is q [B, Hkv, g, D]: the kernel reads it so and returns q's shape
    return ext.decode_attention(q.contiguous(), k, v, scale, CHUNK, PATHS.code(isa), far)
