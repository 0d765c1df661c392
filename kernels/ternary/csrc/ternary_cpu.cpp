// Fused ternary (BitNet b1.58, W1.58 A8) matmul on CPU, reading the PackedTernary 2-bit layout.
//
//   acc[m, n] = sum_k x_q[m, k] * w[n, k]          exact, int32
//   y[m, n]   = float(acc) / x_scale[m] * w_scale  float32, the reference's two ops in its order
//
// Weights stay packed: codes c = w + 1 in {0, 1, 2}, 2 bits each (kernels/ternary/reference.py).
// The kernels multiply the unsigned codes by the signed activations, which is what the u8 x s8
// instructions want (AVX-512 VNNI vpdpbusd, AVX2 vpmaddubsw), and correct once per token:
//
//   sum_k x[k] * w[k] = sum_k x[k] * c[k] - sum_k x[k].
//
// Layout trick. Byte p of a packed row (p = b * Q + j in block b, Q = B / 4) holds the weights at
// k = b * B + g * Q + j in bits [2g+1 : 2g], g = 0..3. So plane g of the row, (byte >> 2g) & 3 for
// every byte, pairs byte p with activation x[b * B + g * Q + j]. Once per call the activations
// are rearranged to match: xi[m][c][g][i] = x[m][k(p = c * W + i, g)], chunks of W bytes (64 for
// AVX-512, 32 for AVX2), zero where k >= K or p >= P. The inner loops are then plain streams: one
// load of W weight bytes, four shift-and-mask decodes, four multiply-adds against contiguous x,
// for any block size. Padded weights have code 1 but meet x = 0, so they add nothing.
//
// The SIMD paths are compiled with target attributes, so one object holds all of them; the path is
// picked at run time with __builtin_cpu_supports (or forced by the caller). Output rows (N) are
// split over threads with at::parallel_for, which follows torch.set_num_threads.
#include <torch/extension.h>

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

namespace latentlm_ternary {

enum Isa : int64_t { kBest = -1, kScalar = 0, kAvx2 = 1, kAvx512Vnni = 2 };

constexpr int kMaxTile = 4;  // tokens (rows of x) that share one decoded weight chunk

bool supports(int64_t isa) {
  switch (isa) {
    case kScalar:
      return true;
#if LATENTLM_X86
    case kAvx2:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2");
    case kAvx512Vnni:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vnni");
#endif
    default:
      return false;
  }
}

int64_t best_isa() {
  if (supports(kAvx512Vnni)) return kAvx512Vnni;
  if (supports(kAvx2)) return kAvx2;
  return kScalar;
}

int64_t chunk_width(int64_t isa) { return isa == kAvx2 ? 32 : 64; }

// dots[t] = sum over the P bytes of row w of sum_g code_g * xi_t, for the `mt` tokens
// xi_t = xi + t * xstride (t < mt <= kMaxTile), xi laid out as [chunk][g][W].
using DotsFn = void (*)(const uint8_t* w, const int8_t* xi, int64_t xstride, int64_t P, int mt, int32_t* dots);

// ---------------------------------------------------------------------------------------- scalar
void dots_scalar(const uint8_t* w, const int8_t* xi, int64_t xstride, int64_t P, int mt, int32_t* dots) {
  constexpr int64_t W = 64;
  for (int t = 0; t < mt; ++t) {
    const int8_t* x = xi + t * xstride;
    int32_t acc = 0;
    for (int64_t c0 = 0; c0 < P; c0 += W) {
      const int64_t n = std::min(W, P - c0);
      const uint8_t* wc = w + c0;
      const int8_t* xc = x + c0 * 4;  // chunk c0 / W starts at (c0 / W) * 4W = 4 * c0
      for (int64_t i = 0; i < n; ++i) {
        const int32_t b = wc[i];
        acc += xc[i] * (b & 3) + xc[W + i] * ((b >> 2) & 3) + xc[2 * W + i] * ((b >> 4) & 3) +
               xc[3 * W + i] * (b >> 6);
      }
    }
    dots[t] = acc;
  }
}

#if LATENTLM_X86
// ------------------------------------------------------------------------------------------ AVX2
#define LATENTLM_AVX2 __attribute__((target("avx2")))

LATENTLM_AVX2 static inline int32_t hsum_avx2(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// One chunk of 32 weight bytes (128 weights) against MT tokens. vpmaddubsw multiplies u8 codes
// {0, 1, 2} by s8 x and adds pairs into int16: |pair| <= 2 * 2 * 128 = 512, the four planes
// summed stay within 2048, far from int16 saturation; vpmaddwd by 1 then widens to int32.
template <int MT>
LATENTLM_AVX2 static inline void step_avx2(__m256i b, const int8_t* x, int64_t xstride, __m256i* acc) {
  const __m256i mask = _mm256_set1_epi8(3);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i c0 = _mm256_and_si256(b, mask);
  const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(b, 2), mask);
  const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(b, 4), mask);
  const __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(b, 6), mask);
  for (int t = 0; t < MT; ++t) {
    const int8_t* xp = x + t * xstride;
    __m256i s = _mm256_maddubs_epi16(c0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp)));
    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + 32))));
    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + 64))));
    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + 96))));
    acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(s, ones));
  }
}

