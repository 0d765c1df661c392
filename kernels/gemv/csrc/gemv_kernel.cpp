// The small-batch fp32 GEMV kernel on CPU (decoding: one or a few tokens against a weight matrix), behind
// gemv_kernel.h. Torch ops on it: small_batch_linear (gemv_cpu.cpp), glu_block (kernels/glu_block).
// Reference: kernels/gemv/naive.py (F.linear).
//
//   x [M, K], w [N, K], bias [N] or none, all contiguous fp32, M small  ->  y [M, N] = x . w^T + bias.
//
// With M this small the call is bound by reading w once from memory, so everything is arranged
// around streaming w (the choices below were measured on a 2-core AMD EPYC, Zen 3):
// - Threads: at::parallel_for splits the rows of w into one contiguous range per thread (2 here),
//   cut at block boundaries; a matrix below `min_parallel_bytes` stays on the calling thread
//   (starting the parallel region costs ~1 us, more than it saves below ~200 KiB).
// - Streams: each thread's range is cut into R streams of consecutive rows and block t takes row t
//   of every stream: R long sequential streams at once, which the hardware prefetcher follows
//   (blocks of R adjacent rows of 1 KiB, i.e. short interleaved streams inside one 4 KiB page,
//   were read 1.2-1.6x slower from DRAM).
// - Register blocking: a block (R rows of w) is read once for all M rows of x, in passes of MC <= 4
//   rows of x with R x MC accumulators (R = 4 for M <= 3, else 2; 4 x 4 would spill); later passes
//   find the block in L1. Blocks with fewer than 8 accumulators keep two sets, so FMA latency does
//   not limit them when the weights are in the caches.
// - Software prefetch: each stream touches, once per 64-byte line it reads, the line
//   prefetch_bytes / R ahead in the stream (whole rows ahead for short rows, within the row for
//   long ones); before its first block a thread fetches the start of each of its streams at once.
//   Matrices of far_bytes or more (they come from memory, not from the last-level cache) are
//   prefetched into L2, smaller ones into L1 (latentlm::prefetch_line). 2-core AMD EPYC (Zen 4), M = 1,
//   weights from memory (copies cycled through), 40 interleaved rounds, L1 -> L2: [3072, 3072],
//   [8192, 3072], [3072, 8192], [9216, 3072], [2048, 2048] 1.01-1.11x faster in the fastest round,
//   1.06-1.49x in the median one, never slower. Matrices of 16 MiB and less that the caches hold ran
//   2-20% slower so ([768, 256] 6 -> 7 us, [2048, 2048] 0.132 -> 0.150 ms).
// - K tails (K % 8) use masked loads (zeros beyond K); rows left over (< R per thread) go in blocks
//   of one row. Horizontal sums are done four at a time.
// - The AVX2+FMA code lives in functions with target attributes (a lambda does not inherit them),
//   called from the at::parallel_for lambda; the scalar path is plain C++ (8 partial sums per dot
//   product, so its rounding is of the same order as the vector path's).
#include "gemv_kernel.h"
#include "latentlm_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define LATENTLM_X86 1
#include <immintrin.h>
#else
#define LATENTLM_X86 0
#endif

namespace latentlm_gemv {
namespace {

constexpr int kMaxMC = 4;  // rows of x per pass over a block of w


// ---------------------------------------------------------------------------------------------
// Scalar path: 8 partial sums per dot product (like the vector path's lanes), so its rounding is
// of the same order; blocks of 4 adjacent rows of w, each read once for all rows of x.

template <int MC, int R>
void block_scalar(const Job& j, int64_t n, int64_t m0) {
  const int64_t K = j.K;
  float acc[R][MC][8] = {};
  const float* wr[R];
  for (int r = 0; r < R; ++r) wr[r] = j.w + (n + r) * K;
  const float* xm[MC];
  for (int i = 0; i < MC; ++i) xm[i] = j.x + (m0 + i) * K;
  for (int64_t k = 0; k < K; ++k) {
    for (int r = 0; r < R; ++r) {
      const float wv = wr[r][k];
      for (int i = 0; i < MC; ++i) acc[r][i][k & 7] += wv * xm[i][k];
    }
  }
  for (int r = 0; r < R; ++r) {
    const float b = j.bias ? j.bias[n + r] : 0.f;
    for (int i = 0; i < MC; ++i) {
      const float* a = acc[r][i];
      j.y[(m0 + i) * j.N + n + r] = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7])) + b;
    }
  }
}

template <int R>
void rows_scalar(const Job& j, int64_t n) {
  for (int64_t m0 = 0; m0 < j.M; m0 += kMaxMC) {
    switch (std::min<int64_t>(kMaxMC, j.M - m0)) {
      case 1: block_scalar<1, R>(j, n, m0); break;
      case 2: block_scalar<2, R>(j, n, m0); break;
      case 3: block_scalar<3, R>(j, n, m0); break;
      default: block_scalar<4, R>(j, n, m0); break;
    }
  }
}

