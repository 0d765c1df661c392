// One decoding step of attention on CPU: the g query heads that share a KV head against all S cached
// keys, no mask (split-K "flash decoding"). Reference: kernels/decode_attention/naive.py.
//
//   q [B, Hkv, g, D] contiguous fp32 (q [B, H, 1, D] contiguous is the same memory: query head h*g + i
//   reads KV head h); k, v [B, Hkv, S, D] with contiguous rows (any B and head strides: views of a
//   KV buffer with spare room), both fp32, both fp16 or both bf16; out: q's shape, fp32.
// An fp16 or bf16 cache (kv_dtype) is widened exactly as its rows are read (the AVX2 path needs
// D % 8 == 0, else the scalar loops), so the arithmetic is the fp32 kernel's on half the bytes; except
// on the AVX-512 BF16 path (below), which computes a bf16 cache with bf16 dot products.
//
// Work item = (b, h, chunk of keys), the items spread over the threads in contiguous runs (chunks of
// equal size, at most `chunk` keys; with few (b, h), as many chunks as keep the threads evenly busy).
// An item walks its chunk in blocks of BK keys (BK * D * 4 bytes ~ 16 KiB, so a block's value rows stay
// in L1 while they are reused), keeping per query a running max m, sum l and accumulator acc [D]:
//   1. scores p [g, BK] in log2 units (q is scaled by scale * log2(e) once, so the softmax needs only
//      exp2). AVX2: 8 keys at a time, one ymm accumulator per key over D, then one transposing
//      horizontal sum gives a ymm of 8 scores; each query runs over the same 8 rows while they sit in
//      L1, so K leaves memory once. D = 64 and 128 get fully unrolled loops.
//   2. per query: m' = max(m, block max), alpha = 2^(m - m'), p <- 2^(p - m') (own vectorised exp2:
//      round, 7th-order polynomial, exponent bits), l <- alpha l + sum p.
//   3. acc <- alpha acc + p V: D in slices of 8R floats, the g queries in groups of QB (4x2, 3x4, 2x4,
//      1x8 ymm tiles), each tile's QB*R accumulators held in registers across the block's keys; each
//      value slice is loaded once per query group.
// The compute (2 g D FMAs per key) was the bottleneck of a one-key-at-a-time loop (a horizontal add per
// score, a scalar exp, an accumulator row loaded and stored per key and query); this runs near the
// FMA/load limits, so caches that sit in L2/L3 go several times faster and large ones at DRAM speed.
// A second pass merges the chunks per (b, h, query): o = sum_c 2^(m_c - M) acc_c / sum_c 2^(m_c - M) l_c.
// K and V are each streamed from memory once, prefetched in software a block ahead. The AVX-512 path
// (below) does the same with score tiles of 4 queries x 4 keys. Without AVX2 (or isa = 0): scalar
// loops, one softmax pass per chunk.
#include <torch/extension.h>
#include "latentlm_cpu.h"
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

namespace {

#define DA_AVX2 __attribute__((target("avx2,fma,f16c")))
#define DA_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline

constexpr double kLog2e = 1.4426950408889634;
constexpr int64_t kBlockBytes = 16384;  // AVX2: a block's value rows, reused across D slices from L1
// Prefetching (both vector paths): while a block's keys are scored, the next block's key rows; while its
// values are summed (P V), the next block's value rows, a line or two per key. Memory requests so stay
// in flight through every phase. Before, the value rows were prefetched with their keys, the memory sat
// idle during P V, and grouped queries (more compute per byte) streamed at ~10 GB/s where a plain read
// does ~17-20. 2-core AMD EPYC, caches evicted before each call, old -> new: 64k keys 4 / 1 x 64 2.47 ->
// 1.85 ms, 16 / 4 x 64 10.9 -> 7.4 ms, 24 / 8 x 128 35.4 -> 32.6 ms, 4 / 4 x 64 7.07 -> 6.89 ms.
// Where the lines go depends on where the cache lives (`far`, set by the caller from its size). A cache
// larger than the cores' L2 (from L3, or from memory on every call when the last-level cache cannot keep
// it between a model's layers) is prefetched into L2 (latentlm::prefetch_line): L1 prefetches capped a
// core's stream from memory at ~15-20 GB/s. 2-core AMD EPYC (Zen 4), fastest of 20 interleaved calls,
// L1 -> L2: 24 / 8 x 128 at 16k keys (128 MiB) 8.07 -> 4.65 ms, fp16 4.53 -> 2.98 ms; 4 / 4 x 64 at 16k
// (32 MiB) 0.70 -> 0.51 ms; in the preset yoco-3b at 16k, 468 -> 410 ms per token; from L3, a d=256 YOCO
// 4 / 1 x 64 step at 16k (8 MiB) 1.06-1.11x faster. A cache that stays in L2 is prefetched into L1
// (cpu.py's FAR_CACHE_BYTES has the figures). BENCHMARKS.md "Prefetching into L2" has both, side by side.
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t round8(int64_t x) { return (x + 7) & ~int64_t(7); }

// Everything an item needs; pointers into the inputs and the per-item partial results.
struct Problem {
  int64_t H, G, D, S, chunk, C, DP, CP;  // DP, CP: D and chunk rounded up to 8 (row strides of qs, p)
  int64_t BK;                            // AVX2: keys per block (multiple of 8), row stride of p
  const float* q;                        // [B*H, G, D]
  const void* k;  // [.., S, D] of the cache's element type (float or c10::Half)
  const void* v;
  int64_t ksb, ksh, vsb, vsh;  // batch and head strides of k and v
  float qscale;                // scale * log2(e)
  bool far;                    // prefetch into L2, not L1: a cache that comes from memory
  float* acc;                  // [items, G, D] exp2-weighted sums of value rows
  float* mx;                   // [items, G] max score (log2 units)
  float* sm;                   // [items, G] sum of exp2(score - max)
};

// ---------------------------------------------------------------- scalar path

template <typename T>
float dot_scalar(const float* a, const T* b, int64_t d) {
  float r = 0.f;
  for (int64_t i = 0; i < d; ++i) r += a[i] * static_cast<float>(b[i]);
  return r;
}

template <typename T>
void axpy_scalar(float w, const T* x, float* y, int64_t d) {
  for (int64_t i = 0; i < d; ++i) y[i] += w * static_cast<float>(x[i]);
}

// qs [G, DP]: the item's queries times scale*log2(e); p [G, CP]: scores, then weights.
template <typename T>
void item_scalar(const Problem& P, int64_t w, float* qs, float* p) {
  const int64_t G = P.G, D = P.D, CP = P.CP;
  const int64_t bh = w / P.C, c = w % P.C, b = bh / P.H, h = bh % P.H;
  const int64_t j0 = c * P.chunk, n = std::min(P.S, j0 + P.chunk) - j0;
  const T* kh = static_cast<const T*>(P.k) + b * P.ksb + h * P.ksh + j0 * D;
  const T* vh = static_cast<const T*>(P.v) + b * P.vsb + h * P.vsh + j0 * D;
  const float* qh = P.q + bh * G * D;
  for (int64_t i = 0; i < G * D; ++i) qs[i] = qh[i] * P.qscale;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < G; ++i) p[i * CP + j] = dot_scalar(qs + i * D, kh + j * D, D);
  float* aw = P.acc + w * G * D;
  std::fill(aw, aw + G * D, 0.f);
  for (int64_t i = 0; i < G; ++i) {
    float* pi = p + i * CP;
    float m = kNegInf;
    for (int64_t j = 0; j < n; ++j) m = std::max(m, pi[j]);
    float l = 0.f;
    for (int64_t j = 0; j < n; ++j) {
      pi[j] = std::exp2(pi[j] - m);
      l += pi[j];
    }
    P.mx[w * G + i] = m;
    P.sm[w * G + i] = l;
  }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < G; ++i) axpy_scalar(p[i * CP + j], vh + j * D, aw + i * D, D);
}

