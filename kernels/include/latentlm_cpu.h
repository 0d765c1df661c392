// What every latentlm C++ CPU kernel shares: the CPU feature checks, prefetching, and the input checks
// by which a kernel decides whether it takes its inputs (when not, it answers None and the Python wrapper calls the
// PyTorch reference). On the include path of every extension (kernels/cpp_build.py), and hashed into
// each one's build digest.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>

#include <initializer_list>

namespace latentlm {

// Whether this CPU runs AVX2 + FMA code (checked once).
inline bool has_avx2() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
#else
  return false;
#endif
}

// Whether this CPU converts fp16 <-> fp32 in vectors (F16C; every AVX2 CPU has it in practice).
inline bool has_f16c() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("f16c") != 0;
  }();
  return yes;
#else
  return false;
#endif
}

// Whether this CPU runs the AVX-512 code of our kernels (F, BW, VL and DQ; checked once).
inline bool has_avx512() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }();
  return yes;
#else
  return false;
#endif
}

// Whether this CPU also has AVX-512 BF16 (dot products of bf16 pairs, vdpbf16ps; checked once).
inline bool has_avx512_bf16() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool yes = [] {
    __builtin_cpu_init();
    return has_avx512() && __builtin_cpu_supports("avx512bf16");
  }();
  return yes;
#else
  return false;
#endif
}

// Prefetch the cache line at `p` for reading: into L2 when `far` (data streamed from memory: an L1
// prefetch holds one of the core's few L1 miss buffers until its line arrives, which caps a core's
// stream from memory well below the memory's speed; L2 has several times as many, and the hardware L1
// prefetcher brings the lines on from L2), else into L1 (data near the core; each caller sets `far` by
// the size of its data).
inline void prefetch_line(const void* p, bool far) {
  if (far)
    __builtin_prefetch(p, 0, 2);  // T1
  else
    __builtin_prefetch(p, 0, 3);  // T0
}

// An fp32 tensor on the CPU.
inline bool fp32_cpu(const at::Tensor& t) { return t.scalar_type() == at::kFloat && t.device().is_cpu(); }

// Whether autograd would record a graph through any of `ts` (null entries are skipped): then the
// reference runs, since the kernels have no backward.
inline bool needs_grad(std::initializer_list<const at::Tensor*> ts) {
  if (!c10::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : ts)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

}  // namespace latentlm
