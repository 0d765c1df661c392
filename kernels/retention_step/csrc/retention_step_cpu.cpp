// One recurrent decoding step on CPU, between the projections and the output gate, in one call: rotary q
// and k, the update of the state, o = q S' and its per-head RMSNorm. Two ops share it, differing only in
// the decay: RetNet's "retention_step" (gamma per head, fixed) and YOCO's "gated_retention_step" (gamma
// per (b, h), from the token). References: kernels/retention_step/naive.py,
// kernels/gated_retention_step/naive.py.
//
//   qkv [B, 1, 3D] contiguous fp32, D = H * Dh: q, k, v of head h at h*Dh, D + h*Dh, 2D + h*Dh;
//   cos, sin [.., Dh] contiguous fp32 of Dh floats (`rotary_angles` at one position: cos = (cos a, cos a),
//   sin = (-sin a, sin a)); state [B, H, Dh, Dh] contiguous fp32 or none (zeros); w [Dh] fp32 or none;
//   eps; the decay: log_decay [H] fp32 (gamma_h = exp), or decay_logits [B, 1, H] fp32 and a normalizer
//   (gamma = exp(logsigmoid(x) / normalizer), logsigmoid(x) = min(x, 0) - log1p(exp(-|x|)) in fp32)
//   -> (o [B, 1, D] (heads concatenated), S' [B, H, Dh, Dh] fp32, a new tensor), or None for inputs
//   the kernel does not take (the caller then uses the reference).
//
// Per (b, h), Dh even, p(i) = (i + Dh/2) mod Dh:
//   q_i <- q_i cos_i + q_p(i) sin_i;   k_i <- (k_i cos_i + k_p(i) sin_i) * Dh^-0.5
//   one pass over the rows of S:  S'[i, :] = gamma S[i, :] + k_i v,   o += q_i S'[i, :]
//   o <- o / sqrt(mean(o^2) + eps) * w
// AVX2: columns in blocks of up to 32 (4 ymm), the block's o accumulators and v held in registers
// down all the rows; the last Dh % 8 columns in scalar loops. Otherwise plain loops the compiler
// vectorises. B * H is small when decoding (4 at batch 1): the heads run on the calling thread
// unless each thread would get at least `min_parallel_floats` state floats.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include "latentlm_cpu.h"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

#define RS_AVX2 __attribute__((target("avx2,fma")))
#define RS_AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) inline

struct Head {             // one (b, h): pointers into the tensors, and the rotated q and k
  const float* s;         // S [Dh, Dh] or nullptr (zeros)
  float* sn;              // S' [Dh, Dh]
  const float* q;         // rotated q [Dh]
  const float* k;         // rotated, scaled k [Dh]
  const float* v;         // v [Dh]
  float* o;               // o [Dh] (accumulated, then normalised in place)
  float gamma;
  int64_t dh;
};

// x_i cos_i + x_p(i) sin_i (times scale): the rotary pairs (i, i + Dh/2), the sign sits in the sin table.
void rotate(const float* x, const float* cos, const float* sin, float scale, float* out, int64_t dh) {
  const int64_t half = dh / 2;
  for (int64_t i = 0; i < half; ++i) {
    out[i] = (x[i] * cos[i] + x[i + half] * sin[i]) * scale;
    out[i + half] = (x[i + half] * cos[i + half] + x[i] * sin[i + half]) * scale;
  }
}

// Columns [j0, j1) of S' and o, one row at a time (the scalar path, and AVX2's last Dh % 8 columns).
template <bool HasState>
void columns_scalar(const Head& t, int64_t j0, int64_t j1) {
  float* __restrict__ o = t.o;
  for (int64_t i = 0; i < t.dh; ++i) {
    const float* __restrict__ s = HasState ? t.s + i * t.dh : nullptr;
    float* __restrict__ sn = t.sn + i * t.dh;
    const float ki = t.k[i], qi = t.q[i];
    for (int64_t j = j0; j < j1; ++j) {
      const float x = HasState ? t.gamma * s[j] + ki * t.v[j] : ki * t.v[j];
      sn[j] = x;
      o[j] += qi * x;
    }
  }
}

// Columns [j, j + 8 NV): v and the o accumulators stay in registers down the Dh rows.
template <int NV, bool HasState>
RS_AVX2_INLINE void columns_avx2(const Head& t, int64_t j) {
  __m256 v[NV], acc[NV];
  for (int u = 0; u < NV; ++u) {
    v[u] = _mm256_loadu_ps(t.v + j + 8 * u);
    acc[u] = _mm256_setzero_ps();
  }
  const __m256 g = _mm256_set1_ps(t.gamma);
  for (int64_t i = 0; i < t.dh; ++i) {
    const __m256 ki = _mm256_set1_ps(t.k[i]), qi = _mm256_set1_ps(t.q[i]);
    const int64_t r = i * t.dh + j;
    for (int u = 0; u < NV; ++u) {
      __m256 x = _mm256_mul_ps(ki, v[u]);
      if (HasState) x = _mm256_fmadd_ps(g, _mm256_loadu_ps(t.s + r + 8 * u), x);
      _mm256_storeu_ps(t.sn + r + 8 * u, x);
      acc[u] = _mm256_fmadd_ps(qi, x, acc[u]);
    }
  }
  for (int u = 0; u < NV; ++u) _mm256_storeu_ps(t.o + j + 8 * u, acc[u]);
}

