// The AVX-512 GEMM of gemm.h (the AVX2 one's B layout and epilogue). A register tile is MR x 32
// (MR <= 12 rows, two 16-float vectors a row, read from two neighbouring 16-column panels of B): 24
// accumulators and two B vectors, with A's values broadcast straight from memory into the FMAs. The
// last 16 columns of an odd panel count take an MR x 16 tile. As in the AVX2 kernel, a tile runs over
// the whole K and applies the epilogue in registers before its single store; masked edges use
// AVX-512's mask registers.
//
// Why: on an AMD EPYC (Zen 5, full-width AVX-512) the AVX2 kernel left half of each FMA unit idle,
// and MKL's sgemm does not take its AVX-512 path on AMD CPUs (benchmarks/RESULTS.md).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <algorithm>
#include <cstdint>

#include "cpu/gemm.h"

#pragma GCC target("avx512f,avx2,fma")
#include <immintrin.h>

#include "cpu/gemm_avx512_epilogue.h"

namespace mesrgan {
namespace cpu {
namespace gemm {
namespace {

constexpr int kMR = 12;
constexpr int64_t kMC = 72;  // rows per L2 block of A

// One MR x (16 NV) tile whose top-left element is C[0][0]; B0 and B1 are the two panels (B1 unused
// when NV is 1), `row` / `col` its first row / column in the whole C, nr its columns inside the
// matrix. FULL: all 16 NV columns are inside (no masks). A_ROWS as in the AVX2 kernel.
template <int MR, int NV, bool FULL, bool A_ROWS>
void tile(int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B0, const float* B1, int64_t ldb,
          float* C, int64_t ldc, const Epilogue<float>& ep, int64_t row, int64_t col, int64_t nr) {
  const __mmask16 m[2] = {avx512::lanes_below(nr), avx512::lanes_below(nr - 16)};
  __m512 acc[MR][NV];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int h = 0; h < NV; ++h) acc[r][h] = _mm512_setzero_ps();
  const float* a[MR];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) a[r] = A + r * a_rs;
#pragma GCC unroll 2
  for (int64_t k = 0; k < K; ++k) {
    __m512 b[NV];
    b[0] = FULL ? _mm512_loadu_ps(B0) : _mm512_maskz_loadu_ps(m[0], B0);
    if constexpr (NV == 2) b[1] = FULL ? _mm512_loadu_ps(B1) : _mm512_maskz_loadu_ps(m[1], B1);
    B0 += ldb;
    B1 += ldb;
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(A_ROWS ? a[r][k] : A[r]);
#pragma GCC unroll 2
      for (int h = 0; h < NV; ++h) acc[r][h] = _mm512_fmadd_ps(av, b[h], acc[r][h]);
    }
    if (!A_ROWS) A += a_cs;
  }
  avx512::store_tile<MR, NV, FULL>(acc, C, ldc, ep, row, col, m);
}

using TileFn = void (*)(int64_t, const float*, int64_t, int64_t, const float*, const float*, int64_t, float*,
                        int64_t, const Epilogue<float>&, int64_t, int64_t, int64_t);

template <int NV, bool FULL, bool A_ROWS, int MR = kMR>
TileFn tile_for_rows(int64_t mr) {
  if constexpr (MR == 1) {
    return &tile<1, NV, FULL, A_ROWS>;
  } else {
    return mr >= MR ? &tile<MR, NV, FULL, A_ROWS> : tile_for_rows<NV, FULL, A_ROWS, MR - 1>(mr);
  }
}

template <int NV>
TileFn tile_for(int64_t mr, bool full, bool a_rows) {
  if (a_rows) return full ? tile_for_rows<NV, true, true>(mr) : tile_for_rows<NV, false, true>(mr);
  return full ? tile_for_rows<NV, true, false>(mr) : tile_for_rows<NV, false, false>(mr);
}

}  // namespace

void gemm_avx512(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const BMatrix& B,
                 float* C, int64_t ldc, const Epilogue<float>& ep) {
  for (int64_t i0 = 0; i0 < M; i0 += kMC) {
    const int64_t i1 = std::min(M, i0 + kMC);
    for (int64_t j = 0; j < N; j += 2 * kNR) {
      const int64_t nr = std::min(2 * kNR, N - j);
      const float* panel = B.p + (j / kNR) * B.panel_stride;
      for (int64_t i = i0; i < i1; i += kMR) {
        const int64_t mr = std::min<int64_t>(kMR, i1 - i);
        const TileFn fn = nr > kNR ? tile_for<2>(mr, nr == 2 * kNR, a_cs == 1) : tile_for<1>(mr, nr == kNR, a_cs == 1);
        fn(K, A + i * a_rs, a_rs, a_cs, panel, panel + B.panel_stride, B.ldb, C + i * ldc + j, ldc, ep, i, j, nr);
      }
    }
  }
}

}  // namespace gemm
}  // namespace cpu
}  // namespace mesrgan
#endif
