// Small-batch fp32 linear layer on CPU (decoding: one or a few tokens against a weight matrix): the
// torch op over the GEMV kernel of gemv_kernel.{h,cpp}, where its design is described.
// Reference: kernels/gemv/naive.py (F.linear).
//
//   x [M, K] fp32 (any leading dims, flattened: M = their product, M small), w [N, K] contiguous fp32,
//   bias [N] fp32 or none  ->  y [M, N],  y[m, n] = sum_k x[m, k] w[n, k] + bias[n].
#include <torch/extension.h>

#include <vector>

#include "gemv_kernel.h"
#include "latentlm_cpu.h"

namespace latentlm_gemv {

using latentlm::fp32_cpu;

// y [..., N] = x [..., K] . w^T + bias, or None when the inputs are not ones this kernel takes (the
// caller then uses the reference): not fp32 / not CPU, w not a contiguous [N, K] matrix, bias not a
// contiguous [N] vector, K not matching, 0 or more than max_rows rows of x, or an autograd graph
// to record. Checked here rather than in Python, where the same checks cost microseconds a call.
c10::optional<torch::Tensor> small_batch_linear(const torch::Tensor& x, const torch::Tensor& w,
                                                const c10::optional<torch::Tensor>& bias, int64_t max_rows,
                                                bool use_avx2, int64_t prefetch_bytes, int64_t min_parallel_bytes,
                                                int64_t block_rows, int64_t far_bytes) {
  TORCH_CHECK(block_rows == 0 || block_rows == 1 || block_rows == 2 || block_rows == 4 || block_rows == 8,
              "block_rows must be 0 (auto), 1, 2, 4 or 8");
  const bool has_bias = bias.has_value() && bias->defined();
  if (!fp32_cpu(x) || !fp32_cpu(w) || w.dim() != 2 || !w.is_contiguous() || x.dim() < 1 || x.size(-1) != w.size(1))
    return c10::nullopt;
  const int64_t N = w.size(0), K = w.size(1);
  if (has_bias && !(fp32_cpu(*bias) && bias->dim() == 1 && bias->size(0) == N && bias->is_contiguous()))
    return c10::nullopt;
  if (latentlm::needs_grad({&x, &w, has_bias ? &*bias : nullptr}))
    return c10::nullopt;
  const int64_t M = K > 0 ? x.numel() / K : 0;
  if (K == 0 || M == 0 || M > max_rows) return c10::nullopt;

  const torch::Tensor xc = x.contiguous();
  const float* bp = has_bias ? bias->data_ptr<float>() : nullptr;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  torch::Tensor y = torch::empty(shape, x.options());
  if (N == 0) return y;
  gemv({xc.data_ptr<float>(), w.data_ptr<float>(), bp, y.data_ptr<float>(), M, K, N, prefetch_bytes, far_bytes}, use_avx2,
       min_parallel_bytes, block_rows);
  return y;
}

}  // namespace latentlm_gemv

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace lg = latentlm_gemv;
  m.doc() = "latentlm small-batch fp32 linear layer (GEMV) for CPU";
  m.def("small_batch_linear", &lg::small_batch_linear,
        "y [..., N] = x [..., K] . w^T + bias (w [N, K] contiguous fp32, at most max_rows rows of x), or None "
        "for inputs the kernel does not take; block_rows 0 picks R from the rows of x; w of far_bytes or more is "
        "prefetched into L2",
        py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("max_rows"), py::arg("avx2") = true,
        py::arg("prefetch_bytes") = 4096, py::arg("min_parallel_bytes") = 0, py::arg("block_rows") = 0,
        py::arg("far_bytes") = 16 << 20);
  m.def("supports_avx2", &latentlm::has_avx2, "whether this CPU runs the AVX2+FMA path");
}
