// The bfloat16 GEMM of gemm_bf16.h. A register tile is MR x 32 (MR <= 12, two panels of B), as in
// gemm_avx512.cpp, but each step takes two k at once: A's pair (A[i][k], A[i][k+1]) is broadcast as
// one 32-bit value and vdpbf16ps adds A[i][k] B[k][j] + A[i][k+1] B[k+1][j] into lane j. An odd K's
// last step broadcasts (A[i][K-1], 0), so that it reads nothing past the row. The epilogue is
// gemm_avx512.cpp's, in registers before the tile's one store; with a bfloat16 C
// (gemm_bf16_avx512_to_bf16) the tile is rounded there too (vcvtneps2bf16), and a last partial panel
// is stored with AVX512BW's 16-bit lane masks (every CPU with AVX512_BF16 has AVX512BW). The weight
// gradients' form reads A packed in pairs along K (a band's pixels): two pixels' channels
// interleaved by one vector pass (pack_pixel_pairs_bf16), where a row-major A would need a
// transposition.
//
// Why: on CPUs with AVX512_BF16 but no AMX (AMD Zen 4 / Zen 5) a vdpbf16ps does twice the
// multiply-accumulates of a float32 FMA of the same width, and its operands are half the bytes.
#include "cpu/gemm_bf16.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/bf16.h"

namespace mesrgan {
namespace cpu {
namespace gemm {

int64_t packed_size_bf16(int64_t K, int64_t N) { return ((K + 1) / 2) * 2 * ((N + kNR - 1) / kNR) * kNR; }

BMatrixBf16 pack_b_bf16(const float* src, int64_t K, int64_t N, int64_t ks, int64_t js, uint16_t* dst) {
  const int64_t pairs = (K + 1) / 2, panels = (N + kNR - 1) / kNR, panel_stride = pairs * 2 * kNR;
  std::memset(dst, 0, sizeof(uint16_t) * panels * panel_stride);  // an odd K's last row, the columns past N
  uint16_t* const column0 = dst;
  auto column = [&](int64_t j) { return column0 + (j / kNR) * panel_stride + (j % kNR) * 2; };
  if (ks == 1) {
    // B's columns are src's rows (W^T, as the block's GEMMs use it): each is rounded in one vector
    // call and stored a pair (32 bits) at a time. Element by element, this once-per-call pass was
    // 0.11 ms of a 1.3 ms 192 -> 384 -> 64 layer at LR 32 batch 1 (Zen 4).
    std::vector<uint16_t> rounded(2 * pairs, 0);
    for (int64_t j = 0; j < N; ++j) {
      bf16_convert().from_float(src + j * js, rounded.data(), K);
      uint16_t* c = column(j);
      for (int64_t q = 0; q < pairs; ++q) std::memcpy(c + q * 2 * kNR, rounded.data() + 2 * q, 2 * sizeof(uint16_t));
    }
  } else {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < N; ++j) column(j)[(k / 2) * 2 * kNR + k % 2] = float_to_bf16(src[k * ks + j * js]);
  }
  return BMatrixBf16{dst, panel_stride};
}

bool use_gemm_bf16() { return std::strcmp(bf16_convert_name(), "avx512_bf16") == 0; }

}  // namespace gemm
}  // namespace cpu
}  // namespace mesrgan

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512bf16,avx2,fma")
#include <immintrin.h>

#include "cpu/gemm_avx512_epilogue.h"

namespace mesrgan {
namespace cpu {
namespace gemm {
namespace {

constexpr int kMR = 12;
constexpr int64_t kMC = 72;  // rows per L2 block of A

inline __m512bh as_bh(__m512i v) { return reinterpret_cast<__m512bh&>(v); }

// The tile's store for a bfloat16 C: the epilogue's bias, LeakyReLU and add (gemm_avx512_epilogue.h's
// order; accumulate and mask are not for this C), then each row rounded to nearest-even and stored at
// half the bytes.
template <int MR, int NV, bool FULL>
inline void store_tile_bf16(__m512 (&acc)[MR][NV], uint16_t* C, int64_t ldc, const Epilogue<float>& ep, int64_t row,
                            int64_t col, const __mmask16 (&m)[2]) {
  const __m512 slope = _mm512_set1_ps(ep.slope);
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int h = 0; h < NV; ++h) {
      const __mmask16 mk = FULL ? __mmask16(0xFFFF) : m[h];
      const int64_t j = col + 16 * h;
      const __m512 v = avx512::bias_leaky_add(acc[r][h], ep, row + r, j, mk, slope);
      const __m256i b = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
      uint16_t* c = C + r * ldc + 16 * h;
      if (FULL) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c), b);
      } else {
        _mm256_mask_storeu_epi16(c, mk, b);
      }
    }
  }
}

