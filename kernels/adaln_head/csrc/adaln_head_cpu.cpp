// The whole sampling loop of one latent through the diffusion head (an AdaLN MLP) on CPU, in one call:
// S solver steps, each the MLP on [N, D] rows (N = 2R with classifier-free guidance), the guidance mix
// and one affine solver step. Reference: kernels/adaln_head/naive.py, where the loop is written out.
//
//   x [R, D]                  the scaled starting noise
//   mods [S, N, (3L + 2) W]   per step and row: (shift, scale, gate) per block, (shift, scale) of the output
//   coefs [S, 5]              per step (P, Q, A, B, C): m' = P x + Q out, x' = A x + B out + C m
//   x_in_w [W, D], x_in_b [W], up_w / down_w [L, W, W], up_b / down_b [L, W], out_w [D, W], out_b [D]
//   eps: L + 1 LayerNorm epsilons (blocks, then output)          -> x_0 [R, D]
//
// Sampling one picture is 64 latents x 20 steps of an MLP on [2, 256] rows: run op by op from Python each
// step is ~25 calls of a few microseconds and a scheduler step, most of it overhead. Here the linears go
// through the small-batch GEMV kernel of kernels/gemv/csrc/gemv_kernel.{h,cpp} (the weights, ~1.6 MB at
// W = 256, L = 3, stay in L2 across steps), the rest are loops over N x W floats; SiLU's exp is vectorised
// on the AVX2 path (a polynomial within ~2 ulp of expf), the scalar path calls std::exp.
#include <torch/extension.h>

#include <cmath>
#include <vector>

#include "../../gemv/csrc/gemv_kernel.h"
#include "latentlm_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)
#define LATENTLM_X86 1
#include <immintrin.h>
#else
#define LATENTLM_X86 0
#endif

namespace {

// The MLP's weights (raw fp32) and sizes.
struct Head {
  const float *x_in_w, *x_in_b, *up_w, *up_b, *down_w, *down_b, *out_w, *out_b;
  std::vector<float> eps;  // L + 1
  int64_t D, W, L;
  int64_t mod_width() const { return (3 * L + 2) * W; }
};

// How the GEMV kernel runs (gemv_kernel.h).
struct Gemv {
  bool avx2;
  int64_t prefetch_bytes, min_parallel_bytes, far_bytes;
};

// y [M, N] = x [M, K] . w^T + b.
void linear(const Gemv& g, const float* x, const float* w, const float* b, float* y, int64_t M, int64_t K, int64_t N) {
  latentlm_gemv::gemv({x, w, b, y, M, K, N, g.prefetch_bytes, g.far_bytes}, g.avx2, g.min_parallel_bytes, 0);
}

// a [N, W] = LN(h) * (1 + scale) + shift, the statistics in double; row n's shift and scale start at
// mods + n * stride.
void modulated_norm(const float* h, const float* shift, const float* scale, int64_t stride, float eps, int64_t N,
                    int64_t W, float* a) {
  for (int64_t n = 0; n < N; ++n) {
    const float* hr = h + n * W;
    double sum = 0.0, sq = 0.0;
    for (int64_t i = 0; i < W; ++i) sum += hr[i];
    const double mean = sum / W;
    for (int64_t i = 0; i < W; ++i) sq += (hr[i] - mean) * (hr[i] - mean);
    const float rstd = 1.f / std::sqrt(static_cast<float>(sq / W) + eps);
    const float mu = static_cast<float>(mean);
    const float *sh = shift + n * stride, *sc = scale + n * stride;
    for (int64_t i = 0; i < W; ++i) a[n * W + i] = (hr[i] - mu) * rstd * (1.f + sc[i]) + sh[i];
  }
}

// h [N, W] += gate * y, row n's gate at gate + n * stride.
void gated_add(float* h, const float* gate, int64_t stride, const float* y, int64_t N, int64_t W) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < W; ++i) h[n * W + i] += gate[n * stride + i] * y[n * W + i];
}

void silu_scalar(float* u, int64_t count) {
  for (int64_t i = 0; i < count; ++i) u[i] = u[i] / (1.f + std::exp(-u[i]));
}

