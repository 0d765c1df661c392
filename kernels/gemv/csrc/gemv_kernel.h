// The small-batch fp32 GEMV kernel (gemv_kernel.cpp): y = x . w^T + bias for a few rows of x, streaming
// w once at close to memory bandwidth. Shared by the torch ops that read weights while decoding:
// small_batch_linear (gemv_cpu.cpp) and glu_block (kernels/glu_block/csrc).
#pragma once

#include <cstdint>

namespace latentlm_gemv {

// The operands, all contiguous fp32: x [M, K], w [N, K], bias [N] or null, y [M, N] (written).
struct Job {
  const float* x;
  const float* w;
  const float* bias;
  float* y;
  int64_t M, K, N;
  int64_t prefetch_bytes;  // software prefetch distance per thread (0: none)
  int64_t far_bytes;       // matrices w of this many bytes or more are prefetched into L2, smaller into L1
};

// y = x . w^T + bias over the threads (at::parallel_for): each takes a contiguous range of w's rows,
// read as R interleaved streams (block_rows R; 0 picks it from M). A matrix below min_parallel_bytes
// stays on the calling thread. use_avx2 = false (or a CPU without it) runs the scalar loops.
void gemv(const Job& j, bool use_avx2, int64_t min_parallel_bytes, int64_t block_rows);

}  // namespace latentlm_gemv