// One MR x (16 NV) tile at C (float32 or bfloat16); B0 / B1 its panels (padded with zeros, so always
// read whole), `row` / `col` its place in the whole C, nr its columns inside the matrix (FULL: all
// 16 NV). PAIRS: A is gemm_bf16_pairs_avx512's (pair (r, q) at 32-bit offset q * lda + r), else
// row-major (lda apart).
template <typename TC, int MR, int NV, bool FULL, bool PAIRS>
void tile(int64_t K, const uint16_t* A, int64_t lda, const uint16_t* B0, const uint16_t* B1, TC* C, int64_t ldc,
          const Epilogue<float>& ep, int64_t row, int64_t col, int64_t nr) {
  // The accumulators start from the bias, which the epilogue then leaves out: one vector add fewer per
  // output vector, next to the K / 2 vdpbf16ps that make it (at K = 64, one op in 37).
  const __mmask16 m[2] = {avx512::lanes_below(nr), avx512::lanes_below(nr - 16)};
  __m512 start[NV];
#pragma GCC unroll 2
  for (int h = 0; h < NV; ++h)
    start[h] = ep.bias ? _mm512_maskz_loadu_ps(FULL ? __mmask16(0xFFFF) : m[h], ep.bias + col + 16 * h)
                       : _mm512_setzero_ps();
  __m512 acc[MR][NV];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int h = 0; h < NV; ++h) acc[r][h] = start[h];
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
  Epilogue<float> rest = ep;
  rest.bias = nullptr;
  if constexpr (std::is_same_v<TC, float>) {
    avx512::store_tile<MR, NV, FULL>(acc, C, ldc, rest, row, col, m);
  } else {
    store_tile_bf16<MR, NV, FULL>(acc, C, ldc, rest, row, col, m);
  }
}

template <typename TC>
using TileFn = void (*)(int64_t, const uint16_t*, int64_t, const uint16_t*, const uint16_t*, TC*, int64_t,
                        const Epilogue<float>&, int64_t, int64_t, int64_t);

template <typename TC, int NV, bool FULL, bool PAIRS, int MR = kMR>
TileFn<TC> tile_for_rows(int64_t mr) {
  if constexpr (MR == 1) {
    return &tile<TC, 1, NV, FULL, PAIRS>;
  } else {
    return mr >= MR ? &tile<TC, MR, NV, FULL, PAIRS> : tile_for_rows<TC, NV, FULL, PAIRS, MR - 1>(mr);
  }
}

template <typename TC, int NV, bool PAIRS>
TileFn<TC> tile_for(int64_t mr, bool full) {
  return full ? tile_for_rows<TC, NV, true, PAIRS>(mr) : tile_for_rows<TC, NV, false, PAIRS>(mr);
}

// Hints for the rows [0, rows) of A (K bfloat16 values each, lda apart), one per 64-byte line.
inline void prefetch_rows(const uint16_t* A, int64_t rows, int64_t K, int64_t lda) {
  for (int64_t r = 0; r < rows; ++r) {
    const char* row = reinterpret_cast<const char*>(A + r * lda);
    for (int64_t byte = 0; byte < 2 * K; byte += 64) _mm_prefetch(row + byte, _MM_HINT_T0);
    _mm_prefetch(row + 2 * K - 1, _MM_HINT_T0);
  }
}

// Both forms of A: row i starts at A + i * a_row (16-bit units), pairs or rows lda apart.
template <typename TC, bool PAIRS>
void gemm(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda, int64_t a_row, const BMatrixBf16& B, TC* C,
          int64_t ldc, const Epilogue<float>& ep) {
  for (int64_t i0 = 0; i0 < M; i0 += kMC) {
    const int64_t i1 = std::min(M, i0 + kMC);
    for (int64_t j = 0; j < N; j += 2 * kNR) {
      const int64_t nr = std::min(2 * kNR, N - j);
      const uint16_t* panel = B.p + (j / kNR) * B.panel_stride;
      for (int64_t i = i0; i < i1; i += kMR) {
        const int64_t mr = std::min<int64_t>(kMR, i1 - i);
        // While the first panels run, the next block's rows of A are fetched: the expand reads x
        // from a dense block's buffer, which at these sizes is in L3 (8 MiB at LR 32 batch 16), and
        // waiting on those misses held the expand at K = 64 to 66-70 GMAC/s (87 with the hints;
        // Zen 4, 1 thread; larger K, with more panels to hide them behind, gained little).
        // (Row-major A only: the pairs form's A is a small packed copy.)
        if (!PAIRS && j == 0 && i + kMC < M)
          prefetch_rows(A + (i + kMC) * lda, std::min<int64_t>(kMR, M - i - kMC), K, lda);
        const TileFn<TC> fn =
            nr > kNR ? tile_for<TC, 2, PAIRS>(mr, nr == 2 * kNR) : tile_for<TC, 1, PAIRS>(mr, nr == kNR);
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
  gemm<float, false>(M, N, K, A, lda, lda, B, C, ldc, ep);
}

void gemm_bf16_avx512_to_bf16(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda, const BMatrixBf16& B,
                              uint16_t* C, int64_t ldc, const Epilogue<float>& ep) {
  gemm<uint16_t, false>(M, N, K, A, lda, lda, B, C, ldc, ep);
}

void gemm_bf16_pairs_avx512(int64_t M, int64_t N, int64_t K, const uint32_t* Ap, const BMatrixBf16& B, float* C,
                            int64_t ldc, const Epilogue<float>& ep) {
  gemm<float, true>(M, N, K, reinterpret_cast<const uint16_t*>(Ap), M, 2, B, C, ldc, ep);
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