#if LATENTLM_X86
// exp(v) for v in [-87, 88] (clamped there; SiLU needs no more): v = k ln2 + r, |r| <= ln2 / 2, with
// ln2 in two parts (exact k ln2_hi), e^r by its degree-7 Taylor polynomial (error < 2e-8 relative),
// times 2^k built in the exponent bits.
__attribute__((target("avx2,fma"))) inline __m256 exp_avx2(__m256 v) {
  v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-87.f)), _mm256_set1_ps(88.f));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), v);  // ln2_hi: 9 bits, k ln2_hi exact
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);       // ln2_lo = ln2 - ln2_hi
  __m256 p = _mm256_set1_ps(1.f / 5040.f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 720.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// u <- u / (1 + exp(-u)), 8 at a time; the tail (count % 8) in scalar code.
__attribute__((target("avx2,fma"))) void silu_avx2(float* u, int64_t count) {
  int64_t i = 0;
  const __m256 one = _mm256_set1_ps(1.f);
  for (; i + 8 <= count; i += 8) {
    const __m256 v = _mm256_loadu_ps(u + i);
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), v));
    _mm256_storeu_ps(u + i, _mm256_div_ps(v, _mm256_add_ps(one, e)));
  }
  silu_scalar(u + i, count - i);
}
#endif

void silu(float* u, int64_t count, bool avx2) {
#if LATENTLM_X86
  if (avx2 && latentlm::has_avx2()) return silu_avx2(u, count);
#endif
  silu_scalar(u, count);
}

// The working rows of one step: N rows of width W (h, a, u, y) and of width D (the input and output).
struct Buffers {
  std::vector<float> data;
  float *h, *a, *u, *y, *xin, *out;
  Buffers(int64_t N, int64_t W, int64_t D) : data(N * (4 * W + 2 * D)) {
    h = data.data(), a = h + N * W, u = a + N * W, y = u + N * W, xin = y + N * W, out = xin + N * D;
  }
};

// The MLP on b.xin [N, D] with one step's modulations mods [N, (3L + 2) W] -> b.out [N, D].
void denoise(const Head& hd, const Gemv& g, const float* mods, int64_t N, Buffers& b) {
  const int64_t W = hd.W, D = hd.D, M = hd.mod_width();
  linear(g, b.xin, hd.x_in_w, hd.x_in_b, b.h, N, D, W);
  for (int64_t l = 0; l < hd.L; ++l) {
    const float* m = mods + 3 * l * W;  // shift, scale, gate of block l (row stride M)
    modulated_norm(b.h, m, m + W, M, hd.eps[l], N, W, b.a);
    linear(g, b.a, hd.up_w + l * W * W, hd.up_b + l * W, b.u, N, W, W);
    silu(b.u, N * W, g.avx2);
    linear(g, b.u, hd.down_w + l * W * W, hd.down_b + l * W, b.y, N, W, W);
    gated_add(b.h, m + 2 * W, M, b.y, N, W);
  }
  const float* m = mods + 3 * hd.L * W;  // shift, scale of the output layer
  modulated_norm(b.h, m, m + W, M, hd.eps[hd.L], N, W, b.a);
  linear(g, b.a, hd.out_w, hd.out_b, b.out, N, W, D);
}

// One solver step on x and m [count] with the (guided) prediction o: x, m <- A x + B o + C m, P x + Q o.
void solver_update(const float* coef, const float* o, float* x, float* m, int64_t count) {
  const float p = coef[0], q = coef[1], a = coef[2], b = coef[3], c = coef[4];
  for (int64_t i = 0; i < count; ++i) {
    const float x_next = a * x[i] + b * o[i] + c * m[i];
    m[i] = p * x[i] + q * o[i];
    x[i] = x_next;
  }
}

// The S steps on x [R, D] (in place); guided: the rows run twice and are mixed by cfg_scale.
void sample(const Head& hd, const Gemv& g, const float* mods, const float* coefs, int64_t S, int64_t R, bool guided,
            float cfg_scale, float* x) {
  const int64_t D = hd.D, N = guided ? 2 * R : R, RD = R * D;
  Buffers b(N, hd.W, D);
  std::vector<float> m(RD, 0.f), o(RD);
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t i = 0; i < N * D; ++i) b.xin[i] = x[i % RD];
    denoise(hd, g, mods + s * N * hd.mod_width(), N, b);
    if (guided) {
      for (int64_t i = 0; i < RD; ++i) o[i] = b.out[RD + i] + cfg_scale * (b.out[i] - b.out[RD + i]);
    }
    solver_update(coefs + 5 * s, guided ? o.data() : b.out, x, m.data(), RD);
  }
}

