// The bfloat16 GEMM of gemm_bf16.h. A register tile is MR x 32 (MR <= 12, two panels of B), as in
// gemm_avx512.cpp, but each step takes two k at once: A's pair (A[i][k], A[i][k+1]) is broadcast as
// one 32-bit value and vdpbf16ps adds A[i][k] B[k][j] + A[i][k+1] B[k+1][j] into lane j. An odd K's
// last step broadcasts (A[i][K-1], 0), so that it reads nothing past the row. The epilogue is
// gemm_avx512.cpp's, in registers before the tile's one store. The weight gradients' form reads A
// packed in pairs along K (a band's pixels): two pixels' channels interleaved by one vector pass
// (pack_pixel_pairs_bf16), where a row-major A would need a transposition.
//
// Why: on CPUs with AVX512_BF16 but no AMX (AMD Zen 4 / Zen 5) a vdpbf16ps does twice the
// multiply-accumulates of a float32 FMA of the same width, and its operands are half the bytes.
#include "cpu/gemm_bf16.h"

#include <algorithm>
#include <cstring>

#include "cpu/bf16.h"

namespace mesrgan {
namespace cpu {
namespace gemm {

int64_t packed_size_bf16(int64_t K, int64_t N) { return ((K + 1) / 2) * 2 * ((N + kNR - 1) / kNR) * kNR; }

BMatrixBf16 pack_b_bf16(const float* src, int64_t K, int64_t N, int64_t ks, int64_t js, uint16_t* dst) {
  const int64_t pairs = (K + 1) / 2, panels = (N + kNR - 1) / kNR, panel_stride = pairs * 2 * kNR;
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t k = 0; k < 2 * pairs; ++k)
      for (int64_t c = 0; c < kNR; ++c) {
        const int64_t j = p * kNR + c;
        dst[p * panel_stride + (k / 2) * 2 * kNR + c * 2 + k % 2] =
            j < N && k < K ? float_to_bf16(src[k * ks + j * js]) : uint16_t(0);
      }
  return BMatrixBf16{dst, panel_stride};
}

bool use_gemm_bf16() { return std::strcmp(bf16_convert_name(), "avx512_bf16") == 0; }

}  // namespace gemm
}  // namespace cpu
}  // namespace mesrgan

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#pragma GCC target("avx512f,avx512bf16,avx2,fma")
#include <immintrin.h>

#include "cpu/gemm_avx512_epilogue.h"

namespace mesrgan {
namespace cpu {
namespace gemm {
namespace {

constexpr int kMR = 12;
constexpr int64_t kMC = 72;  // rows per L2 block of A

inline __m512bh as_bh(__m512i v) { return reinterpret_cast<__m512bh&>(v); }

// One MR x (16 NV) tile at C; B0 / B1 its panels (padded with zeros, so always read whole), `row` /
// `col` its place in the whole C, nr its columns inside the matrix (FULL: all 16 NV). PAIRS: A is
// gemm_bf16_pairs_avx512's (pair (r, q) at 32-bit offset q * lda + r), else row-major (lda apart).
template <int MR, int NV, bool FULL, bool PAIRS>
void tile(int64_t K, const uint16_t* A, int64_t lda, const uint16_t* B0, const uint16_t* B1, float* C, int64_t ldc,
          const Epilogue<float>& ep, int64_t row, int64_t col, int64_t nr) {
  __m512 acc[MR][NV];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int h = 0; h < NV; ++h) acc[r][h] = _mm512_setzero_ps();
  const int64_t pairs = PAIRS ? (K + 1) / 2 : K / 2;  // packed pairs carry an odd K's zero
  for (int64_t q = 0; q < pairs; ++q) {
    __m512i b[NV];
    b[0] = _mm512_loadu_si512(B0 + q * 32);
    if constexpr (NV == 2) b[1] = _mm512_loadu_si512(B1 + q * 32);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      uint32_t pair;
      std::memcpy(&pair, PAIRS ? A + 2 * (q * lda + r) : A + r * lda + 2 * q, sizeof(pair));
      const __m512i av = _mm512_set1_epi32(static_cast<int>(pair));
#pragma GCC unroll 2
      for (int h = 0; h < NV; ++h) acc[r][h] = _mm512_dpbf16_ps(acc[r][h], as_bh(av), as_bh(b[h]));
    }
  }
  if (!PAIRS && K % 2) {  // the last k alone: (A[i][K-1], 0) against B's (B[K-1][j], 0)
    __m512i b[NV];
    b[0] = _mm512_loadu_si512(B0 + pairs * 32);
    if constexpr (NV == 2) b[1] = _mm512_loadu_si512(B1 + pairs * 32);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const __m512i av = _mm512_set1_epi32(static_cast<int>(A[r * lda + K - 1]));
#pragma GCC unroll 2
      for (int h = 0; h < NV; ++h) acc[r][h] = _mm512_dpbf16_ps(acc[r][h], as_bh(av), as_bh(b[h]));
    }
  }
  const __mmask16 m[2] = {avx512::lanes_below(nr), avx512::lanes_below(nr - 16)};
  avx512::store_tile<MR, NV, FULL>(acc, C, ldc, ep, row, col, m);
}

using TileFn = void (*)(int64_t, const uint16_t*, int64_t, const uint16_t*, const uint16_t*, float*, int64_t,
                        const Epilogue<float>&, int64_t, int64_t, int64_t);

template <int NV, bool FULL, bool PAIRS, int MR = kMR>
TileFn tile_for_rows(int64_t mr) {
  if constexpr (MR == 1) {
    return &tile<1, NV, FULL, PAIRS>;
  } else {
    return mr >= MR ? &tile<MR, NV, FULL, PAIRS> : tile_for_rows<NV, FULL, PAIRS, MR - 1>(mr);
  }
}

template <int NV, bool PAIRS>
TileFn tile_for(int64_t mr, bool full) {
  return full ? tile_for_rows<NV, true, PAIRS>(mr) : tile_for_rows<NV, false, PAIRS>(mr);
}

// Both forms: row i of A starts at A + i * a_row (16-bit units), pairs or rows lda apart.
template <bool PAIRS>
void gemm(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda, int64_t a_row, const BMatrixBf16& B,
          float* C, int64_t ldc, const Epilogue<float>& ep) {
  for (int64_t i0 = 0; i0 < M; i0 += kMC) {
    const int64_t i1 = std::min(M, i0 + kMC);
    for (int64_t j = 0; j < N; j += 2 * kNR) {
      const int64_t nr = std::min(2 * kNR, N - j);
      const uint16_t* panel = B.p + (j / kNR) * B.panel_stride;
      for (int64_t i = i0; i < i1; i += kMR) {
        const int64_t mr = std::min<int64_t>(kMR, i1 - i);
        const TileFn fn = nr > kNR ? tile_for<2, PAIRS>(mr, nr == 2 * kNR) : tile_for<1, PAIRS>(mr, nr == kNR);
        fn(K, A + i * a_row, lda, panel, panel + B.panel_stride, C + i * ldc + j, ldc, ep, i, j, nr);
      }
    }
  }
}

// 16 bfloat16 values widened into the low / high halves of 16 32-bit lanes, the other half zero. (The
// zero-masking forms: GCC 12 warns of the plain ones' undefined source.)
inline __m512i low_halves(__m256i v) { return _mm512_maskz_cvtepu16_epi32(0xFFFF, v); }
inline __m512i high_halves(__m256i v) { return _mm512_maskz_slli_epi32(0xFFFF, low_halves(v), 16); }

}  // namespace