// ---------------------------------------------------------------- AVX2 path

// A vector path's item w: its keys and values (n rows from kh, vh), its partial results (acc aw [G, D],
// running max mw [G] and sum lw [G], zeroed), and its queries scaled into qs [G, DP] (zero padded).
template <typename T>
struct Item {
  const T* kh;
  const T* vh;
  int64_t n;
  float* aw;
  float* mw;
  float* lw;
};

template <typename T>
inline Item<T> start_item(const Problem& P, int64_t w, float* qs) {
  const int64_t G = P.G, D = P.D, DP = P.DP;
  const int64_t bh = w / P.C, c = w % P.C, b = bh / P.H, h = bh % P.H;
  const int64_t j0 = c * P.chunk;
  const float* qh = P.q + bh * G * D;
  for (int64_t i = 0; i < G; ++i)
    for (int64_t d = 0; d < DP; ++d) qs[i * DP + d] = d < D ? qh[i * D + d] * P.qscale : 0.f;
  Item<T> it{static_cast<const T*>(P.k) + b * P.ksb + h * P.ksh + j0 * D,
             static_cast<const T*>(P.v) + b * P.vsb + h * P.vsh + j0 * D,
             std::min(P.S, j0 + P.chunk) - j0, P.acc + w * G * D, P.mx + w * G, P.sm + w * G};
  std::fill(it.aw, it.aw + G * D, 0.f);
  std::fill(it.mw, it.mw + G, kNegInf);
  std::fill(it.lw, it.lw + G, 0.f);
  return it;
}


DA_AVX2_INLINE __m256i lanes_below(int64_t k) {  // lanes t < k all ones
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(k)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

DA_AVX2_INLINE float hsum(__m256 x) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

DA_AVX2_INLINE float hmax(__m256 x) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// [sum(a0), sum(a1), ..., sum(a7)]: two rounds of pairwise horizontal adds, then the two 128-bit halves.
DA_AVX2_INLINE __m256 reduce8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6,
                              __m256 a7) {
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));  // a0..a3 by half
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));  // a4..a7 by half
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// 2^r = e^(r ln 2) for |r| <= 1/2: its Taylor coefficients, degree 7 down to 0 (Horner order), used by
// both vector paths' exp2.
constexpr double kLn2 = 0.6931471805599453;
constexpr float kExp2Poly[8] = {
    static_cast<float>(kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 / 5040),
    static_cast<float>(kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 / 720),
    static_cast<float>(kLn2 * kLn2 * kLn2 * kLn2 * kLn2 / 120),
    static_cast<float>(kLn2 * kLn2 * kLn2 * kLn2 / 24),
    static_cast<float>(kLn2 * kLn2 * kLn2 / 6),
    static_cast<float>(kLn2 * kLn2 / 2),
    static_cast<float>(kLn2),
    1.f};

// 2^x for x <= 0 (NaN stays NaN): x = n + r, n = round(x), |r| <= 1/2; 2^r = e^(r ln 2) by its Taylor
// series to degree 7 (truncation < 6e-9 relative), 2^n put in the exponent bits. x < -126.5 gives 0.
DA_AVX2_INLINE __m256 exp2_avx2(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-127.f), x);  // second operand returned when NaN
  const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_sub_ps(x, n);  // exact
  __m256 y = _mm256_set1_ps(kExp2Poly[0]);
#pragma GCC unroll 8
  for (int i = 1; i < 8; ++i) y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kExp2Poly[i]));
  // n = -127 gives biased exponent 0: the float 0
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// 8 floats from a cache row: fp32 as they are, fp16 (F16C) and bf16 widened exactly. A partial vector
// (the `dmask` lanes) is read from fp32 rows only: 16-bit rows take this path when D is a multiple of 8.
DA_AVX2_INLINE __m256 load8(const float* x) { return _mm256_loadu_ps(x); }
DA_AVX2_INLINE __m256 load8(const c10::Half* x) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
}
DA_AVX2_INLINE __m256 load8(const c10::BFloat16* x) {  // bf16 is the top half of an fp32
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x))), 16));
}
DA_AVX2_INLINE __m256 load8_masked(const float* x, __m256i dmask) { return _mm256_maskload_ps(x, dmask); }
DA_AVX2_INLINE __m256 load8_masked(const c10::Half* x, __m256i) { return load8(x); }
DA_AVX2_INLINE __m256 load8_masked(const c10::BFloat16* x, __m256i) { return load8(x); }

// Scores of one query (q: DP floats, zero padded) against 8 key rows r[0..7]: D8 = D rounded down to 8;
// a partial last vector (tail) is read with `dmask`. NV > 0: D = 8 NV known at compile time.
template <int NV, typename T>
DA_AVX2_INLINE __m256 dot8(const float* q, const T* const* r, int64_t D8, bool tail, __m256i dmask) {
  const T *r0 = r[0], *r1 = r[1], *r2 = r[2], *r3 = r[3], *r4 = r[4], *r5 = r[5], *r6 = r[6], *r7 = r[7];
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  const int64_t n8 = NV > 0 ? 8 * NV : D8;
#pragma GCC unroll 16
  for (int64_t d = 0; d < n8; d += 8) {
    const __m256 x = _mm256_loadu_ps(q + d);
    a0 = _mm256_fmadd_ps(x, load8(r0 + d), a0);
    a1 = _mm256_fmadd_ps(x, load8(r1 + d), a1);
    a2 = _mm256_fmadd_ps(x, load8(r2 + d), a2);
    a3 = _mm256_fmadd_ps(x, load8(r3 + d), a3);
    a4 = _mm256_fmadd_ps(x, load8(r4 + d), a4);
    a5 = _mm256_fmadd_ps(x, load8(r5 + d), a5);
    a6 = _mm256_fmadd_ps(x, load8(r6 + d), a6);
    a7 = _mm256_fmadd_ps(x, load8(r7 + d), a7);
  }
  if (NV == 0 && tail) {
    const __m256 x = _mm256_loadu_ps(q + D8);
    a0 = _mm256_fmadd_ps(x, load8_masked(r0 + D8, dmask), a0);
    a1 = _mm256_fmadd_ps(x, load8_masked(r1 + D8, dmask), a1);
    a2 = _mm256_fmadd_ps(x, load8_masked(r2 + D8, dmask), a2);
    a3 = _mm256_fmadd_ps(x, load8_masked(r3 + D8, dmask), a3);
    a4 = _mm256_fmadd_ps(x, load8_masked(r4 + D8, dmask), a4);
    a5 = _mm256_fmadd_ps(x, load8_masked(r5 + D8, dmask), a5);
    a6 = _mm256_fmadd_ps(x, load8_masked(r6 + D8, dmask), a6);
    a7 = _mm256_fmadd_ps(x, load8_masked(r7 + D8, dmask), a7);
  }
  return reduce8(a0, a1, a2, a3, a4, a5, a6, a7);
}

// Cache lines to prefetch while a block's P V runs: `per` consecutive lines from `next` with each key
// (without a bounds check: a prefetch past the data is harmless and costs less than the branch).
struct LineStream {
  const char* next;
  int64_t lines;  // to cover in all
  int64_t per;
  bool far;

  DA_AVX2_INLINE void step() {
    for (int64_t i = 0; i < per; ++i, next += 64) latentlm::prefetch_line(next, far);
  }
};

