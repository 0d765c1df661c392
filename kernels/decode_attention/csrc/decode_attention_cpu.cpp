// One decoding step of attention on CPU: the g query heads that share a KV head against all S cached
// keys, no mask (split-K "flash decoding"). Reference: kernels/decode_attention/naive.py.
//
//   q [B, Hkv, g, D] contiguous fp32; k, v [B, Hkv, S, D] fp32 with contiguous rows (any B and head
//   strides: views of a KV buffer with spare room); out [B, Hkv, g, D].
//
// Work item = (b, h, chunk of `chunk` keys), spread over threads: scores of the g queries for the
// chunk's keys (each key row read once for all g), their max m and sum l of exp(s - m), and the
// exp-weighted sum of the chunk's value rows. A second pass merges the chunks per (b, h, query):
// o = sum_c e^(m_c - M) acc_c / sum_c e^(m_c - M) l_c. K and V are each streamed once.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

float dot_scalar(const float* a, const float* b, int64_t d) {
  float r = 0.f;
  for (int64_t i = 0; i < d; ++i) r += a[i] * b[i];
  return r;
}

void axpy_scalar(float w, const float* x, float* y, int64_t d) {
  for (int64_t i = 0; i < d; ++i) y[i] += w * x[i];
}

__attribute__((target("avx2,fma"))) float dot_avx2(const float* a, const float* b, int64_t d) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= d; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  acc0 = _mm256_add_ps(acc0, acc1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  float r = _mm_cvtss_f32(s);
  for (; i < d; ++i) r += a[i] * b[i];
  return r;
}

__attribute__((target("avx2,fma"))) void axpy_avx2(float w, const float* x, float* y, int64_t d) {
  const __m256 wv = _mm256_set1_ps(w);
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < d; ++i) y[i] += w * x[i];
}

bool has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

}  // namespace

torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale, int64_t chunk,
                               bool use_avx2) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be 4-D");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "fp32 only");
  TORCH_CHECK(q.is_contiguous(), "q must be contiguous [B, Hkv, g, D]");
  const int64_t B = q.size(0), H = q.size(1), G = q.size(2), D = q.size(3), S = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(1) == H && k.size(3) == D && v.sizes() == k.sizes(), "shape mismatch");
  TORCH_CHECK(k.stride(3) == 1 && k.stride(2) == D && v.stride(3) == 1 && v.stride(2) == D,
              "k and v need contiguous rows of D");
  TORCH_CHECK(S > 0 && chunk > 0, "need keys and a positive chunk");
  use_avx2 = use_avx2 && has_avx2();
  auto dot = use_avx2 ? dot_avx2 : dot_scalar;
  auto axpy = use_avx2 ? axpy_avx2 : axpy_scalar;

  const int64_t C = (S + chunk - 1) / chunk, items = B * H * C;
  auto acc = torch::zeros({items, G, D}, q.options());  // per chunk: exp-weighted sums of values
  auto mx = torch::empty({items, G}, q.options());       // per chunk: max score
  auto sm = torch::empty({items, G}, q.options());       // per chunk: sum of exp(score - max)
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* ap = acc.data_ptr<float>();
  float* mp = mx.data_ptr<float>();
  float* sp = sm.data_ptr<float>();
  const float sc = static_cast<float>(scale);

  at::parallel_for(0, items, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> p(G * chunk);
    for (int64_t w = lo; w < hi; ++w) {
      const int64_t bh = w / C, c = w % C, b = bh / H, h = bh % H;
      const int64_t j0 = c * chunk, n = std::min(S, j0 + chunk) - j0;
      const float* kh = kp + b * k.stride(0) + h * k.stride(1) + j0 * D;
      const float* vh = vp + b * v.stride(0) + h * v.stride(1) + j0 * D;
      const float* qh = qp + bh * G * D;
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < G; ++i) p[i * chunk + j] = sc * dot(qh + i * D, kh + j * D, D);
      for (int64_t i = 0; i < G; ++i) {
        float* pi = p.data() + i * chunk;
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < n; ++j) m = std::max(m, pi[j]);
        float l = 0.f;
        for (int64_t j = 0; j < n; ++j) {
          pi[j] = std::exp(pi[j] - m);
          l += pi[j];
        }
        mp[w * G + i] = m;
        sp[w * G + i] = l;
      }
      float* aw = ap + w * G * D;
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < G; ++i) axpy(p[i * chunk + j], vh + j * D, aw + i * D, D);
    }
  });

  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * H * G, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t bh = r / G, i = r % G;
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < C; ++c) m = std::max(m, mp[(bh * C + c) * G + i]);
      float z = 0.f;
      float* o = op + r * D;
      std::fill(o, o + D, 0.f);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t w = bh * C + c;
        const float e = std::exp(mp[w * G + i] - m);
        z += e * sp[w * G + i];
        axpy(e, ap + (w * G + i) * D, o, D);
      }
      for (int64_t t = 0; t < D; ++t) o[t] /= z;
    }
  });
  return out;
}

bool supports_avx2() { return has_avx2(); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "one decoding step of grouped attention, fp32");
  m.def("supports_avx2", &supports_avx2);
}
