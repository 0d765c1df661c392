// The feed-forward half of a transformer-style block, for a few tokens on CPU, in one call:
//
//   y = x + W_down (act(W_gate n) * (W_up n)),   n = x / sqrt(mean(x^2) + eps) * norm_weight
//
//   x [M, D] fp32 (any leading dims, flattened: M = their product, M small), norm_weight [D],
//   w_gate, w_up [F, D], w_down [D, F], all contiguous fp32; act: 0 = SiLU (SwiGLU), 1 = ReLU^2.
//
// Reference: kernels/glu_block/naive.py. While decoding, this half costs three weight reads and, done
// op by op from Python, ~10 small ops (norm, three linears, activation, product, residual), each a few
// microseconds of overhead on a few hundred floats. Here the three weights are streamed by the GEMV
// kernel of kernels/gemv/csrc/gemv_kernel.{h,cpp} and the rest are plain loops over M x (D or F) floats.
#include <torch/extension.h>

#include <cmath>
#include <vector>

#include "../../gemv/csrc/gemv_kernel.h"
#include "latentlm_cpu.h"

namespace {

bool fp32_cpu_contiguous(const torch::Tensor& t) { return latentlm::fp32_cpu(t) && t.is_contiguous(); }

// n [M, D] = x / sqrt(mean(x^2) + eps) * w, with the sum of squares in double (F.rms_norm's accuracy or better).
void rms_norm_rows(const float* x, const float* w, float eps, int64_t M, int64_t D, float* n) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * D;
    double ss = 0.0;
    for (int64_t d = 0; d < D; ++d) ss += static_cast<double>(xr[d]) * xr[d];
    const float inv = 1.f / std::sqrt(static_cast<float>(ss / D) + eps);
    for (int64_t d = 0; d < D; ++d) n[m * D + d] = xr[d] * inv * w[d];
  }
}

// g <- act(g) * u elementwise (count floats).
void gate(float* g, const float* u, int64_t count, int64_t act) {
  if (act == 0) {
    for (int64_t i = 0; i < count; ++i) g[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  } else {
    for (int64_t i = 0; i < count; ++i) {
      const float r = g[i] > 0.f ? g[i] : 0.f;
      g[i] = r * r * u[i];
    }
  }
}

}  // namespace

// y = x + down(act(gate(n)) * up(n)) as above, or None for inputs this kernel does not take (the caller
// then uses the reference): not fp32 contiguous CPU tensors, shapes that do not fit, no rows or more than
// max_rows, or an autograd graph to record.
c10::optional<torch::Tensor> glu_block(const torch::Tensor& x, const torch::Tensor& norm_weight, double eps,
                                       const torch::Tensor& w_gate, const torch::Tensor& w_up,
                                       const torch::Tensor& w_down, int64_t act, int64_t max_rows, bool use_avx2,
                                       int64_t prefetch_bytes, int64_t min_parallel_bytes, int64_t far_bytes) {
  TORCH_CHECK(act == 0 || act == 1, "act must be 0 (SiLU) or 1 (ReLU^2)");
  if (x.dim() < 1 || !fp32_cpu_contiguous(x) || !fp32_cpu_contiguous(norm_weight) || !fp32_cpu_contiguous(w_gate) ||
      !fp32_cpu_contiguous(w_up) || !fp32_cpu_contiguous(w_down) || w_gate.dim() != 2 || w_down.dim() != 2)
    return c10::nullopt;
  const int64_t D = x.size(-1), F = w_gate.size(0);
  if (norm_weight.dim() != 1 || norm_weight.size(0) != D || w_gate.size(1) != D || w_up.sizes() != w_gate.sizes() ||
      w_down.size(0) != D || w_down.size(1) != F)
    return c10::nullopt;
  const int64_t M = D > 0 ? x.numel() / D : 0;
  if (D == 0 || F == 0 || M == 0 || M > max_rows || latentlm::needs_grad({&x, &norm_weight, &w_gate, &w_up, &w_down}))
    return c10::nullopt;

  std::vector<float> buf(M * (D + 2 * F));
  float* n = buf.data();  // [M, D]
  float* g = n + M * D;   // [M, F]
  float* u = g + M * F;   // [M, F]
  const float* xp = x.data_ptr<float>();
  rms_norm_rows(xp, norm_weight.data_ptr<float>(), static_cast<float>(eps), M, D, n);
  namespace lg = latentlm_gemv;
  lg::gemv({n, w_gate.data_ptr<float>(), nullptr, g, M, D, F, prefetch_bytes, far_bytes}, use_avx2, min_parallel_bytes, 0);
  lg::gemv({n, w_up.data_ptr<float>(), nullptr, u, M, D, F, prefetch_bytes, far_bytes}, use_avx2, min_parallel_bytes, 0);
  gate(g, u, M * F, act);
  torch::Tensor y = torch::empty_like(x);
  float* yp = y.data_ptr<float>();
  lg::gemv({g, w_down.data_ptr<float>(), nullptr, yp, M, F, D, prefetch_bytes, far_bytes}, use_avx2, min_parallel_bytes, 0);
  for (int64_t i = 0; i < M * D; ++i) yp[i] += xp[i];
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "latentlm feed-forward block (RMSNorm, GLU, residual) for a few tokens on CPU, fp32";
  m.def("glu_block", &glu_block,
        "x + down(act(gate(n)) * up(n)), n = rms_norm(x) * norm_weight, or None for inputs the kernel does not take",
        py::arg("x"), py::arg("norm_weight"), py::arg("eps"), py::arg("w_gate"), py::arg("w_up"), py::arg("w_down"),
        py::arg("act"), py::arg("max_rows"), py::arg("avx2") = true, py::arg("prefetch_bytes") = 4096,
        py::arg("min_parallel_bytes") = 0, py::arg("far_bytes") = 16 << 20);
  m.def("supports_avx2", &latentlm::has_avx2, "whether this CPU runs the AVX2+FMA path");
}