// acc[qi, 0:8R] <- alpha[qi] acc[qi, 0:8R] + sum_j p[qi * ps + j] v[j * D + 0:8R] for QB queries (acc rows
// D apart), the accumulators in registers across the n keys; MASK: the last of the R vectors is partial.
template <int QB, int R, bool MASK, typename T>
DA_AVX2 void pv_block(const float* p, int64_t ps, const T* v, int64_t D, int64_t n, __m256i dmask,
                      const float* alpha, float* acc, LineStream& ahead) {
  __m256 a[QB][R];
#pragma GCC unroll 8
  for (int qi = 0; qi < QB; ++qi) {
    const __m256 al = _mm256_broadcast_ss(alpha + qi);
#pragma GCC unroll 8
    for (int t = 0; t < R; ++t) {
      const float* o = acc + qi * D + 8 * t;
      a[qi][t] = _mm256_mul_ps(al, (MASK && t == R - 1) ? _mm256_maskload_ps(o, dmask) : _mm256_loadu_ps(o));
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    ahead.step();
    const T* vr = v + j * D;
    __m256 x[R];
#pragma GCC unroll 8
    for (int t = 0; t < R; ++t) x[t] = (MASK && t == R - 1) ? load8_masked(vr + 8 * t, dmask) : load8(vr + 8 * t);
#pragma GCC unroll 8
    for (int qi = 0; qi < QB; ++qi) {
      const __m256 w = _mm256_broadcast_ss(p + qi * ps + j);
#pragma GCC unroll 8
      for (int t = 0; t < R; ++t) a[qi][t] = _mm256_fmadd_ps(w, x[t], a[qi][t]);
    }
  }
#pragma GCC unroll 8
  for (int qi = 0; qi < QB; ++qi)
#pragma GCC unroll 8
    for (int t = 0; t < R; ++t) {
      float* o = acc + qi * D + 8 * t;
      if (MASK && t == R - 1)
        _mm256_maskstore_ps(o, dmask, a[qi][t]);
      else
        _mm256_storeu_ps(o, a[qi][t]);
    }
}

// The last `cnt` (< R, or R with a partial last vector) vectors of a row: pv_block with N = cnt.
template <int QB, int N, typename T>
DA_AVX2 void pv_rest(int cnt, bool tail, const float* p, int64_t ps, const T* v, int64_t D, int64_t n,
                     __m256i dmask, const float* alpha, float* acc, LineStream& ahead) {
  if constexpr (N > 0) {
    if (cnt == N) {
      if (tail)
        pv_block<QB, N, true, T>(p, ps, v, D, n, dmask, alpha, acc, ahead);
      else
        pv_block<QB, N, false, T>(p, ps, v, D, n, dmask, alpha, acc, ahead);
    } else {
      pv_rest<QB, N - 1, T>(cnt, tail, p, ps, v, D, n, dmask, alpha, acc, ahead);
    }
  }
}

// All D columns of QB queries: blocks of R full vectors, then the rest. `ahead`: lines to prefetch,
// spread over the keys of every D slice.
template <int QB, int R, typename T>
DA_AVX2 void pv_rows(const float* p, int64_t ps, const T* v, int64_t D, int64_t n, __m256i dmask,
                     const float* alpha, float* acc, LineStream& ahead) {
  const int64_t slices = (D + 8 * R - 1) / (8 * R);
  ahead.per = std::max<int64_t>(1, (ahead.lines + slices * n - 1) / (slices * n));
  int64_t d = 0;
  for (; d + 8 * R <= D; d += 8 * R) pv_block<QB, R, false, T>(p, ps, v + d, D, n, dmask, alpha, acc + d, ahead);
  const int64_t left = D - d;  // < 8R
  if (left > 0)
    pv_rest<QB, R, T>(static_cast<int>((left + 7) / 8), left % 8 != 0, p, ps, v + d, D, n, dmask, alpha, acc + d,
                   ahead);
}

// One item; qs [G, DP] scaled queries, p [G, BK] block scores/weights, al [G] rescale factors (thread
// scratch). NV > 0: D = 8 NV.
template <int NV, typename T>
DA_AVX2 void item_avx2_impl(const Problem& P, int64_t w, float* qs, float* p, float* al) {
  const int64_t G = P.G, D = P.D, DP = P.DP, BK = P.BK;
  const Item<T> it = start_item<T>(P, w, qs);
  const T *kh = it.kh, *vh = it.vh;
  const int64_t n = it.n;
  float *aw = it.aw, *mw = it.mw, *lw = it.lw;
  const int64_t D8 = D & ~int64_t(7);
  const bool tail = D != D8;
  const __m256i dmask = lanes_below(D - D8);

  for (int64_t b0 = 0; b0 < n; b0 += BK) {  // blocks of BK keys, online softmax across them
    const int64_t nb = std::min(BK, n - b0);
    const T* kb = kh + b0 * D;
    const T* vb = vh + b0 * D;
    // 1. scores, 8 keys at a time (past nb: the last row again, score -inf)
    for (int64_t jb = 0; jb < nb; jb += 8) {
      const T* r[8];
      for (int t = 0; t < 8; ++t) r[t] = kb + std::min(jb + t, nb - 1) * D;
      const bool partial = jb + 8 > nb;
      const char* ahead = reinterpret_cast<const char*>(kb + (BK + jb) * D);  // the next block's 8 rows
      for (int64_t o = 0; o < 8 * D * int64_t(sizeof(T)); o += 64) latentlm::prefetch_line(ahead + o, P.far);
      const __m256 valid = _mm256_castsi256_ps(lanes_below(nb - jb));
      for (int64_t i = 0; i < G; ++i) {
        __m256 s = dot8<NV, T>(qs + i * DP, r, D8, tail, dmask);
        if (partial) s = _mm256_blendv_ps(_mm256_set1_ps(kNegInf), s, valid);
        _mm256_storeu_ps(p + i * BK + jb, s);
      }
    }
    // 2. per query: new running max, rescale factor of what came before, weights 2^(s - m), their sum
    const int64_t n8 = round8(nb);
    for (int64_t i = 0; i < G; ++i) {
      float* pi = p + i * BK;
      __m256 mv = _mm256_set1_ps(kNegInf);
      for (int64_t j = 0; j < n8; j += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(pi + j));
      const float m = std::max(mw[i], hmax(mv));
      al[i] = m == mw[i] ? 1.f : std::exp2(mw[i] - m);
      mw[i] = m;
      const __m256 mb = _mm256_set1_ps(m);
      __m256 sv = _mm256_setzero_ps();
      for (int64_t j = 0; j < n8; j += 8) {
        const __m256 e = exp2_avx2(_mm256_sub_ps(_mm256_loadu_ps(pi + j), mb));
        _mm256_storeu_ps(pi + j, e);
        sv = _mm256_add_ps(sv, e);
      }
      lw[i] = lw[i] * al[i] + hsum(sv);
    }
    // 3. acc = al acc + p V, queries in blocks of 4 (then 3, 2, 1), the next block's value rows prefetched
    const int64_t next_rows = std::min(BK, n - b0 - nb);
    LineStream values{reinterpret_cast<const char*>(vb + nb * D), (next_rows * D * int64_t(sizeof(T)) + 63) / 64, 1, P.far};
    int64_t i = 0;
    for (; i + 4 <= G; i += 4) pv_rows<4, 2, T>(p + i * BK, BK, vb, D, nb, dmask, al + i, aw + i * D, values);
    if (G - i == 3) pv_rows<3, 4, T>(p + i * BK, BK, vb, D, nb, dmask, al + i, aw + i * D, values);
    if (G - i == 2) pv_rows<2, 4, T>(p + i * BK, BK, vb, D, nb, dmask, al + i, aw + i * D, values);
    if (G - i == 1) pv_rows<1, 8, T>(p + i * BK, BK, vb, D, nb, dmask, al + i, aw + i * D, values);
  }
}

template <typename T>
DA_AVX2 void item_avx2(const Problem& P, int64_t w, float* qs, float* p, float* al) {
  if (P.D == 64)
    item_avx2_impl<8, T>(P, w, qs, p, al);
  else if (P.D == 128)
    item_avx2_impl<16, T>(P, w, qs, p, al);
  else
    item_avx2_impl<0, T>(P, w, qs, p, al);
}

// ---------------------------------------------------------------- AVX-512 path
//
// The same three phases with 32 zmm registers. The g queries go in groups of QB = 4, 2, 1; a group's
// scores come in tiles of QB queries x KB = 16 / QB keys, QB * KB accumulators over D (each key vector
// loaded once for the QB queries), then one transposing reduction of the 16 accumulators into one zmm of
// 16 scores, lane qi * KB + kk (with 4 queries and D = 64: 8 accumulators, two queries' scores each,
// scores_paired). The group's block of weights p keeps that tile layout, [BK / KB, QB, KB],
// so the softmax runs on whole zmm tiles (per-query max and sum by lane masks) and P V broadcasts each
// weight from it. D any size: the last vector of a row is read under a lane mask.

#define DA_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")))
#define DA_AVX512_INLINE __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq"), always_inline)) inline

DA_AVX512_INLINE __m512 load16(const float* x) { return _mm512_loadu_ps(x); }
DA_AVX512_INLINE __m512 load16(const c10::Half* x) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
}
DA_AVX512_INLINE __m512 widen_bf16(__m256i x) {  // 16 bf16 -> fp32, exactly (bf16 is an fp32's top half)
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(x), 16));
}
DA_AVX512_INLINE __m512 load16(const c10::BFloat16* x) {
  return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
}
DA_AVX512_INLINE __m512 load16(const float* x, __mmask16 m) { return _mm512_maskz_loadu_ps(m, x); }
DA_AVX512_INLINE __m512 load16(const c10::Half* x, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x));
}
DA_AVX512_INLINE __m512 load16(const c10::BFloat16* x, __mmask16 m) { return widen_bf16(_mm256_maskz_loadu_epi16(m, x)); }

