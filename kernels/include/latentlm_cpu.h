// What every latentlm C++ CPU kernel shares: the CPU feature check and the input checks by which a
// kernel decides whether it takes its inputs (when not, it answers None and the Python wrapper calls the
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