bool ok(const torch::Tensor& t, std::initializer_list<int64_t> shape) {
  return latentlm::fp32_cpu(t) && t.is_contiguous() && t.sizes() == c10::IntArrayRef(shape);
}

}  // namespace

// The sampled latent [R, D] as above, or None for inputs this kernel does not take (the caller then uses the
// reference): not fp32 contiguous CPU tensors, shapes that do not fit together, no rows or more than
// max_rows MLP rows, or an autograd graph to record.
c10::optional<torch::Tensor> adaln_head_sample(
    const torch::Tensor& x, const torch::Tensor& mods, const torch::Tensor& coefs, const torch::Tensor& x_in_w,
    const torch::Tensor& x_in_b, const torch::Tensor& up_w, const torch::Tensor& up_b, const torch::Tensor& down_w,
    const torch::Tensor& down_b, const torch::Tensor& out_w, const torch::Tensor& out_b, const std::vector<double>& eps,
    double cfg_scale, bool guided, int64_t max_rows, bool use_avx2, int64_t prefetch_bytes,
    int64_t min_parallel_bytes, int64_t far_bytes) {
  if (x.dim() != 2 || x_in_w.dim() != 2 || up_w.dim() != 3 || mods.dim() != 3) return c10::nullopt;
  const int64_t R = x.size(0), D = x.size(1), W = x_in_w.size(0), L = up_w.size(0), S = mods.size(0);
  const int64_t N = guided ? 2 * R : R;
  if (!ok(x, {R, D}) || !ok(mods, {S, N, (3 * L + 2) * W}) || !ok(coefs, {S, 5}) || !ok(x_in_w, {W, D}) ||
      !ok(x_in_b, {W}) || !ok(up_w, {L, W, W}) || !ok(up_b, {L, W}) || !ok(down_w, {L, W, W}) ||
      !ok(down_b, {L, W}) || !ok(out_w, {D, W}) || !ok(out_b, {D}) || static_cast<int64_t>(eps.size()) != L + 1)
    return c10::nullopt;
  if (R == 0 || D == 0 || W == 0 || N > max_rows ||
      latentlm::needs_grad({&x, &mods, &coefs, &x_in_w, &x_in_b, &up_w, &up_b, &down_w, &down_b, &out_w, &out_b}))
    return c10::nullopt;

  Head hd{x_in_w.data_ptr<float>(), x_in_b.data_ptr<float>(), up_w.data_ptr<float>(), up_b.data_ptr<float>(),
          down_w.data_ptr<float>(), down_b.data_ptr<float>(), out_w.data_ptr<float>(), out_b.data_ptr<float>(),
          std::vector<float>(eps.begin(), eps.end()), D, W, L};
  torch::Tensor y = x.clone();
  sample(hd, {use_avx2, prefetch_bytes, min_parallel_bytes, far_bytes}, mods.data_ptr<float>(), coefs.data_ptr<float>(),
         S, R, guided, static_cast<float>(cfg_scale), y.data_ptr<float>());
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "latentlm diffusion-head sampling loop (AdaLN MLP + affine solver steps) for one latent on CPU, fp32";
  m.def("adaln_head_sample", &adaln_head_sample,
        "the sampled latent [R, D] after S steps of the AdaLN MLP and the solver, or None for inputs the kernel "
        "does not take",
        py::arg("x"), py::arg("mods"), py::arg("coefs"), py::arg("x_in_w"), py::arg("x_in_b"), py::arg("up_w"),
        py::arg("up_b"), py::arg("down_w"), py::arg("down_b"), py::arg("out_w"), py::arg("out_b"), py::arg("eps"),
        py::arg("cfg_scale"), py::arg("guided"), py::arg("max_rows"), py::arg("avx2") = true,
        py::arg("prefetch_bytes") = 4096, py::arg("min_parallel_bytes") = 192 << 10,
        py::arg("far_bytes") = 16 << 20);
  m.def("supports_avx2", &latentlm::has_avx2, "whether this CPU runs the AVX2+FMA path");
}