template <bool HasState>
RS_AVX2 void update_avx2(const Head& t) {
  const int64_t full = t.dh - t.dh % 8;
  int64_t j = 0;
  for (; j + 32 <= full; j += 32) columns_avx2<4, HasState>(t, j);
  switch ((full - j) / 8) {
    case 3: columns_avx2<3, HasState>(t, j); break;
    case 2: columns_avx2<2, HasState>(t, j); break;
    case 1: columns_avx2<1, HasState>(t, j); break;
    default: break;
  }
  if (full < t.dh) {
    for (int64_t c = full; c < t.dh; ++c) t.o[c] = 0.f;
    columns_scalar<HasState>(t, full, t.dh);
  }
}

template <bool HasState>
void update_scalar(const Head& t) {
  for (int64_t j = 0; j < t.dh; ++j) t.o[j] = 0.f;
  columns_scalar<HasState>(t, 0, t.dh);
}

// o <- o / sqrt(mean(o^2) + eps) * w (w may be nullptr).
void rms_norm(float* o, const float* w, float eps, int64_t dh) {
  float ss = 0.f;
  for (int64_t j = 0; j < dh; ++j) ss += o[j] * o[j];
  const float r = 1.f / std::sqrt(ss / static_cast<float>(dh) + eps);
  for (int64_t j = 0; j < dh; ++j) o[j] = w ? (o[j] * r) * w[j] : o[j] * r;
}

using latentlm::fp32_cpu;
using latentlm::needs_grad;

bool fp32_vector(const torch::Tensor& t, int64_t n) { return fp32_cpu(t) && t.numel() == n && t.is_contiguous(); }

// exp(logsigmoid(x) / normalizer), logsigmoid in its stable form as `F.logsigmoid` computes it (fp32).
float gate(float x, float normalizer) {
  const float log_sigmoid = std::min(x, 0.f) - std::log1p(std::exp(-std::abs(x)));
  return std::exp(log_sigmoid / normalizer);
}

using Step = std::tuple<torch::Tensor, torch::Tensor>;

// The inputs both ops share, checked: whether the kernel takes them (H heads of Dh = cos.size(-1)).
bool takes(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
           const c10::optional<torch::Tensor>& state, const c10::optional<torch::Tensor>& weight, int64_t H) {
  if (!fp32_cpu(qkv) || qkv.dim() != 3 || qkv.size(1) != 1 || !qkv.is_contiguous() || cos.dim() < 1) return false;
  const int64_t B = qkv.size(0), Dh = cos.size(-1);
  if (B == 0 || H == 0 || Dh == 0 || Dh % 2 != 0 || qkv.size(2) != 3 * H * Dh || !fp32_vector(cos, Dh) ||
      !fp32_vector(sin, Dh))
    return false;
  const bool has_state = state.has_value() && state->defined(), has_weight = weight.has_value() && weight->defined();
  if (has_weight && !fp32_vector(*weight, Dh)) return false;
  if (has_state && !(fp32_cpu(*state) && state->sizes() == at::IntArrayRef({B, H, Dh, Dh}) && state->is_contiguous()))
    return false;
  return !needs_grad({&qkv, &cos, &sin, has_state ? &*state : nullptr, has_weight ? &*weight : nullptr});
}

// The step for checked inputs, gamma [B * H] the decay of each (b, h).
Step step(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
          const c10::optional<torch::Tensor>& state, const c10::optional<torch::Tensor>& weight, double eps,
          const std::vector<float>& gamma, bool use_avx2, int64_t min_parallel_floats) {
  const int64_t B = qkv.size(0), Dh = cos.size(-1), H = static_cast<int64_t>(gamma.size()) / B, D = H * Dh;
  use_avx2 = use_avx2 && latentlm::has_avx2();
  torch::Tensor o = torch::empty({B, 1, D}, qkv.options());
  torch::Tensor sn = torch::empty({B, H, Dh, Dh}, qkv.options());
  const float* x = qkv.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  const float* s0 = state.has_value() && state->defined() ? state->data_ptr<float>() : nullptr;
  const float* w = weight.has_value() && weight->defined() ? weight->data_ptr<float>() : nullptr;
  float *op = o.data_ptr<float>(), *snp = sn.data_ptr<float>();
  const float scale = static_cast<float>(std::pow(static_cast<double>(Dh), -0.5)), e = static_cast<float>(eps);
  const int64_t grain = std::max<int64_t>(1, min_parallel_floats / (Dh * Dh));  // heads worth a thread
  at::parallel_for(0, B * H, grain, [&](int64_t lo, int64_t hi) {
    std::vector<float> qk(2 * Dh);  // rotated q, k
    for (int64_t item = lo; item < hi; ++item) {  // item = b * H + h
      const int64_t b = item / H, h = item % H;
      const float* row = x + b * 3 * D + h * Dh;  // q of (b, h); k at + D, v at + 2D
      rotate(row, cp, sp, 1.f, qk.data(), Dh);
      rotate(row + D, cp, sp, scale, qk.data() + Dh, Dh);
      const Head t{s0 ? s0 + item * Dh * Dh : nullptr, snp + item * Dh * Dh, qk.data(), qk.data() + Dh,
                   row + 2 * D, op + b * D + h * Dh, gamma[item], Dh};
      if (use_avx2 && s0) update_avx2<true>(t);
      else if (use_avx2) update_avx2<false>(t);
      else if (s0) update_scalar<true>(t);
      else update_scalar<false>(t);
      rms_norm(t.o, w, e, Dh);
    }
  });
  return Step(o, sn);
}

}  // namespace