void gemm_bf16_avx512(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda, const BMatrixBf16& B, float* C,
                      int64_t ldc, const Epilogue<float>& ep) {
  gemm<false>(M, N, K, A, lda, lda, B, C, ldc, ep);
}

void gemm_bf16_pairs_avx512(int64_t M, int64_t N, int64_t K, const uint32_t* Ap, const BMatrixBf16& B, float* C,
                            int64_t ldc, const Epilogue<float>& ep) {
  gemm<true>(M, N, K, reinterpret_cast<const uint16_t*>(Ap), M, 2, B, C, ldc, ep);
}

void pack_pixel_pairs_bf16(const uint16_t* src, int64_t ld, int64_t P, int64_t C, uint32_t* dst) {
  const int64_t vec = C / 16 * 16;
  for (int64_t q = 0; q < (P + 1) / 2; ++q, dst += C) {
    const uint16_t* lo = src + 2 * q * ld;
    const uint16_t* hi = 2 * q + 1 < P ? lo + ld : nullptr;  // an odd P's last pair: (value, 0)
    for (int64_t c = 0; c < vec; c += 16) {
      const __m512i l = low_halves(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo + c)));
      const __m512i h =
          hi ? high_halves(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi + c))) : _mm512_setzero_si512();
      _mm512_storeu_si512(dst + c, _mm512_or_si512(l, h));
    }
    for (int64_t c = vec; c < C; ++c) dst[c] = uint32_t(lo[c]) | (hi ? uint32_t(hi[c]) << 16 : 0u);
  }
}

BMatrixBf16 pack_rows_b_bf16(const float* src, int64_t K, int64_t N, uint16_t* dst) {
  const int64_t pairs = (K + 1) / 2, panels = (N + kNR - 1) / kNR, panel_stride = pairs * 2 * kNR;
  for (int64_t p = 0; p < panels; ++p) {
    const __mmask16 m = avx512::lanes_below(N - p * kNR);  // columns past N: zeros
    for (int64_t q = 0; q < pairs; ++q) {
      const float* r0 = src + 2 * q * N + p * kNR;
      const __m512 a = _mm512_maskz_loadu_ps(m, r0);
      const __m512 b = 2 * q + 1 < K ? _mm512_maskz_loadu_ps(m, r0 + N) : _mm512_setzero_ps();
      const __m256bh ra = _mm512_cvtneps_pbh(a), rb = _mm512_cvtneps_pbh(b);
      const __m512i l = low_halves(reinterpret_cast<const __m256i&>(ra));
      const __m512i h = high_halves(reinterpret_cast<const __m256i&>(rb));
      _mm512_storeu_si512(dst + p * panel_stride + q * 2 * kNR, _mm512_or_si512(l, h));
    }
  }
  return BMatrixBf16{dst, panel_stride};
}

}  // namespace gemm
}  // namespace cpu
}  // namespace mesrgan
#endif