template <int MT>
LATENTLM_AVX2 static void dots_avx2_t(const uint8_t* w, const int8_t* xi, int64_t xstride, int64_t P, int32_t* dots) {
  constexpr int64_t W = 32;
  __m256i acc[MT];
  for (int t = 0; t < MT; ++t) acc[t] = _mm256_setzero_si256();
  const int64_t full = P / W;
  for (int64_t c = 0; c < full; ++c) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c * W));
    step_avx2<MT>(b, xi + c * 4 * W, xstride, acc);
  }
  if (const int64_t rem = P - full * W) {  // last partial chunk: x is zero past P
    alignas(32) uint8_t buf[W] = {0};
    std::memcpy(buf, w + full * W, rem);
    step_avx2<MT>(_mm256_load_si256(reinterpret_cast<const __m256i*>(buf)), xi + full * 4 * W, xstride, acc);
  }
  for (int t = 0; t < MT; ++t) dots[t] = hsum_avx2(acc[t]);
}

LATENTLM_AVX2 void dots_avx2(const uint8_t* w, const int8_t* xi, int64_t xstride, int64_t P, int mt, int32_t* dots) {
  switch (mt) {
    case 1: return dots_avx2_t<1>(w, xi, xstride, P, dots);
    case 2: return dots_avx2_t<2>(w, xi, xstride, P, dots);
    case 3: return dots_avx2_t<3>(w, xi, xstride, P, dots);
    default: return dots_avx2_t<4>(w, xi, xstride, P, dots);
  }
}

// ------------------------------------------------------------------------------- AVX-512 VNNI
#define LATENTLM_AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

// One chunk of 64 weight bytes (256 weights) against MT tokens. vpdpbusd multiplies u8 codes by
// s8 x and adds groups of four straight into int32 lanes (no saturation): exact. Each plane g has
// its own accumulator so that consecutive vpdpbusd do not wait on each other.
template <int MT>
LATENTLM_AVX512VNNI static inline void step_avx512(__m512i b, const int8_t* x, int64_t xstride, __m512i (*acc)[4]) {
  const __m512i mask = _mm512_set1_epi8(3);
  const __m512i c0 = _mm512_and_si512(b, mask);
  const __m512i c1 = _mm512_and_si512(_mm512_srli_epi16(b, 2), mask);
  const __m512i c2 = _mm512_and_si512(_mm512_srli_epi16(b, 4), mask);
  const __m512i c3 = _mm512_and_si512(_mm512_srli_epi16(b, 6), mask);
  for (int t = 0; t < MT; ++t) {
    const int8_t* xp = x + t * xstride;
    acc[t][0] = _mm512_dpbusd_epi32(acc[t][0], c0, _mm512_loadu_si512(xp));
    acc[t][1] = _mm512_dpbusd_epi32(acc[t][1], c1, _mm512_loadu_si512(xp + 64));
    acc[t][2] = _mm512_dpbusd_epi32(acc[t][2], c2, _mm512_loadu_si512(xp + 128));
    acc[t][3] = _mm512_dpbusd_epi32(acc[t][3], c3, _mm512_loadu_si512(xp + 192));
  }
}

template <int MT>
LATENTLM_AVX512VNNI static void dots_avx512_t(const uint8_t* w, const int8_t* xi, int64_t xstride, int64_t P,
                                              int32_t* dots) {
  constexpr int64_t W = 64;
  __m512i acc[MT][4];
  for (int t = 0; t < MT; ++t)
    for (int g = 0; g < 4; ++g) acc[t][g] = _mm512_setzero_si512();
  const int64_t full = P / W;
  for (int64_t c = 0; c < full; ++c) {
    step_avx512<MT>(_mm512_loadu_si512(w + c * W), xi + c * 4 * W, xstride, acc);
  }
  if (const int64_t rem = P - full * W) {  // last partial chunk: masked load, x is zero past P
    const __mmask64 k = (rem >= 64) ? ~__mmask64(0) : ((__mmask64(1) << rem) - 1);
    step_avx512<MT>(_mm512_maskz_loadu_epi8(k, w + full * W), xi + full * 4 * W, xstride, acc);
  }
  for (int t = 0; t < MT; ++t) {
    const __m512i s = _mm512_add_epi32(_mm512_add_epi32(acc[t][0], acc[t][1]), _mm512_add_epi32(acc[t][2], acc[t][3]));
    dots[t] = _mm512_reduce_add_epi32(s);
  }
}