// Vector t of a row of DV vectors: the last one under `tail` (all lanes when D is a multiple of 16).
template <typename T>
DA_AVX512_INLINE __m512 row_vec(const T* r, int64_t t, int64_t DV, __mmask16 tail) {
  return t == DV - 1 ? load16(r + 16 * t, tail) : load16(r + 16 * t);
}

// Lane i of the result = the sum of x[i]'s 16 lanes: pairs within 128-bit lanes, then quads, then the
// four 128-bit lanes (45 shuffles and adds for 16 sums).
DA_AVX512_INLINE __m512 reduce16(const __m512* x) {
  __m512 y[8], z[4], w[2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [x2i_0 + x2i_2, x2i+1_0 + .., x2i_1 + x2i_3, x2i+1_1 + ..]
    y[i] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]), _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]));
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)  // per 128-bit lane: partial sums of x4i .. x4i+3
    z[i] = _mm512_add_ps(_mm512_shuffle_ps(y[2 * i], y[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(y[2 * i], y[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)  // 128-bit lanes [z2i: L0+L2, L1+L3, z2i+1: L0+L2, L1+L3]
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(z[2 * i], z[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(z[2 * i], z[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// Lane s * 4 + e of the result = the sum of a[4 (s / 2) + e]'s lanes 8 (s % 2) .. 8 (s % 2) + 7: the
// 16 half sums of 8 accumulators (21 shuffles and adds; reduce16's first two steps, then the halves).
DA_AVX512_INLINE __m512 reduce_halves(const __m512* a) {
  __m512 y[4], z[2];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)
    y[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)  // per 128-bit lane L: the sums of a[4i .. 4i+3] over L
    z[i] = _mm512_add_ps(_mm512_shuffle_ps(y[2 * i], y[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(y[2 * i], y[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(z[0], z[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// The AVX2 path's exp2 on 16 lanes (same steps, same results).
DA_AVX512_INLINE __m512 exp2_avx512(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-127.f), x);  // second operand returned when NaN
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(x, n);
  __m512 y = _mm512_set1_ps(kExp2Poly[0]);
#pragma GCC unroll 8
  for (int i = 1; i < 8; ++i) y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(kExp2Poly[i]));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

// One score tile: QB queries (qs rows DP apart, zero padded) x KB = 16 / QB key rows r[0..KB-1].
// NV > 0: D = 16 NV known at compile time.
template <int QB, int NV, typename T>
DA_AVX512_INLINE __m512 score_tile(const float* qs, int64_t DP, const T* const* r, int64_t DV, __mmask16 tail) {
  constexpr int KB = 16 / QB;
  __m512 a[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) a[i] = _mm512_setzero_ps();
  const int64_t nv = NV > 0 ? NV : DV;
#pragma GCC unroll 8
  for (int64_t t = 0; t < nv; ++t) {
    __m512 qv[QB];
#pragma GCC unroll 4
    for (int qi = 0; qi < QB; ++qi) qv[qi] = _mm512_loadu_ps(qs + qi * DP + 16 * t);
#pragma GCC unroll 16
    for (int kk = 0; kk < KB; ++kk) {
      const __m512 x = NV > 0 ? load16(r[kk] + 16 * t) : row_vec(r[kk], t, nv, tail);
#pragma GCC unroll 4
      for (int qi = 0; qi < QB; ++qi) a[qi * KB + kk] = _mm512_fmadd_ps(qv[qi], x, a[qi * KB + kk]);
    }
  }
  return reduce16(a);
}

// 8 columns of a key row, widened, in both halves of a zmm.
DA_AVX512_INLINE __m512 bcast8(const float* x) { return _mm512_broadcast_f32x8(_mm256_loadu_ps(x)); }
DA_AVX512_INLINE __m512 bcast8(const c10::Half* x) {
  return _mm512_broadcast_f32x8(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x))));
}
DA_AVX512_INLINE __m512 bcast8(const c10::BFloat16* x) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
  return _mm512_broadcast_f32x8(_mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
}

// Lanes of query qi in a [QB, KB] tile.
template <int QB>
DA_AVX512_INLINE __mmask16 query_lanes(int qi) {
  constexpr int KB = 16 / QB;
  return static_cast<__mmask16>(((1u << KB) - 1) << (qi * KB));
}

// acc[qi, 0:16R] <- alpha[qi] acc[qi, 0:16R] + sum_j p(qi, j) v[j, 0:16R] for the QB queries of a group
// (weights in tile layout: p(qi, j) = pg[(j / KB) * 16 + qi * KB + j % KB]); the accumulators in
// registers across the n keys. MASK: the last of the R vectors is partial (lanes `tail`).
template <int QB, int R, bool MASK, typename T>
DA_AVX512 void pv_block512(const float* pg, const T* v, int64_t D, int64_t n, __mmask16 tail, const float* alpha,
                           float* acc, LineStream& ahead) {
  constexpr int KB = 16 / QB;
  __m512 a[QB][R];
#pragma GCC unroll 4
  for (int qi = 0; qi < QB; ++qi) {
    const __m512 al = _mm512_set1_ps(alpha[qi]);
#pragma GCC unroll 16
    for (int t = 0; t < R; ++t) {
      const float* o = acc + qi * D + 16 * t;
      a[qi][t] = _mm512_mul_ps(al, (MASK && t == R - 1) ? _mm512_maskz_loadu_ps(tail, o) : _mm512_loadu_ps(o));
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    ahead.step();
    const T* vr = v + j * D;
    const float* pj = pg + (j / KB) * 16 + j % KB;
    __m512 x[R];
#pragma GCC unroll 16
    for (int t = 0; t < R; ++t) x[t] = (MASK && t == R - 1) ? load16(vr + 16 * t, tail) : load16(vr + 16 * t);
#pragma GCC unroll 4
    for (int qi = 0; qi < QB; ++qi) {
      const __m512 w = _mm512_set1_ps(pj[qi * KB]);
#pragma GCC unroll 16
      for (int t = 0; t < R; ++t) a[qi][t] = _mm512_fmadd_ps(w, x[t], a[qi][t]);
    }
  }
#pragma GCC unroll 4
  for (int qi = 0; qi < QB; ++qi)
#pragma GCC unroll 16
    for (int t = 0; t < R; ++t) {
      float* o = acc + qi * D + 16 * t;
      if (MASK && t == R - 1)
        _mm512_mask_storeu_ps(o, tail, a[qi][t]);
      else
        _mm512_storeu_ps(o, a[qi][t]);
    }
}

// The last `cnt` (< R, or R with a partial last vector) vectors of a row: pv_block512 with N = cnt.
template <int QB, int N, typename T>
DA_AVX512 void pv_rest512(int cnt, bool masked, const float* pg, const T* v, int64_t D, int64_t n, __mmask16 tail,
                          const float* alpha, float* acc, LineStream& ahead) {
  if constexpr (N > 0) {
    if (cnt == N) {
      if (masked)
        pv_block512<QB, N, true, T>(pg, v, D, n, tail, alpha, acc, ahead);
      else
        pv_block512<QB, N, false, T>(pg, v, D, n, tail, alpha, acc, ahead);
    } else {
      pv_rest512<QB, N - 1, T>(cnt, masked, pg, v, D, n, tail, alpha, acc, ahead);
    }
  }
}

// All D columns of a group's QB queries: slices of R full vectors, then the rest.
template <int QB, int R, typename T>
DA_AVX512 void pv_rows512(const float* pg, const T* v, int64_t D, int64_t n, __mmask16 tail, const float* alpha,
                          float* acc, LineStream& ahead) {
  const int64_t slices = (D + 16 * R - 1) / (16 * R);
  ahead.per = ahead.lines ? std::max<int64_t>(1, (ahead.lines + slices * n - 1) / (slices * n)) : 0;
  int64_t d = 0;
  for (; d + 16 * R <= D; d += 16 * R) pv_block512<QB, R, false, T>(pg, v + d, D, n, tail, alpha, acc + d, ahead);
  const int64_t left = D - d;  // < 16R
  if (left > 0)
    pv_rest512<QB, R, T>(static_cast<int>((left + 15) / 16), left % 16 != 0, pg, v + d, D, n, tail, alpha, acc + d,
                         ahead);
}

// Phase 1 of a block, per score tile: the KB key rows of tile keys j0.. (past nb: the last row again),
// and, when `prefetch`, the same rows of the next block brought in while this tile is scored.
template <int KB, typename T>
DA_AVX512_INLINE void tile_rows(const Problem& P, const T* kb, int64_t j0, int64_t nb, bool prefetch, const T** r) {
#pragma GCC unroll 16
  for (int kk = 0; kk < KB; ++kk) r[kk] = kb + std::min<int64_t>(j0 + kk, nb - 1) * P.D;
  if (prefetch) {
    const char* ahead = reinterpret_cast<const char*>(kb + (P.BK + j0) * P.D);
    for (int64_t o = 0; o < KB * P.D * int64_t(sizeof(T)); o += 64) latentlm::prefetch_line(ahead + o, P.far);
  }
}

// A [QB, KB] score tile of keys j0.. with the lanes of keys past nb set to -inf (weight 0).
template <int QB>
DA_AVX512_INLINE __m512 mask_past(__m512 s, int64_t j0, int64_t nb) {
  constexpr int KB = 16 / QB;
  if (j0 + KB <= nb) return s;
  uint32_t valid = 0;
  for (int qi = 0; qi < QB; ++qi) valid |= ((1u << (nb - j0)) - 1) << (qi * KB);
  return _mm512_mask_mov_ps(_mm512_set1_ps(kNegInf), static_cast<__mmask16>(valid), s);
}

// The bf16 bits of x (finite, >= 0) rounded to nearest even, in the low half of each lane: integer
// arithmetic, so the fp32 paths need no BF16 instructions.
DA_AVX512_INLINE __m512i bf16_bits(__m512 x) {
  const __m512i b = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  return _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd)), 16);
}

// Phase 2 of a block: the online softmax over its score tiles pg [tiles, 16] (log2 units, tile layout).
// Per query: the new running max mw, the rescale factor al of what came before, the weights 2^(s - m)
// (into pg) and the running sum lw. BF16: the weights are rounded to bf16 and go to pb instead, as bf16
// bits (tile layout, for the bf16 dot products of P V), and lw sums the rounded values, the ones P V uses.
template <int QB, bool BF16>
DA_AVX512_INLINE void softmax_tiles(float* pg, int64_t tiles, float* mw, float* lw, float* al, uint16_t* pb) {
  __m512 mv = _mm512_set1_ps(kNegInf);
  for (int64_t jt = 0; jt < tiles; ++jt) mv = _mm512_max_ps(mv, _mm512_loadu_ps(pg + 16 * jt));
  __m512 mb = mv;
  for (int qi = 0; qi < QB; ++qi) {
    const __mmask16 lanes = query_lanes<QB>(qi);
    const float m = std::max(mw[qi], _mm512_mask_reduce_max_ps(lanes, mv));
    al[qi] = m == mw[qi] ? 1.f : std::exp2(mw[qi] - m);
    mw[qi] = m;
    mb = _mm512_mask_mov_ps(mb, lanes, _mm512_set1_ps(m));
  }
  __m512 sv = _mm512_setzero_ps();
  for (int64_t jt = 0; jt < tiles; ++jt) {
    __m512 e = exp2_avx512(_mm512_sub_ps(_mm512_loadu_ps(pg + 16 * jt), mb));
    if constexpr (BF16) {
      const __m512i bits = bf16_bits(e);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(pb + 16 * jt), _mm512_cvtepi32_epi16(bits));
      e = _mm512_castsi512_ps(_mm512_slli_epi32(bits, 16));
    } else {
      _mm512_storeu_ps(pg + 16 * jt, e);
    }
    sv = _mm512_add_ps(sv, e);
  }
  for (int qi = 0; qi < QB; ++qi) lw[qi] = lw[qi] * al[qi] + _mm512_mask_reduce_add_ps(query_lanes<QB>(qi), sv);
}

// Phase 1 of a block for a group of 4 queries, D = 16 NV (NV <= 4, so D = 64 here; D = 128 would need
// all 32 registers for the pairs): the tiles score_tile makes, from query pairs. A zmm holds 8 columns of
// queries 2p and 2p + 1 in its halves and the key's same 8 columns in both, so each FMA advances two
// scores: a tile takes 8 accumulators and one reduction of half sums (21 shuffles and adds) where
// score_tile takes 16 and reduce16 (45). The pairs stay in registers across the block's tiles. 2-core
// AMD EPYC (Zen 4), 4 / 1 x 64, interleaved with score_tile's way: 1.05-1.06x faster at 16k keys,
// 1.21-1.36x at 1k; single-threaded at 16k the scores then run at ~90% of the FMA rate.
template <int NV, typename T>
DA_AVX512 void scores_paired(const Problem& P, const float* qs, const T* kb, int64_t nb, bool prefetch, float* pg) {
  constexpr int C = 2 * NV;  // chunks of 8 columns
  const int64_t DP = P.DP;
  __m512 qp[2][C];
#pragma GCC unroll 2
  for (int p = 0; p < 2; ++p)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c)
      qp[p][c] = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(qs + 2 * p * DP + 8 * c)),
                                    _mm256_loadu_ps(qs + (2 * p + 1) * DP + 8 * c), 1);
  const int64_t tiles = (nb + 3) / 4;
  for (int64_t jt = 0; jt < tiles; ++jt) {
    const T* r[4];
    tile_rows<4>(P, kb, jt * 4, nb, prefetch, r);
    __m512 a[8];  // a[4 p + kk]: key kk against queries 2p (low half) and 2p + 1 (high half)
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) a[i] = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c)
#pragma GCC unroll 4
      for (int kk = 0; kk < 4; ++kk) {
        const __m512 x = bcast8(r[kk] + 8 * c);
        a[kk] = _mm512_fmadd_ps(qp[0][c], x, a[kk]);
        a[4 + kk] = _mm512_fmadd_ps(qp[1][c], x, a[4 + kk]);
      }
    _mm512_storeu_ps(pg + 16 * jt, mask_past<4>(reduce_halves(a), jt * 4, nb));
  }
}

// One query group's block: scores into pg (tile layout), online softmax state (mw, lw, al), then acc.
// prefetch: the next block's key rows while scoring, its value rows while summing.
template <int QB, int NV, typename T>
DA_AVX512 void group_block512(const Problem& P, const float* qs, const T* kb, const T* vb, int64_t nb,
                              int64_t next_rows, bool prefetch, float* pg, float* mw, float* lw, float* al,
                              float* aw) {
  constexpr int KB = 16 / QB;
  const int64_t D = P.D, DP = P.DP, DV = (D + 15) / 16;
  const __mmask16 tail = static_cast<__mmask16>(D % 16 ? (1u << (D % 16)) - 1 : 0xFFFF);
  const int64_t tiles = (nb + KB - 1) / KB;
  if constexpr (QB == 4 && NV > 0 && NV <= 4) {  // 1. scores
    scores_paired<NV, T>(P, qs, kb, nb, prefetch, pg);
  } else {
    for (int64_t jt = 0; jt < tiles; ++jt) {
      const T* r[KB];
      tile_rows<KB>(P, kb, jt * KB, nb, prefetch, r);
      _mm512_storeu_ps(pg + 16 * jt, mask_past<QB>(score_tile<QB, NV, T>(qs, DP, r, DV, tail), jt * KB, nb));
    }
  }
  softmax_tiles<QB, false>(pg, tiles, mw, lw, al, nullptr);  // 2.
  // 3. acc = al acc + p V, the next block's value rows prefetched
  LineStream values{reinterpret_cast<const char*>(vb + nb * D), prefetch ? (next_rows * D * int64_t(sizeof(T)) + 63) / 64 : 0, 1,
                    P.far};
  constexpr int R = QB == 4 ? 4 : 8;
  pv_rows512<QB, R, T>(pg, vb, D, nb, tail, al, aw, values);
}

// One item: blocks of BK keys; the g queries in groups of 4, then 2, then 1. qs [G, DP] scaled queries
// (DP: D rounded up to 16, zero padded), p [G, BK] block weights, al [G] rescale factors.
template <int NV, typename T>
DA_AVX512 void item_avx512_impl(const Problem& P, int64_t w, float* qs, float* p, float* al) {
  const int64_t G = P.G, D = P.D, DP = P.DP, BK = P.BK;
  const Item<T> it = start_item<T>(P, w, qs);
  const T *kh = it.kh, *vh = it.vh;
  const int64_t n = it.n;
  float *aw = it.aw, *mw = it.mw, *lw = it.lw;
  for (int64_t b0 = 0; b0 < n; b0 += BK) {
    const int64_t nb = std::min(BK, n - b0), next_rows = std::min(BK, n - b0 - nb);
    const T* kb = kh + b0 * D;
    const T* vb = vh + b0 * D;
    int64_t i = 0;
    for (; i + 4 <= G; i += 4)
      group_block512<4, NV, T>(P, qs + i * DP, kb, vb, nb, next_rows, i == 0, p + i * BK, mw + i, lw + i, al + i, aw + i * D);
    if (G - i >= 2) {
      group_block512<2, NV, T>(P, qs + i * DP, kb, vb, nb, next_rows, i == 0, p + i * BK, mw + i, lw + i, al + i, aw + i * D);
      i += 2;
    }
    if (G - i == 1)
      group_block512<1, NV, T>(P, qs + i * DP, kb, vb, nb, next_rows, i == 0, p + i * BK, mw + i, lw + i, al + i, aw + i * D);
  }
}

template <typename T>
DA_AVX512 void item_avx512(const Problem& P, int64_t w, float* qs, float* p, float* al) {
  if (P.D == 64)
    item_avx512_impl<4, T>(P, w, qs, p, al);
  else if (P.D == 128)
    item_avx512_impl<8, T>(P, w, qs, p, al);
  else
    item_avx512_impl<0, T>(P, w, qs, p, al);
}

// ---------------------------------------------------------------- AVX-512 BF16 path
//
// For a bf16 cache (kv_dtype="bfloat16"), g a multiple of 4, D a multiple of 32: the AVX-512 path's
// phases with bf16 dot products (vdpbf16ps: 32 products of bf16 pairs summed into 16 fp32 lanes per
// instruction, twice the fp32 FMA's work at the same rate on Zen 4). The scaled queries and the softmax
// weights are rounded to bf16, as bf16 attention kernels on GPUs do; the products are exact in fp32 and
// sums stay fp32. Score tiles read the key rows as they are stored (no widening). P V takes keys in
// pairs: the two value rows interleaved so that one instruction adds both keys' weighted values.

#define DA_BF16 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define DA_BF16_INLINE \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"), always_inline)) inline

using BF16 = c10::BFloat16;

// Queries 2p (low half) and 2p + 1 (high half) of a group's qb [4, D], columns 16c .. 16c + 15, bf16.
DA_BF16_INLINE __m512bh query_pair_bf16(const uint16_t* qb, int64_t D, int p, int64_t c) {
  const auto* lo = reinterpret_cast<const __m256i*>(qb + 2 * p * D + 16 * c);
  const auto* hi = reinterpret_cast<const __m256i*>(qb + (2 * p + 1) * D + 16 * c);
  return (__m512bh)_mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(lo)), _mm256_loadu_si256(hi), 1);
}

