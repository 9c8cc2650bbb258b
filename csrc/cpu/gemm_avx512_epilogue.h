// What the two AVX-512 GEMMs (gemm_avx512.cpp: float32 operands; gemm_bf16.cpp: bfloat16 operands)
// share once their accumulators are summed: lane masks, and gemm.h's Epilogue applied in registers
// before a tile's single store. Include after `#pragma GCC target("avx512f,...")` and <immintrin.h>.
#pragma once
#include <cstdint>

#include "cpu/gemm.h"

namespace mesrgan {
namespace cpu {
namespace gemm {
namespace avx512 {

// Lanes [0, n) set (n may be <= 0 or >= 16).
inline __mmask16 lanes_below(int64_t n) {
  return n <= 0 ? __mmask16(0) : n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
}

// v * (sign > 0 ? 1 : slope); NaN compares false and stays NaN.
inline __m512 times_leaky_factor(__m512 v, __m512 sign, __m512 slope) {
  const __mmask16 positive = _mm512_cmp_ps_mask(sign, _mm512_setzero_ps(), _CMP_GT_OQ);
  return _mm512_mask_mul_ps(v, static_cast<__mmask16>(~positive), v, slope);
}

// v + bias, LeakyReLU, + add for the value at (i, j..j+15) of C: the epilogue's steps that do not
// read C (accumulate and mask do), shared by the float32 and bfloat16 stores.
inline __m512 bias_leaky_add(__m512 v, const Epilogue<float>& ep, int64_t i, int64_t j, __mmask16 mk, __m512 slope) {
  if (ep.bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, ep.bias + j));
  if (ep.leaky) v = times_leaky_factor(v, v, slope);
  if (ep.add) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, ep.add + i * ep.ld_add + j));
  return v;
}

// Applies the epilogue to an MR x (16 NV) tile of accumulators and stores it at C (rows ldc apart);
// `row` / `col`: the tile's place in the whole C, for the bias and the add / mask operands; m: the
// lane masks of its two 16-column halves (ignored when FULL).
template <int MR, int NV, bool FULL>
inline void store_tile(__m512 (&acc)[MR][NV], float* C, int64_t ldc, const Epilogue<float>& ep, int64_t row,
                       int64_t col, const __mmask16 (&m)[2]) {
  const __m512 slope = _mm512_set1_ps(ep.slope);
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int h = 0; h < NV; ++h) {
      const __mmask16 mk = FULL ? __mmask16(0xFFFF) : m[h];
      const int64_t j = col + 16 * h;
      float* c = C + r * ldc + 16 * h;
      __m512 v = acc[r][h];
      if (ep.accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, c));
      v = bias_leaky_add(v, ep, row + r, j, mk, slope);
      if (ep.mask) v = times_leaky_factor(v, _mm512_maskz_loadu_ps(mk, ep.mask + (row + r) * ep.ld_mask + j), slope);
      if (FULL) {
        _mm512_storeu_ps(c, v);
      } else {
        _mm512_mask_storeu_ps(c, mk, v);
      }
    }
  }
}

}  // namespace avx512
}  // namespace gemm
}  // namespace cpu
}  // namespace mesrgan