LATENTLM_AVX512VNNI void dots_avx512(const uint8_t* w, const int8_t* xi, int64_t xstride, int64_t P, int mt,
                                     int32_t* dots) {
  switch (mt) {
    case 1: return dots_avx512_t<1>(w, xi, xstride, P, dots);
    case 2: return dots_avx512_t<2>(w, xi, xstride, P, dots);
    case 3: return dots_avx512_t<3>(w, xi, xstride, P, dots);
    default: return dots_avx512_t<4>(w, xi, xstride, P, dots);
  }
}
#endif  // LATENTLM_X86

DotsFn dots_fn(int64_t isa) {
#if LATENTLM_X86
  if (isa == kAvx512Vnni) return dots_avx512;
  if (isa == kAvx2) return dots_avx2;
#endif
  return dots_scalar;
}

// ------------------------------------------------------------------------------------- driver
// Rearranges x [M, K] into xi [M][C][4][W] (C = ceil(P / W)) as described at the top, and sums
// every token: sumx[m] = sum_k x[m, k].
void rearrange(const int8_t* x, int64_t M, int64_t K, int64_t B, int64_t P, int64_t W, int8_t* xi,
               int32_t* sumx) {
  const int64_t Q = B / 4;
  const int64_t xstride = (P + W - 1) / W * 4 * W;
  const int64_t blocks = P / Q;
  for (int64_t m = 0; m < M; ++m) {
    const int8_t* xm = x + m * K;
    int8_t* dst = xi + m * xstride;
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += xm[k];
    sumx[m] = s;
    for (int64_t b = 0; b < blocks; ++b) {
      for (int64_t g = 0; g < 4; ++g) {
        const int64_t k0 = b * B + g * Q;  // x[k0 + j] pairs with byte p = b * Q + j, plane g
        for (int64_t j = 0; j < Q;) {
          const int64_t p = b * Q + j, c = p / W, i = p % W;
          const int64_t run = std::min(Q - j, W - i);
          const int64_t valid = std::max<int64_t>(0, std::min(run, K - (k0 + j)));
          if (valid > 0) std::memcpy(dst + c * 4 * W + g * W + i, xm + k0 + j, valid);
          j += run;
        }
      }
    }
  }
}

