// The depthwise of bottleneck_dw_bf16.h. One channel group of 16 (one AVX-512 register) at a time,
// its nine weight vectors and bias held in registers while it walks down the rows; along a row,
// strips of kPX output pixels read their kPX + 2 input columns once per row and share them across
// the taps (3 (kPX + 2) loads for 9 kPX FMAs, against two loads an FMA in the float32 tile kernel,
// which reloads the weights at every pixel). The result is rounded to bfloat16 in registers
// (vcvtneps2bf16) and stored at half the bytes.
//
// Measured (Zen 4, 1 thread, thread CPU time, MESRGAN-paper's dense layers at LR 32 batch 16 and
// LR 128 batch 1): 35-37 GMAC/s where the float32 tile kernel and its rounding pass made 18-19
// (FMA peak about 58). Tried and left out, each 34-38 GMAC/s alone as in the block: strips of two
// output rows (2.5 input loads an output instead of 3.75), vdpbf16ps on (column, next column) pairs
// (6 instead of 9 multiply instructions an output), rows outer and channel groups inner; without
// the rounding on store, 43.
#include "cpu/bottleneck_dw_bf16.h"

#ifdef MESRGAN_HAVE_X86_KERNELS
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512bf16,avx2,fma")
#include <immintrin.h>

#include <cstring>

#include "cpu/gemm_avx512_epilogue.h"

namespace mesrgan {
namespace cpu {
namespace bf16 {
namespace {

constexpr int kPX = 8;  // output pixels a strip: 8 accumulators, 10 input columns, 9 weights in registers

// One channel group's operands: its weights, bias, lane mask (a last group of C % 16 channels) and
// the LeakyReLU slope.
struct Group {
  __m512 w[9];
  __m512 bias, slope;
  __mmask16 m;
};

// 16 bfloat16 values at p widened to float32 (a shift: bfloat16 is float32's top half).
template <bool FULL>
inline __m512 load(const uint16_t* p, __mmask16 m) {
  const __m256i b = FULL ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

// 16 floats rounded to bfloat16 at p (the group's lanes only).
template <bool FULL>
inline void store_bf16(uint16_t* p, __m512 v, __mmask16 m) {
  const __m256bh b = _mm512_cvtneps_pbh(v);
  if (FULL) {
    std::memcpy(p, &b, sizeof(b));
  } else {
    uint16_t tmp[16];
    std::memcpy(tmp, &b, sizeof(b));
    std::memcpy(p, tmp, sizeof(uint16_t) * __builtin_popcount(m));
  }
}

// PX output pixels of one row and channel group. in[dr] points at the strip's first pixel in the input
// row dr (0: above); pixels are C floats apart. LEFT / RIGHT: the strip touches the row's left / right
// end, where the taps that would read outside are skipped (zero padding).
template <int PX, bool LEFT, bool RIGHT, bool FULL>
inline void strip(const uint16_t* const (&in)[3], const Group& g, uint16_t* out, int64_t C) {
  __m512 acc[PX];
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p) acc[p] = g.bias;
#pragma GCC unroll 3
  for (int dr = 0; dr < 3; ++dr) {
    __m512 x[PX + 2];  // input columns -1 .. PX
#pragma GCC unroll 10
    for (int j = 0; j < PX + 2; ++j)
      if (!(LEFT && j == 0) && !(RIGHT && j == PX + 1)) x[j] = load<FULL>(in[dr] + (j - 1) * C, g.m);
#pragma GCC unroll 8
    for (int p = 0; p < PX; ++p)
#pragma GCC unroll 3
      for (int dc = 0; dc < 3; ++dc) {
        const int j = p + dc;
        if ((LEFT && j == 0) || (RIGHT && j == PX + 1)) continue;
        acc[p] = _mm512_fmadd_ps(x[j], g.w[dr * 3 + dc], acc[p]);
      }
  }
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p)
    store_bf16<FULL>(out + p * C, gemm::avx512::times_leaky_factor(acc[p], acc[p], g.slope), g.m);
}

// One row of one channel group: full strips, then the pixels left over one at a time.
template <bool FULL>
void row(const uint16_t* const (&in)[3], const Group& g, uint16_t* out, int64_t W, int64_t C) {
  int64_t w = 0;
  auto at = [&](int64_t col, const uint16_t* (&p)[3]) {
    for (int dr = 0; dr < 3; ++dr) p[dr] = in[dr] + col * C;
  };
  const uint16_t* p[3];
  for (; w + kPX <= W; w += kPX) {
    at(w, p);
    const bool left = w == 0, right = w + kPX == W;
    if (!left && !right) {
      strip<kPX, false, false, FULL>(p, g, out + w * C, C);
    } else if (left && right) {
      strip<kPX, true, true, FULL>(p, g, out + w * C, C);
    } else if (left) {
      strip<kPX, true, false, FULL>(p, g, out + w * C, C);
    } else {
      strip<kPX, false, true, FULL>(p, g, out + w * C, C);
    }
  }
  for (; w < W; ++w) {
    at(w, p);
    const bool left = w == 0, right = w + 1 == W;
    if (!left && !right) {
      strip<1, false, false, FULL>(p, g, out + w * C, C);
    } else if (left && right) {
      strip<1, true, true, FULL>(p, g, out + w * C, C);
    } else if (left) {
      strip<1, true, false, FULL>(p, g, out + w * C, C);
    } else {
      strip<1, false, true, FULL>(p, g, out + w * C, C);
    }
  }
}

}  // namespace

void dw_forward_to_bf16_avx512(const uint16_t* h1, const float* wt, const float* bias, uint16_t* h2b, int64_t rows,
                               int64_t W, int64_t C, float slope) {
  const int64_t row_len = W * C;
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    Group g;
    g.m = gemm::avx512::lanes_below(C - c0);
    for (int t = 0; t < 9; ++t) g.w[t] = _mm512_maskz_loadu_ps(g.m, wt + t * C + c0);
    g.bias = bias ? _mm512_maskz_loadu_ps(g.m, bias + c0) : _mm512_setzero_ps();
    g.slope = _mm512_set1_ps(slope);
    const bool full = C - c0 >= 16;
    // Down the rows with the group's registers loaded: each input row of this group (W lines of
    // 64 bytes) is read by three output rows in a row, from L1.
    for (int64_t r = 0; r < rows; ++r) {
      const uint16_t* in[3] = {h1 + r * row_len + c0, h1 + (r + 1) * row_len + c0, h1 + (r + 2) * row_len + c0};
      uint16_t* out = h2b + r * row_len + c0;
      if (full) {
        row<true>(in, g, out, W, C);
      } else {
        row<false>(in, g, out, W, C);
      }
    }
  }
}

}  // namespace bf16
}  // namespace cpu
}  // namespace mesrgan
#endif