void range_scalar(const Job& j, int64_t n0, int64_t n1) {
  constexpr int R = 4;
  int64_t n = n0;
  for (; n + R <= n1; n += R) rows_scalar<R>(j, n);
  for (; n < n1; ++n) rows_scalar<1>(j, n);
}

#if LATENTLM_X86
// ---------------------------------------------------------------------------------------------
// AVX2 + FMA path.

// The four horizontal sums of a, b, c, d in one vector [sum a, sum b, sum c, sum d].
__attribute__((target("avx2,fma"))) inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b);  // a01 a23 b01 b23 | a45 a67 b45 b67
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);  // a0123 b0123 c0123 d0123 | a4567 ...
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// The MC x R dot products of rows m0..m0+MC-1 of x with rows n, n + gap, ..., n + (R-1) gap of w,
// plus bias, into y. pf: the prefetch stream of row n (row n + r gap's is pf + r gap K), touched
// once per 64-byte line read when `prefetch`. With fewer than 8 accumulators, the two halves of
// each 16-column step go to two sets, so that FMA latency does not limit a block in the caches.
template <int MC, int R>
__attribute__((target("avx2,fma"))) void block_avx2(const Job& j, int64_t n, int64_t gap, int64_t m0,
                                                    const float* pf, bool prefetch, bool far, __m256i tail_mask) {
  constexpr int S = R * MC >= 8 ? 1 : 2;
  const int64_t K = j.K, rs = gap * K;
  const float* w = j.w + n * K;
  const float* x = j.x + m0 * K;
  __m256 acc[S][R][MC];
  for (int s = 0; s < S; ++s)
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < MC; ++i) acc[s][r][i] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    if (prefetch) {
      for (int r = 0; r < R; ++r) latentlm::prefetch_line(pf + r * rs + k, far);
    }
    for (int h = 0; h < 2; ++h) {
      __m256 xv[MC];
      for (int i = 0; i < MC; ++i) xv[i] = _mm256_loadu_ps(x + i * K + k + 8 * h);
      if constexpr (R * MC + MC + 2 <= 16) {  // keep x in registers: GCC would fold a load of x into every
        for (int i = 0; i < MC; ++i) asm("" : "+x"(xv[i]));  // FMA (R times the loads; 1.1-1.25x at M = 8)
      }
      for (int r = 0; r < R; ++r) {
        const __m256 wv = _mm256_loadu_ps(w + r * rs + k + 8 * h);
        for (int i = 0; i < MC; ++i) acc[h % S][r][i] = _mm256_fmadd_ps(wv, xv[i], acc[h % S][r][i]);
      }
    }
  }
  if (k + 8 <= K) {
    if (prefetch) {
      for (int r = 0; r < R; ++r) latentlm::prefetch_line(pf + r * rs + k, far);
    }
    __m256 xv[MC];
    for (int i = 0; i < MC; ++i) xv[i] = _mm256_loadu_ps(x + i * K + k);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = _mm256_loadu_ps(w + r * rs + k);
      for (int i = 0; i < MC; ++i) acc[0][r][i] = _mm256_fmadd_ps(wv, xv[i], acc[0][r][i]);
    }
    k += 8;
  }
  if (k < K) {  // 1..7 columns left: masked loads read zeros beyond K
    __m256 xv[MC];
    for (int i = 0; i < MC; ++i) xv[i] = _mm256_maskload_ps(x + i * K + k, tail_mask);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = _mm256_maskload_ps(w + r * rs + k, tail_mask);
      for (int i = 0; i < MC; ++i) acc[S - 1][r][i] = _mm256_fmadd_ps(wv, xv[i], acc[S - 1][r][i]);
    }
  }
  // Horizontal sums, four at a time: sums[i * R + r] = sum of acc[.][r][i].
  constexpr int T = R * MC, T4 = (T + 3) / 4 * 4;
  __m256 flat[T4];
  for (int i = 0; i < MC; ++i)
    for (int r = 0; r < R; ++r) flat[i * R + r] = S == 2 ? _mm256_add_ps(acc[0][r][i], acc[S - 1][r][i]) : acc[0][r][i];
  for (int t = T; t < T4; ++t) flat[t] = _mm256_setzero_ps();
  alignas(16) float sums[T4];
  for (int t = 0; t < T4; t += 4) _mm_store_ps(sums + t, hsum4(flat[t], flat[t + 1], flat[t + 2], flat[t + 3]));
  float* y = j.y + m0 * j.N + n;
  for (int i = 0; i < MC; ++i)
    for (int r = 0; r < R; ++r) y[i * j.N + r * gap] = sums[i * R + r] + (j.bias ? j.bias[n + r * gap] : 0.f);
}