// Phase 1 of a block: score tiles of 4 queries x 4 keys (lane qi * 4 + kk) from query pairs, as
// scores_paired does in fp32: a zmm holds 16 columns of queries 2p and 2p + 1 (bf16) in its halves and the
// key's same 16 columns in both, so each vdpbf16ps advances two scores; 8 accumulators per tile and one
// reduction of half sums. D = 32 NV: with NV > 0 (D = 64, 128) the pairs stay in registers across the
// block's tiles, else (D = 32 NV at run time) they are read again for each tile. (Before 2026-12-04: 16
// accumulators and reduce16 per tile; the pairs made the op 1.06-1.19x faster at 16k keys.)
template <int NV>
DA_BF16 void scores_paired_bf16(const Problem& P, const uint16_t* qb, const BF16* kb, int64_t nb, bool prefetch,
                                float* pg) {
  constexpr int KC = NV > 0 ? 2 * NV : 1;  // chunks of 16 columns kept in registers
  const int64_t D = P.D, C = D / 16;
  __m512bh qp[2][KC];
  if constexpr (NV > 0) {
#pragma GCC unroll 2
    for (int p = 0; p < 2; ++p)
#pragma GCC unroll 8
      for (int c = 0; c < KC; ++c) qp[p][c] = query_pair_bf16(qb, D, p, c);
  }
  const int64_t tiles = (nb + 3) / 4;
  for (int64_t jt = 0; jt < tiles; ++jt) {
    const BF16* r[4];
    tile_rows<4>(P, kb, jt * 4, nb, prefetch, r);
    __m512 a[8];  // a[4 p + kk]: key kk against queries 2p (low half) and 2p + 1 (high half)
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) a[i] = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int64_t c = 0; c < (NV > 0 ? KC : C); ++c) {
      const __m512bh q0 = NV > 0 ? qp[0][c] : query_pair_bf16(qb, D, 0, c);
      const __m512bh q1 = NV > 0 ? qp[1][c] : query_pair_bf16(qb, D, 1, c);
#pragma GCC unroll 4
      for (int kk = 0; kk < 4; ++kk) {
        const __m512bh x =
            (__m512bh)_mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r[kk] + 16 * c)));
        a[kk] = _mm512_dpbf16_ps(a[kk], q0, x);
        a[4 + kk] = _mm512_dpbf16_ps(a[4 + kk], q1, x);
      }
    }
    _mm512_storeu_ps(pg + 16 * jt, mask_past<4>(reduce_halves(a), jt * 4, nb));
  }
}

