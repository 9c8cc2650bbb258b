// Which float32 GEMM the fused block runs: one of ours (gemm.h) or ATen's BLAS. MESRGAN_CPU_GEMM
// chooses, or torch.ops.mesrgan._cpu_gemm(...) (for tests and benchmarks); by default ours at
// cpu_isa()'s width.
#pragma once
#include <string>

#include "cpu/gemm.h"

namespace mesrgan {
namespace cpu {

enum class Gemm : int { kBlas, kAvx2, kAvx512 };

// The GEMM the next call runs (calls already running keep theirs).
Gemm gemm_in_use();

// Changes the choice: "own" (ours at the widest ISA the tiles run), "avx2", "avx512", "blas", or
// "default" (and anything else) for the default. A kernel the CPU lacks falls back to the nearest
// it has: gemm_in_use() says what runs.
void choose_gemm(const std::string& which);

// "avx512", "avx2" or "blas".
const char* gemm_name(Gemm g);

// Our kernel of g; null for kBlas.
gemm::Kernel gemm_kernel(Gemm g);

}  // namespace cpu
}  // namespace mesrgan