// Rows n, n + gap, ... of w against all rows of x, in passes of up to kMaxMC rows of x. The block
// is prefetched during the first pass only; later passes find it in L1.
template <int R>
__attribute__((target("avx2,fma"))) void rows_avx2(const Job& j, int64_t n, int64_t gap, const float* pf,
                                                   bool prefetch, bool far, __m256i tail_mask) {
  for (int64_t m0 = 0; m0 < j.M; m0 += kMaxMC) {
    switch (std::min<int64_t>(kMaxMC, j.M - m0)) {
      case 1: block_avx2<1, R>(j, n, gap, m0, pf, prefetch, far, tail_mask); break;
      case 2: block_avx2<2, R>(j, n, gap, m0, pf, prefetch, far, tail_mask); break;
      case 3: block_avx2<3, R>(j, n, gap, m0, pf, prefetch, far, tail_mask); break;
      default: block_avx2<4, R>(j, n, gap, m0, pf, prefetch, far, tail_mask); break;
    }
    prefetch = false;
  }
}

// Rows [n0, n1) of w: the range is cut into R streams of `gap` consecutive rows, and block t holds
// row t of each stream, so that R long sequential streams are read at once (see the top of the
// file). Rows left over (fewer than R) go in one-row blocks.
template <int R>
__attribute__((target("avx2,fma"))) void range_avx2(const Job& j, int64_t n0, int64_t n1, bool far) {
  const int64_t K = j.K;
  static const int32_t lanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  const __m256i tail_mask = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes + 8 - (K & 7)));
  const int64_t row_bytes = K * static_cast<int64_t>(sizeof(float));
  const int64_t pbytes = std::max<int64_t>(j.prefetch_bytes / R, 0);  // per stream
  const bool prefetch = pbytes > 0;
  const int64_t gap = (n1 - n0) / R;  // rows per stream
  // Each stream prefetches ~pbytes ahead of its reads (prefetch_bytes / R: the thread as a whole
  // stays prefetch_bytes ahead): whole rows ahead for short rows, within the row for long ones.
  const int64_t ahead_rows = row_bytes <= pbytes ? (pbytes + row_bytes - 1) / row_bytes : 1;
  const int64_t dist = row_bytes <= pbytes ? ahead_rows * K : pbytes / 4;
  if (prefetch && gap > 0) {  // warm-up: the start of every stream, all its lines at once
    for (int r = 0; r < R; ++r) {
      const char* p = reinterpret_cast<const char*>(j.w + (n0 + r * gap) * K);
      const char* stop = p + std::min(pbytes, gap * row_bytes);
      for (; p < stop; p += 64) latentlm::prefetch_line(p, far);
    }
  }
  for (int64_t t = 0; t < gap; ++t) {
    const float* w = j.w + (n0 + t) * K;
    const bool ahead = prefetch && t + ahead_rows < gap;  // else: no prefetch past the stream's end
    rows_avx2<R>(j, n0 + t, gap, ahead ? w + dist : w, ahead, far, tail_mask);
  }
  for (int64_t n = n0 + R * gap; n < n1; ++n) rows_avx2<1>(j, n, 1, j.w + n * K, false, far, tail_mask);
}
#endif

// ---------------------------------------------------------------------------------------------

// Rows of w per block for M rows of x: R x min(M, 4) accumulators (of 16 ymm registers) per pass
// (measured on Zen 3: M <= 3 fastest with R = 4, 4 <= M <= 8 with R = 2: 4 x 4 would spill).
int64_t auto_block_rows(int64_t M) { return M <= 3 ? 4 : 2; }

}  // namespace

void gemv(const Job& j, bool use_avx2, int64_t min_parallel_bytes, int64_t block_rows) {
  use_avx2 = use_avx2 && latentlm::has_avx2();
  // Threads get contiguous ranges of whole blocks (at::parallel_for splits [0, blocks) evenly);
  // a matrix below min_parallel_bytes stays on the calling thread.
  const int64_t N = j.N, R = block_rows ? block_rows : auto_block_rows(j.M);
  const int64_t blocks = (N + R - 1) / R;
  const int64_t bytes = N * j.K * static_cast<int64_t>(sizeof(float));
  const int64_t grain = bytes < min_parallel_bytes ? blocks : 1;
  const bool far = bytes >= j.far_bytes;  // streamed from memory: prefetch into L2
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    const int64_t n0 = b0 * R, n1 = std::min(N, b1 * R);
#if LATENTLM_X86
    if (use_avx2) {
      switch (R) {
        case 1: range_avx2<1>(j, n0, n1, far); break;
        case 2: range_avx2<2>(j, n0, n1, far); break;
        case 4: range_avx2<4>(j, n0, n1, far); break;
        default: range_avx2<8>(j, n0, n1, far); break;
      }
      return;
    }
#endif
    range_scalar(j, n0, n1);
  });
}

}  // namespace latentlm_gemv
