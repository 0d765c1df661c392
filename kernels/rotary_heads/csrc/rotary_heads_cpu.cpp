// The start of an attention layer on CPU, in one call: the fused projection's output split into heads,
// rotary on q and k, v copied. Reference: kernels/rotary_heads/naive.py.
//
//   p [B, T, N Dh] contiguous fp32, N = n_q + 2 n_kv: per token n_q query heads, then n_kv key heads,
//   then n_kv value heads, Dh floats each; cos, sin [T, Dh] contiguous fp32 (`rotary_angles`:
//   cos = (cos a, cos a), sin = (-sin a, sin a)), Dh even
//   -> (q [B, n_q, T, Dh], k [B, n_kv, T, Dh], v [B, n_kv, T, Dh]) contiguous (a count of 0: no heads),
//   or None for inputs the kernel does not take (the caller then uses the reference).
//
// Per token (b, t) and q or k head, p(i) = (i + Dh/2) mod Dh:
//   out_i = x_i cos[t, i] + x_p(i) sin[t, i]
// the two products rounded, then their sum: the reference's three fp32 torch ops (x * cos,
// roll(x) * sin, +) element by element, so the result is bit for bit the reference's. A fused
// multiply-add would round once instead of twice: contraction is turned off for that function (x86's
// baseline, x86-64-v2, has no FMA anyway; aarch64's has, and GCC contracts by default).
// Plain loops the compiler vectorises. Tokens are spread over the threads only when each thread gets
// at least `min_parallel_floats` floats of p; decoding (a few hundred floats) runs on the calling thread.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include "latentlm_cpu.h"

#include <algorithm>
#include <cstring>
#include <tuple>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#define RH_NO_CONTRACT
#elif defined(__GNUC__)
#define RH_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define RH_NO_CONTRACT
#endif

namespace {

// One head of Dh floats turned by the tables of its position (rounding as described above).
RH_NO_CONTRACT void rotate(const float* __restrict__ x, const float* __restrict__ cos,
                           const float* __restrict__ sin, float* __restrict__ out, int64_t dh) {
  const int64_t half = dh / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float lo = x[i], hi = x[i + half];
    out[i] = lo * cos[i] + hi * sin[i];
    out[i + half] = hi * cos[i + half] + lo * sin[i + half];
  }
}

using latentlm::fp32_cpu;

// A rotary table of T positions of Dh floats, contiguous fp32.
bool table(const torch::Tensor& t, int64_t T, int64_t Dh) {
  return fp32_cpu(t) && t.dim() == 2 && t.size(0) == T && t.size(1) == Dh && t.is_contiguous();
}

using Heads = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>;

}  // namespace

// (q, k, v) as above, or None when the inputs are not ones this kernel takes (not fp32 / not CPU / not
// contiguous, tables that are not [T, Dh], odd Dh, a width that is not (n_q + 2 n_kv) Dh, an autograd
// graph to record).
c10::optional<Heads> rotary_heads(const torch::Tensor& p, const torch::Tensor& cos, const torch::Tensor& sin,
                                  int64_t n_q, int64_t n_kv, int64_t min_parallel_floats) {
  if (!fp32_cpu(p) || p.dim() != 3 || !p.is_contiguous() || cos.dim() != 2 || n_q < 0 || n_kv < 0)
    return c10::nullopt;
  const int64_t B = p.size(0), T = p.size(1), Dh = cos.size(1), N = n_q + 2 * n_kv;
  if (Dh == 0 || Dh % 2 != 0 || p.size(2) != N * Dh || !table(cos, T, Dh) || !table(sin, T, Dh))
    return c10::nullopt;
  if (latentlm::needs_grad({&p, &cos, &sin}))
    return c10::nullopt;
  torch::Tensor q = torch::empty({B, n_q, T, Dh}, p.options());
  torch::Tensor k = torch::empty({B, n_kv, T, Dh}, p.options());
  torch::Tensor v = torch::empty({B, n_kv, T, Dh}, p.options());
  const float* x = p.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const int64_t width = N * Dh;
  const int64_t grain = std::max<int64_t>(1, min_parallel_floats / std::max<int64_t>(1, width));  // tokens a thread
  at::parallel_for(0, B * T, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t row = lo; row < hi; ++row) {  // row = b * T + t
      const int64_t b = row / T, t = row % T;
      const float* src = x + row * width;  // head j of the token at src + j * Dh
      const float *c = cp + t * Dh, *s = sp + t * Dh;
      for (int64_t h = 0; h < n_q; ++h) rotate(src + h * Dh, c, s, qp + ((b * n_q + h) * T + t) * Dh, Dh);
      for (int64_t h = 0; h < n_kv; ++h) {
        const int64_t out = ((b * n_kv + h) * T + t) * Dh;
        rotate(src + (n_q + h) * Dh, c, s, kp + out, Dh);
        std::memcpy(vp + out, src + (n_q + n_kv + h) * Dh, Dh * sizeof(float));
      }
    }
  });
  return Heads(q, k, v);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "latentlm: an attention layer's projection split into heads, q and k rotated, in one call (CPU)";
  m.def("rotary_heads", &rotary_heads,
        "(q [B, n_q, T, Dh], k [B, n_kv, T, Dh], v [B, n_kv, T, Dh]) from p [B, T, (n_q + 2 n_kv) Dh], q and k "
        "rotated, fp32, or None for inputs the kernel does not take",
        py::arg("p"), py::arg("cos"), py::arg("sin"), py::arg("n_q"), py::arg("n_kv"),
        py::arg("min_parallel_floats") = 1 << 15);
}
