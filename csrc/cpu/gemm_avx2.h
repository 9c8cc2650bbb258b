// A single-threaded float32 GEMM for AVX2 + FMA with the fused bottleneck block's epilogues
// (gemm_avx2.cpp), for the small matrices of one band of rows: C (M x N) = A (M x K) . B (K x N);
// and its AVX-512 twin (gemm_avx512.cpp, declared at the end), which reads the same packed B.
//
// Why our own: on an AMD EPYC (Zen, AVX2) MKL's sgemm reached 34-54 GMAC/s on 2 cores at these sizes,
// 37-59% of the FMA units' peak. This kernel folds the bias / LeakyReLU / skip / mask into the store
// of each register tile, saving a pass over the band; whole networks measured 4-14% faster with it
// than with MKL there (benchmarks/RESULTS.md).
#pragma once
#include <cstdint>

namespace mesrgan {
namespace cpu {
namespace avx2 {
namespace gemm {

constexpr int64_t kNR = 16;  // columns of a register tile: two 8-float vectors

// B as the kernel reads it: the 16 columns [j, j + 16) of row k start at
//   p + (j / kNR) * panel_stride + k * ldb.
// A row-major matrix is {p, ld, kNR}; a packed one (pack_b) is {p, kNR, K * kNR}.
struct BMatrix {
  const float* p;
  int64_t ldb;
  int64_t panel_stride;
};

// What happens to each element of A.B on its way to C, in this order (each optional):
//   v += C[i][j] (accumulate), v += bias[j], v = LeakyReLU(v), v += add[i][j],
//   v *= (mask[i][j] > 0 ? 1 : slope) (LeakyReLU's derivative read from its output's sign).
struct Epilogue {
  bool accumulate = false;
  const float* bias = nullptr;
  bool leaky = false;
  const float* add = nullptr;
  int64_t ld_add = 0;
  const float* mask = nullptr;
  int64_t ld_mask = 0;
  float slope = 0;
};

// C (M x N, row stride ldc) = A . B then the epilogue; A's element (i, k) is A[i * a_rs + k * a_cs],
// so both a row-major A (a_cs = 1) and a transposed one (a_rs = 1) are read in place.
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const BMatrix& B, float* C,
          int64_t ldc, const Epilogue& ep);

// Packs the K x N matrix whose element (k, j) is src[k * ks + j * js] into panels of kNR columns
// (zero-padded), dst holding packed_size(K, N) floats; returns its BMatrix.
int64_t packed_size(int64_t K, int64_t N);
BMatrix pack_b(const float* src, int64_t K, int64_t N, int64_t ks, int64_t js, float* dst);

}  // namespace gemm
}  // namespace avx2

// The same GEMM for AVX-512F (gemm_avx512.cpp): the same B layout and epilogue, 12 x 32 register tiles.
namespace avx512 {
namespace gemm {
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const avx2::gemm::BMatrix& B,
          float* C, int64_t ldc, const avx2::gemm::Epilogue& ep);
}  // namespace gemm
}  // namespace avx512
}  // namespace cpu
}  // namespace mesrgan
