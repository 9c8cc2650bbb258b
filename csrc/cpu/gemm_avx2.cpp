// The AVX2 GEMM of gemm.h. A register tile is MR x 16 (MR <= 6 rows, two 8-float vectors a
// row): 12 accumulators, two B vectors and one broadcast A value fill 15 of the 16 ymm registers.
// Each tile runs over the whole K (K <= a few hundred here), so the epilogue is applied in registers
// before the single store. Rows are taken kMC at a time so that those rows of A stay in L2 while
// each 16-column panel of B (K x 64 bytes) stays in L1 across them.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <algorithm>
#include <cstdint>

#include "cpu/gemm.h"

#pragma GCC target("avx2,fma")
#include <immintrin.h>

namespace mesrgan {
namespace cpu {
namespace gemm {
namespace {

constexpr int kMR = 6;
constexpr int64_t kMC = 72;  // rows per L2 block of A

// Lanes [0, n) set (n may be <= 0 or >= 8).
inline __m256i lanes_below(int64_t n) {
  const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(std::max<int64_t>(n, 0), 8))),
                            index);
}

// FULL: all 16 columns are inside the matrix; else the masked-off lanes read as 0 and are not written.
template <bool FULL>
inline __m256 load(const float* p, __m256i m) {
  if constexpr (FULL) return _mm256_loadu_ps(p);
  return _mm256_maskload_ps(p, m);
}
template <bool FULL>
inline void store(float* p, __m256 v, __m256i m) {
  if constexpr (FULL) {
    _mm256_storeu_ps(p, v);
  } else {
    _mm256_maskstore_ps(p, m, v);
  }
}

// v * (sign > 0 ? 1 : slope): LeakyReLU of v when sign is v, its derivative's product when sign is the
// activation's output. NaN compares false and stays NaN.
inline __m256 times_leaky_factor(__m256 v, __m256 sign, __m256 slope) {
  const __m256 positive = _mm256_cmp_ps(sign, _mm256_setzero_ps(), _CMP_GT_OQ);
  return _mm256_mul_ps(v, _mm256_blendv_ps(slope, _mm256_set1_ps(1.0f), positive));
}

// One MR x 16 tile whose top-left element is C[0][0]; `row` is its first row in the whole C (for the
// epilogue's add / mask), `col` its first column, nr the columns inside the matrix. A_ROWS: A is
// row-major (a_cs = 1), else transposed (a_rs = 1): each has its own addressing so that the k loop
// carries one or two pointer increments, not one per row.
template <int MR, bool FULL, bool A_ROWS>
void tile(int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B, int64_t ldb, float* C, int64_t ldc,
          const Epilogue<float>& ep, int64_t row, int64_t col, int64_t nr) {
  const __m256i m0 = lanes_below(nr), m1 = lanes_below(nr - 8);
  __m256 acc[MR][2];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  const float* a[MR];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) a[r] = A + r * a_rs;
#pragma GCC unroll 4
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = load<FULL>(B, m0), b1 = load<FULL>(B + 8, m1);
    B += ldb;
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(A_ROWS ? a[r] + k : A + r);
      acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
    }
    if (!A_ROWS) A += a_cs;
  }
  const __m256 slope = _mm256_set1_ps(ep.slope);
  // Fully unrolled, so that acc is only ever indexed by constants and stays in registers.
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m256i m = h ? m1 : m0;
      const int64_t j = col + 8 * h;
      float* c = C + r * ldc + 8 * h;
      __m256 v = acc[r][h];
      if (ep.accumulate) v = _mm256_add_ps(v, load<FULL>(c, m));
      if (ep.bias) v = _mm256_add_ps(v, load<FULL>(ep.bias + j, m));
      if (ep.leaky) v = times_leaky_factor(v, v, slope);
      if (ep.add) v = _mm256_add_ps(v, load<FULL>(ep.add + (row + r) * ep.ld_add + j, m));
      if (ep.mask) v = times_leaky_factor(v, load<FULL>(ep.mask + (row + r) * ep.ld_mask + j, m), slope);
      store<FULL>(c, v, m);
    }
  }
}

using TileFn = void (*)(int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t,
                        const Epilogue<float>&, int64_t, int64_t, int64_t);

template <bool FULL, bool A_ROWS>
TileFn tile_for_rows(int64_t mr) {
  switch (mr) {
    case 1: return &tile<1, FULL, A_ROWS>;
    case 2: return &tile<2, FULL, A_ROWS>;
    case 3: return &tile<3, FULL, A_ROWS>;
    case 4: return &tile<4, FULL, A_ROWS>;
    case 5: return &tile<5, FULL, A_ROWS>;
    default: return &tile<6, FULL, A_ROWS>;
  }
}

TileFn tile_for(int64_t mr, bool full, bool a_rows) {
  if (a_rows) return full ? tile_for_rows<true, true>(mr) : tile_for_rows<false, true>(mr);
  return full ? tile_for_rows<true, false>(mr) : tile_for_rows<false, false>(mr);
}

}  // namespace

void gemm_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const BMatrix& B,
               float* C, int64_t ldc, const Epilogue<float>& ep) {
  for (int64_t i0 = 0; i0 < M; i0 += kMC) {
    const int64_t i1 = std::min(M, i0 + kMC);
    for (int64_t j = 0; j < N; j += kNR) {
      const int64_t nr = std::min(kNR, N - j);
      const float* panel = B.p + (j / kNR) * B.panel_stride;
      for (int64_t i = i0; i < i1; i += kMR) {
        const int64_t mr = std::min<int64_t>(kMR, i1 - i);
        const TileFn fn = tile_for(mr, nr == kNR, a_cs == 1);
        fn(K, A + i * a_rs, a_rs, a_cs, panel, B.ldb, C + i * ldc + j, ldc, ep, i, j, nr);
      }
    }
  }
}

}  // namespace gemm
}  // namespace cpu
}  // namespace mesrgan
#endif
