// The fused bottleneck block's own float32 GEMMs, for the small matrices of one band of rows:
// C (M x N) = A (M x K) . B (K x N), single-threaded, with the block's epilogue applied in registers
// before each tile's one store. One kernel per instruction set, side by side, all reading the same
// packed B (gemm_pack.cpp) and applying the same Epilogue:
//   gemm_avx2.cpp    AVX2 + FMA, 6 x 16 register tiles
//   gemm_avx512.cpp  AVX-512F, 12 x 32 register tiles
// Which one runs (or ATen's BLAS instead) is gemm_choice.h's business.
//
// Why our own: on an AMD EPYC (Zen, AVX2) MKL's sgemm reached 34-54 GMAC/s on 2 cores at these sizes,
// 37-59% of the FMA units' peak. Folding the bias / LeakyReLU / skip / mask into the stores saves a
// pass over the band; whole networks measured 4-14% faster with it than with MKL there
// (benchmarks/RESULTS.md).
#pragma once
#include <cstdint>

#include "cpu/isa.h"

namespace mesrgan {
namespace cpu {
namespace gemm {

constexpr int64_t kNR = 16;  // columns of a packed panel of B (two AVX2 vectors, one AVX-512 vector)

// B as the kernels read it: the 16 columns [j, j + 16) of row k start at
//   p + (j / kNR) * panel_stride + k * ldb.
// A row-major matrix is {p, ld, kNR}; a packed one (pack_b) is {p, kNR, K * kNR}.
struct BMatrix {
  const float* p = nullptr;
  int64_t ldb = 0;
  int64_t panel_stride = 0;
};

// What happens to each element of A.B on its way to C, in this order (each optional):
//   v += C[i][j] (accumulate), v += bias[j], v = LeakyReLU(v), v += add[i][j],
//   v *= (mask[i][j] > 0 ? 1 : slope) (LeakyReLU's derivative read from its output's sign).
// Our kernels take float; the block's BLAS path (float64 too) applies the same with its tile kernels.
template <typename T>
struct Epilogue {
  bool accumulate = false;
  const T* bias = nullptr;
  bool leaky = false;
  const T* add = nullptr;
  int64_t ld_add = 0;
  const T* mask = nullptr;
  int64_t ld_mask = 0;
  T slope = 0;
};

// C (M x N, row stride ldc) = A . B then the epilogue; A's element (i, k) is A[i * a_rs + k * a_cs],
// so both a row-major A (a_cs = 1) and a transposed one (a_rs = 1) are read in place.
using Kernel = void (*)(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs,
                        const BMatrix& B, float* C, int64_t ldc, const Epilogue<float>& ep);

#ifdef MESRGAN_HAVE_X86_KERNELS
void gemm_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const BMatrix& B,
               float* C, int64_t ldc, const Epilogue<float>& ep);
void gemm_avx512(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const BMatrix& B,
                 float* C, int64_t ldc, const Epilogue<float>& ep);
#endif

// Packs the K x N matrix whose element (k, j) is src[k * ks + j * js] into panels of kNR columns
// (zero-padded), dst holding packed_size(K, N) floats; returns its BMatrix.
int64_t packed_size(int64_t K, int64_t N);
BMatrix pack_b(const float* src, int64_t K, int64_t N, int64_t ks, int64_t js, float* dst);

}  // namespace gemm
}  // namespace cpu
}  // namespace mesrgan