torch::Tensor run(const torch::Tensor& x_q, const torch::Tensor& x_scale, const torch::Tensor& packed,
                  const torch::Tensor& w_scale, int64_t K, int64_t B, int64_t isa, bool dequantize) {
  TORCH_CHECK(x_q.device().is_cpu() && packed.device().is_cpu(), "ternary_cpu: tensors must be on the CPU");
  TORCH_CHECK(x_q.scalar_type() == torch::kInt8 && x_q.dim() == 2 && x_q.is_contiguous(),
              "ternary_cpu: x_q must be a contiguous int8 [M, K] tensor");
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.dim() == 2 && packed.is_contiguous(),
              "ternary_cpu: packed must be a contiguous uint8 [N, K_pad / 4] tensor");
  TORCH_CHECK(x_q.size(1) == K, "ternary_cpu: x_q has ", x_q.size(1), " features, the weight ", K);
  TORCH_CHECK(B > 0 && B % 4 == 0, "ternary_cpu: block size must be a positive multiple of 4, got ", B);
  const int64_t M = x_q.size(0), N = packed.size(0), P = packed.size(1), Kp = 4 * P;
  TORCH_CHECK(Kp % B == 0 && Kp >= K && Kp - K < B, "ternary_cpu: packed rows of ", P, " bytes do not fit K=", K,
              " with block size ", B);
  if (isa == kBest) isa = best_isa();
  TORCH_CHECK(supports(isa), "ternary_cpu: ISA path ", isa, " is not supported by this CPU or build");

  const float* xs = nullptr;
  float ws = 0.f;
  torch::Tensor xs_t;
  if (dequantize) {
    TORCH_CHECK(x_scale.device().is_cpu() && w_scale.device().is_cpu(), "ternary_cpu: scales must be on the CPU");
    TORCH_CHECK(x_scale.scalar_type() == torch::kFloat32 && x_scale.numel() == M,
                "ternary_cpu: x_scale must be float32 with one value per token");
    TORCH_CHECK(w_scale.scalar_type() == torch::kFloat32 && w_scale.numel() == 1,
                "ternary_cpu: w_scale must be a float32 scalar");
    xs_t = x_scale.contiguous();
    xs = xs_t.data_ptr<float>();
    ws = w_scale.item<float>();
  }
  auto out = torch::empty({M, N}, torch::TensorOptions().dtype(dequantize ? torch::kFloat32 : torch::kInt32));
  if (M == 0 || N == 0) return out;

  const int64_t W = chunk_width(isa);
  const int64_t xstride = (P + W - 1) / W * 4 * W;
  std::vector<int8_t> xi(static_cast<size_t>(M * xstride), 0);
  std::vector<int32_t> sumx(static_cast<size_t>(M));
  rearrange(x_q.data_ptr<int8_t>(), M, K, B, P, W, xi.data(), sumx.data());

  const DotsFn dots_of = dots_fn(isa);
  const uint8_t* wp = packed.data_ptr<uint8_t>();
  float* yf = dequantize ? out.data_ptr<float>() : nullptr;
  int32_t* yi = dequantize ? nullptr : out.data_ptr<int32_t>();
  // Tokens are taken in blocks whose rearranged activations fit in L2 (~256 KiB), so that each
  // weight row, decoded once per tile of kMaxTile tokens, is read from memory once per block.
  const int64_t mblock = std::max<int64_t>(kMaxTile, (int64_t(1) << 18) / std::max<int64_t>(xstride, 1) / kMaxTile * kMaxTile);
  // At least ~64 KiB of weights (times the tokens) per task, so small matrices do not pay for threads.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(P * std::min<int64_t>(M, 16), 1));
  const int8_t* xip = xi.data();
  const int32_t* sx = sumx.data();

  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    int32_t dots[kMaxTile];
    for (int64_t mb0 = 0; mb0 < M; mb0 += mblock) {
      const int64_t mb1 = std::min(M, mb0 + mblock);
      for (int64_t n = n0; n < n1; ++n) {
        const uint8_t* w = wp + n * P;
        for (int64_t m0 = mb0; m0 < mb1; m0 += kMaxTile) {
          const int mt = static_cast<int>(std::min<int64_t>(kMaxTile, mb1 - m0));
          dots_of(w, xip + m0 * xstride, xstride, P, mt, dots);
          for (int t = 0; t < mt; ++t) {
            const int64_t m = m0 + t;
            const int32_t acc = dots[t] - sx[m];
            if (yf) {
              yf[m * N + n] = static_cast<float>(acc) / xs[m] * ws;
            } else {
              yi[m * N + n] = acc;
            }
          }
        }
      }
    }
  });
  return out;
}

torch::Tensor matmul(const torch::Tensor& x_q, const torch::Tensor& x_scale, const torch::Tensor& packed,
                     const torch::Tensor& w_scale, int64_t K, int64_t block_size, int64_t isa) {
  return run(x_q, x_scale, packed, w_scale, K, block_size, isa, true);
}

torch::Tensor matmul_int32(const torch::Tensor& x_q, const torch::Tensor& packed, int64_t K, int64_t block_size,
                           int64_t isa) {
  return run(x_q, torch::Tensor(), packed, torch::Tensor(), K, block_size, isa, false);
}

}  // namespace latentlm_ternary

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace lt = latentlm_ternary;
  m.doc() = "latentlm fused ternary (W1.58 A8) CPU matmul over the PackedTernary layout";
  m.def("matmul", &lt::matmul,
        "y fp32 [M, N] = (x_q int8 [M, K] . W^T) / x_scale * w_scale, W packed uint8 [N, K_pad / 4]",
        py::arg("x_q"), py::arg("x_scale"), py::arg("packed"), py::arg("w_scale"), py::arg("k"),
        py::arg("block_size"), py::arg("isa") = -1, py::call_guard<py::gil_scoped_release>());
  m.def("matmul_int32", &lt::matmul_int32, "acc int32 [M, N] = x_q int8 [M, K] . W^T, W packed uint8 [N, K_pad / 4]",
        py::arg("x_q"), py::arg("packed"), py::arg("k"), py::arg("block_size"), py::arg("isa") = -1,
        py::call_guard<py::gil_scoped_release>());
  m.def("supports", &lt::supports, "whether ISA path (0 scalar, 1 avx2, 2 avx512_vnni) runs on this CPU",
        py::arg("isa"));
  m.def("best_isa", &lt::best_isa, "the fastest ISA path this CPU supports (0 scalar, 1 avx2, 2 avx512_vnni)");
}