// acc[qi] <- alpha[qi] acc[qi] + sum_j p(qi, j) v[j] on R chunks of 32 columns, for a group's 4 queries.
// Keys go in pairs (j, j+1): per 128-bit lane, vpunpck{l,h}wd interleave 4 columns of both value rows,
// so one vdpbf16ps adds p(qi, j) v[j, c] + p(qi, j+1) v[j+1, c] for 16 columns c. pw: the weights' bf16
// bits in tile layout, the 32-bit word (j / 4) * 8 + qi * 2 + (j % 4) / 2 holding the pair (p(qi, j),
// p(qi, j+1)) of an even j. The accumulator of chunk k keeps its columns in the interleaved order: its
// first 16 floats hold columns 32k + 8L + i, its last 16 columns 32k + 8L + 4 + i (lane 4L + i;
// unpermute_chunks puts them back). An odd n pairs its last key with itself at weight 0.
template <int R>
DA_BF16 void pv_block_bf16(const uint32_t* pw, const BF16* v, int64_t D, int64_t n, const float* alpha, float* acc,
                           LineStream& ahead) {
  __m512 a[4][2 * R];
#pragma GCC unroll 4
  for (int qi = 0; qi < 4; ++qi) {
    const __m512 al = _mm512_set1_ps(alpha[qi]);
#pragma GCC unroll 8
    for (int t = 0; t < 2 * R; ++t) a[qi][t] = _mm512_mul_ps(al, _mm512_loadu_ps(acc + qi * D + 16 * t));
  }
  for (int64_t j = 0; j < n; j += 2) {
    ahead.step();
    const BF16* r0 = v + j * D;
    const BF16* r1 = v + std::min(j + 1, n - 1) * D;
    __m512bh lo[R], hi[R];
#pragma GCC unroll 4
    for (int c = 0; c < R; ++c) {
      const __m512i x0 = _mm512_loadu_si512(r0 + 32 * c), x1 = _mm512_loadu_si512(r1 + 32 * c);
      lo[c] = (__m512bh)_mm512_unpacklo_epi16(x0, x1);
      hi[c] = (__m512bh)_mm512_unpackhi_epi16(x0, x1);
    }
    const uint32_t* pj = pw + (j / 4) * 8 + (j % 4) / 2;
#pragma GCC unroll 4
    for (int qi = 0; qi < 4; ++qi) {
      const __m512bh w = (__m512bh)_mm512_set1_epi32(static_cast<int>(pj[qi * 2]));
#pragma GCC unroll 4
      for (int c = 0; c < R; ++c) {
        a[qi][2 * c] = _mm512_dpbf16_ps(a[qi][2 * c], w, lo[c]);
        a[qi][2 * c + 1] = _mm512_dpbf16_ps(a[qi][2 * c + 1], w, hi[c]);
      }
    }
  }
#pragma GCC unroll 4
  for (int qi = 0; qi < 4; ++qi)
#pragma GCC unroll 8
    for (int t = 0; t < 2 * R; ++t) _mm512_storeu_ps(acc + qi * D + 16 * t, a[qi][t]);
}

