// RMSNorm on CPU, one pass per row: y = x * rsqrt(mean(x^2) + eps) * w. Reference: kernels/rms_norm/naive.py.
//
//   x [..., D] contiguous fp32 (R rows of D), w [D] fp32 or empty (no weight) -> y [..., D].
//
// Why: torch's CPU rms_norm is composed of five or six ops (pow, mean, add, rsqrt, mul...), ~20 us
// for one row of 256 floats, and a decoding step of a 12-layer backbone normalises ~40 single rows.
// Rows are spread over threads only when there are enough of them to pay for it.
#include <torch/extension.h>
#include "latentlm_cpu.h"
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>

namespace {

float sum_squares_scalar(const float* x, int64_t d) {
  float s = 0.f;
  for (int64_t i = 0; i < d; ++i) s += x[i] * x[i];
  return s;
}

void scale_scalar(const float* x, float r, const float* w, float* y, int64_t d) {
  for (int64_t i = 0; i < d; ++i) y[i] = w ? (x[i] * r) * w[i] : x[i] * r;
}

__attribute__((target("avx2,fma"))) float sum_squares_avx2(const float* x, int64_t d) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) {
    const __m256 u = _mm256_loadu_ps(x + i), v = _mm256_loadu_ps(x + i + 8);
    a0 = _mm256_fmadd_ps(u, u, a0);
    a1 = _mm256_fmadd_ps(v, v, a1);
  }
  for (; i + 8 <= d; i += 8) {
    const __m256 u = _mm256_loadu_ps(x + i);
    a0 = _mm256_fmadd_ps(u, u, a0);
  }
  a0 = _mm256_add_ps(a0, a1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float r = _mm_cvtss_f32(s);
  for (; i < d; ++i) r += x[i] * x[i];
  return r;
}

__attribute__((target("avx2,fma"))) void scale_avx2(const float* x, float r, const float* w, float* y, int64_t d) {
  const __m256 rv = _mm256_set1_ps(r);
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) {
    __m256 u = _mm256_mul_ps(_mm256_loadu_ps(x + i), rv);
    if (w) u = _mm256_mul_ps(u, _mm256_loadu_ps(w + i));
    _mm256_storeu_ps(y + i, u);
  }
  scale_scalar(x + i, r, w ? w + i : nullptr, y + i, d - i);
}

}  // namespace

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps, bool use_avx2) {
  TORCH_CHECK(x.dim() >= 1 && x.is_contiguous() && x.scalar_type() == at::kFloat, "x must be contiguous fp32 [..., D]");
  const int64_t D = x.size(-1), R = D > 0 ? x.numel() / D : 0;
  const bool weighted = w.numel() > 0;
  TORCH_CHECK(!weighted || (w.dim() == 1 && w.size(0) == D && w.is_contiguous() && w.scalar_type() == at::kFloat),
              "w must be contiguous fp32 [D] or empty");
  use_avx2 = use_avx2 && latentlm::has_avx2();
  auto y = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* wp = weighted ? w.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const float e = static_cast<float>(eps);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1));  // rows worth a thread
  at::parallel_for(0, R, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* xr = xp + r * D;
      const float ss = use_avx2 ? sum_squares_avx2(xr, D) : sum_squares_scalar(xr, D);
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(D) + e);
      if (use_avx2) scale_avx2(xr, inv, wp, yp + r * D, D);
      else scale_scalar(xr, inv, wp, yp + r * D, D);
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &rms_norm, "RMSNorm over the last dim, fp32");
  m.def("supports_avx2", &latentlm::has_avx2);
}