// RetNet: gamma_h = exp(log_decay[h]). (o [B, 1, D], S' [B, H, Dh, Dh]), or None when the inputs are not
// ones this kernel takes (not fp32 / not CPU / not contiguous, T != 1, odd Dh, shapes that do not match,
// an autograd graph to record).
c10::optional<Step> retention_step(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                                   const torch::Tensor& log_decay, const c10::optional<torch::Tensor>& state,
                                   const c10::optional<torch::Tensor>& weight, double eps, bool use_avx2,
                                   int64_t min_parallel_floats) {
  if (log_decay.dim() != 1 || !takes(qkv, cos, sin, state, weight, log_decay.size(0)) ||
      !fp32_vector(log_decay, log_decay.size(0)) || needs_grad({&log_decay}))
    return c10::nullopt;
  const int64_t B = qkv.size(0), H = log_decay.size(0);
  const float* ld = log_decay.data_ptr<float>();
  std::vector<float> gamma(B * H);
  for (int64_t item = 0; item < B * H; ++item) gamma[item] = std::exp(ld[item % H]);
  return step(qkv, cos, sin, state, weight, eps, gamma, use_avx2, min_parallel_floats);
}

// YOCO's gated retention: gamma = exp(logsigmoid(decay_logits[b, 0, h]) / gate_normalizer). Result and
// None as for retention_step; decay_logits must be [B, 1, H] contiguous fp32.
c10::optional<Step> gated_retention_step(const torch::Tensor& qkv, const torch::Tensor& decay_logits,
                                         const torch::Tensor& cos, const torch::Tensor& sin,
                                         const c10::optional<torch::Tensor>& state,
                                         const c10::optional<torch::Tensor>& weight, double eps,
                                         double gate_normalizer, bool use_avx2, int64_t min_parallel_floats) {
  if (decay_logits.dim() != 3 || !takes(qkv, cos, sin, state, weight, decay_logits.size(2)) ||
      decay_logits.size(0) != qkv.size(0) || decay_logits.size(1) != 1 ||
      !fp32_vector(decay_logits, decay_logits.numel()) || needs_grad({&decay_logits}))
    return c10::nullopt;
  const int64_t n = decay_logits.numel();  // B * H, in (b, h) order
  const float* lg = decay_logits.data_ptr<float>();
  const float normalizer = static_cast<float>(gate_normalizer);
  std::vector<float> gamma(n);
  for (int64_t item = 0; item < n; ++item) gamma[item] = gate(lg[item], normalizer);
  return step(qkv, cos, sin, state, weight, eps, gamma, use_avx2, min_parallel_floats);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "latentlm recurrent decoding steps (rotary, state update, head RMSNorm) of RetNet and YOCO for CPU";
  m.def("retention_step", &retention_step,
        "(o [B, 1, D], S' [B, H, Dh, Dh]) of one RetNet decoding step, fp32, or None for inputs the kernel "
        "does not take",
        py::arg("qkv"), py::arg("cos"), py::arg("sin"), py::arg("log_decay"), py::arg("state"), py::arg("weight"),
        py::arg("eps"), py::arg("avx2") = true, py::arg("min_parallel_floats") = 1 << 14);
  m.def("gated_retention_step", &gated_retention_step,
        "(o [B, 1, D], S' [B, H, Dh, Dh]) of one gated-retention (YOCO) decoding step, fp32, or None for inputs "
        "the kernel does not take",
        py::arg("qkv"), py::arg("decay_logits"), py::arg("cos"), py::arg("sin"), py::arg("state"),
        py::arg("weight"), py::arg("eps"), py::arg("gate_normalizer"), py::arg("avx2") = true,
        py::arg("min_parallel_floats") = 1 << 14);
  m.def("supports_avx2", &latentlm::has_avx2, "whether this CPU runs the AVX2+FMA path");
}