// All D columns: slices of 64 (R = 2: 16 accumulators), then a rest of 32. `ahead` spread over the pairs.
DA_BF16 void pv_rows_bf16(const uint32_t* pw, const BF16* v, int64_t D, int64_t n, const float* alpha, float* acc,
                          LineStream& ahead) {
  const int64_t slices = (D + 63) / 64, pairs = (n + 1) / 2;
  ahead.per = ahead.lines ? std::max<int64_t>(1, (ahead.lines + slices * pairs - 1) / (slices * pairs)) : 0;
  int64_t d = 0;
  for (; d + 64 <= D; d += 64) pv_block_bf16<2>(pw, v + d, D, n, alpha, acc + d, ahead);
  if (d < D) pv_block_bf16<1>(pw, v + d, D, n, alpha, acc + d, ahead);
}

// A row of D accumulators from pv_block_bf16, its columns back in order, chunk by chunk.
DA_AVX512_INLINE void unpermute_chunks(float* row, int64_t D) {
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int64_t c = 0; c < D; c += 32) {
    const __m512 lo = _mm512_loadu_ps(row + c), hi = _mm512_loadu_ps(row + c + 16);
    _mm512_storeu_ps(row + c, _mm512_permutex2var_ps(lo, first, hi));
    _mm512_storeu_ps(row + c + 16, _mm512_permutex2var_ps(lo, second, hi));
  }
}

// One 4-query group's block (group_block512's phases): qb its queries' bf16 bits, pg [tiles, 16] scores,
// pb [tiles, 16] the weights' bf16 bits.
template <int NV>
DA_BF16 void group_block_bf16(const Problem& P, const uint16_t* qb, const BF16* kb, const BF16* vb, int64_t nb,
                              int64_t next_rows, bool prefetch, float* pg, uint16_t* pb, float* mw, float* lw,
                              float* al, float* aw) {
  const int64_t D = P.D, tiles = (nb + 3) / 4;
  scores_paired_bf16<NV>(P, qb, kb, nb, prefetch, pg);  // 1.
  softmax_tiles<4, true>(pg, tiles, mw, lw, al, pb);  // 2.
  LineStream values{reinterpret_cast<const char*>(vb + nb * D), prefetch ? (next_rows * D * int64_t(sizeof(BF16)) + 63) / 64 : 0, 1,
                    P.far};
  pv_rows_bf16(reinterpret_cast<const uint32_t*>(pb), vb, D, nb, al, aw, values);  // 3.
}

// One item (g % 4 == 0, D % 32 == 0): the queries rounded to bf16 into qb [G, D], then blocks of BK keys,
// 4 queries at a time; pb [G, BK] the block's weights as bf16. Accumulators back in column order at the end.
template <int NV>
DA_BF16 void item_bf16_impl(const Problem& P, int64_t w, float* qs, float* p, float* al, uint16_t* qb, uint16_t* pb) {
  const int64_t G = P.G, D = P.D, DP = P.DP, BK = P.BK;
  const Item<BF16> it = start_item<BF16>(P, w, qs);
  for (int64_t i = 0; i < G; ++i)
    for (int64_t d = 0; d < D; d += 32)
      _mm512_storeu_si512(qb + i * D + d, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(qs + i * DP + d + 16),
                                                                       _mm512_loadu_ps(qs + i * DP + d)));
  for (int64_t b0 = 0; b0 < it.n; b0 += BK) {
    const int64_t nb = std::min(BK, it.n - b0), next_rows = std::min(BK, it.n - b0 - nb);
    for (int64_t i = 0; i < G; i += 4)
      group_block_bf16<NV>(P, qb + i * D, it.kh + b0 * D, it.vh + b0 * D, nb, next_rows, i == 0, p + i * BK,
                           pb + i * BK, it.mw + i, it.lw + i, al + i, it.aw + i * D);
  }
  for (int64_t i = 0; i < G; ++i) unpermute_chunks(it.aw + i * D, D);
}

DA_BF16 void item_bf16(const Problem& P, int64_t w, float* qs, float* p, float* al, uint16_t* qb, uint16_t* pb) {
  if (P.D == 64)
    item_bf16_impl<2>(P, w, qs, p, al, qb, pb);
  else if (P.D == 128)
    item_bf16_impl<4>(P, w, qs, p, al, qb, pb);
  else
    item_bf16_impl<0>(P, w, qs, p, al, qb, pb);
}

DA_AVX2 void axpy_avx2(float w, const float* x, float* y, int64_t d) {
  const __m256 wv = _mm256_set1_ps(w);
  int64_t i = 0;
  for (; i + 8 <= d; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < d; ++i) y[i] += w * x[i];
}

// Chunks per (b, h): enough that none has more than `chunk` keys; with few (b, h) pairs (BH) for the
// T threads, rounded up so that the items divide evenly among the threads, while chunks keep >= 64 keys.
int64_t chunk_count(int64_t S, int64_t chunk, int64_t BH, int64_t T) {
  int64_t C = (S + chunk - 1) / chunk;
  if (T > 1 && BH < 8 * T) {
    const int64_t step = T / std::gcd(BH, T);
    const int64_t even = (C + step - 1) / step * step;
    if (S >= 64 * even) C = even;
  }
  return C;
}

}  // namespace

// ISA paths (the Python wrapper's codes): 0 scalar loops, 1 AVX2 + FMA, 2 AVX-512 (F, BW, VL, DQ),
// 3 AVX-512 with bf16 dot products (+ BF16), for bf16 caches with g % 4 == 0 and D % 32 == 0 (other
// inputs forced onto it take the AVX-512 path).
enum Isa : int64_t { kBest = -1, kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

bool supports(int64_t isa) {
  switch (isa) {
    case kScalar:
      return true;
    case kAvx2:
      return latentlm::has_avx2() && latentlm::has_f16c();
    case kAvx512:
      return latentlm::has_avx512();
    case kAvx512Bf16:
      return latentlm::has_avx512_bf16();
    default:
      return false;
  }
}

// Whether the bf16 dot-product path takes a call: a bf16 cache, g a multiple of 4, D of 32.
bool bf16_dot_fits(bool bf16, int64_t group, int64_t dim) { return bf16 && group % 4 == 0 && dim % 32 == 0; }

// The path a call with g queries per KV head takes by default: AVX-512 where its score tiles are full
// (g a multiple of 4: each key vector loaded once for 4 queries), 1.2-1.4x faster than AVX2 there at
// 16k keys; else AVX2, since with 1 or 2 queries per tile the 16-sum reductions cost more than AVX2's
// 8-sum ones (AVX-512 measured 0.84-0.9x). 2-core AMD EPYC (Zen 4), fastest of 30 interleaved calls.
// A bf16 cache that fits takes the bf16 dot products where the CPU has them.
int64_t best_isa(int64_t group, int64_t dim, bool bf16) {
  if (bf16_dot_fits(bf16, group, dim) && supports(kAvx512Bf16)) return kAvx512Bf16;
  if (group % 4 == 0 && supports(kAvx512)) return kAvx512;
  return supports(kAvx2) ? kAvx2 : kScalar;
}

torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale, int64_t chunk,
                               int64_t isa, bool far) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be 4-D");
  const auto kt = k.scalar_type();
  const bool wide = kt == at::kFloat, bf16 = kt == at::kBFloat16;
  TORCH_CHECK(q.scalar_type() == at::kFloat && (wide || bf16 || kt == at::kHalf) && v.scalar_type() == kt,
              "q must be fp32, and k and v both fp32, both fp16 or both bf16");
  TORCH_CHECK(q.is_contiguous(), "q must be contiguous: [B, Hkv, g, D] or [B, H, 1, D]");
  const int64_t B = q.size(0), H = k.size(1), D = q.size(3), S = k.size(2);
  TORCH_CHECK(H > 0 && (q.size(1) * q.size(2)) % H == 0, "query heads must be a multiple of the KV heads");
  const int64_t G = q.size(1) * q.size(2) / H;  // q [B, H, 1, D] contiguous is q [B, Hkv, g, D]
  TORCH_CHECK(k.size(0) == B && k.size(3) == D && v.sizes() == k.sizes(), "shape mismatch");
  TORCH_CHECK(k.stride(3) == 1 && k.stride(2) == D && v.stride(3) == 1 && v.stride(2) == D,
              "k and v need contiguous rows of D");
  TORCH_CHECK(S > 0 && chunk > 0 && D > 0, "need keys, a positive chunk and D");
  if (isa == kBest) isa = best_isa(G, D, bf16);
  TORCH_CHECK(supports(isa), "this CPU cannot run decode_attention ISA path ", isa);
  if (isa == kAvx512Bf16 && !bf16_dot_fits(bf16, G, D)) isa = kAvx512;
  if (isa == kAvx2 && !wide && D % 8 != 0) isa = kScalar;  // 16-bit rows: AVX2 has no masked 16-bit loads
  const int64_t C0 = chunk_count(S, chunk, B * H, at::get_num_threads());
  chunk = round8((S + C0 - 1) / C0);  // equal chunks of a multiple of 8 keys (the last one may be shorter)
  const int64_t C = (S + chunk - 1) / chunk, items = B * H * C;
  // one buffer: acc [items, G, D], then mx [items, G], sm [items, G]
  auto partial = torch::empty({items * G * (D + 2)}, q.options());
  auto out = torch::empty_like(q);
  // keys per block: ~16 KiB of value rows, a multiple of the widest score tile (8 keys AVX2, 16 AVX-512)
  const bool wide512 = isa == kAvx512 || isa == kAvx512Bf16;
  const int64_t tile = wide512 ? 16 : 8;
  const int64_t BK = std::clamp<int64_t>(kBlockBytes / (4 * D) / tile * tile, tile, 256);  // 64 at D=64
  const int64_t DP = wide512 ? (D + 15) / 16 * 16 : round8(D);
  Problem P{H, G, D, S, chunk, C, DP, round8(chunk), BK,
            q.data_ptr<float>(), k.data_ptr(), v.data_ptr(),
            k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            static_cast<float>(scale * kLog2e), far, nullptr, nullptr, nullptr};
  P.acc = partial.data_ptr<float>();
  P.mx = P.acc + items * G * D;
  P.sm = P.mx + items * G;

  at::parallel_for(0, items, 1, [&](int64_t lo, int64_t hi) {
    // qs [G, DP], al [G], p [G, max(CP, BK)]; the bf16 path's qb [G, D] and pb [G, BK] (2 bytes each)
    std::vector<float> buf(G * (P.DP + std::max(P.CP, P.BK) + 1) + (G * (D + P.BK) + 1) / 2 + 16);
    float* qs = buf.data();
    float* al = qs + G * P.DP;
    float* p = al + G;
    uint16_t* qb = reinterpret_cast<uint16_t*>(p + G * std::max(P.CP, P.BK));
    uint16_t* pb = qb + G * D;
    auto run = [&](auto row) {  // row: a value of the cache's element type
      using T = decltype(row);
      for (int64_t w = lo; w < hi; ++w) {
        if constexpr (std::is_same_v<T, BF16>) {
          if (isa == kAvx512Bf16) {
            item_bf16(P, w, qs, p, al, qb, pb);
            continue;
          }
        }
        if (isa == kAvx512 || isa == kAvx512Bf16)
          item_avx512<T>(P, w, qs, p, al);
        else if (isa == kAvx2)
          item_avx2<T>(P, w, qs, p, al);
        else
          item_scalar<T>(P, w, qs, p);
      }
    };
    if (wide)
      run(float{});
    else if (bf16)
      run(BF16{});
    else
      run(c10::Half{});
  });

  // merge the chunks of each (b, h, query); small merges run on one thread
  auto axpy = isa != kScalar ? axpy_avx2 : axpy_scalar<float>;
  float* op = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 32768 / (C * D + 1));
  at::parallel_for(0, B * H * G, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t bh = r / G, i = r % G;
      float m = kNegInf;
      for (int64_t c = 0; c < C; ++c) m = std::max(m, P.mx[(bh * C + c) * G + i]);
      float z = 0.f;
      float* o = op + r * D;
      std::fill(o, o + D, 0.f);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t w = bh * C + c;
        const float e = std::exp2(P.mx[w * G + i] - m);
        z += e * P.sm[w * G + i];
        axpy(e, P.acc + (w * G + i) * D, o, D);
      }
      const float inv = 1.f / z;
      for (int64_t t = 0; t < D; ++t) o[t] *= inv;
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "one decoding step of grouped attention, fp32 (cache fp32, fp16 or bf16)");
  m.def("supports", &supports, "whether ISA path (0 scalar, 1 avx2, 2 avx512, 3 avx512_bf16) runs on this CPU");
  m.def("best_isa", &best_isa, "the ISA path a call with `group` queries per KV head of `dim` takes by default",
        pybind11::arg("group"), pybind11::arg("dim") = 64, pybind11::arg("bf16") = false);
}
