// The depthwise of bottleneck_dw_bf16.h. One channel group of 32 (a 64-byte line of bfloat16) at a
// time, split by parity into two float32 halves (widening without a shuffle), its weights and bias
// held in registers while it walks down the rows; along a row, strips of kPX output pixels read each
// input column once per row and use it at once for every output it reaches (3 (kPX + 2) loads for
// 9 kPX FMAs a half, against two loads an FMA in the float32 tile kernel, which reloads the weights
// at every pixel). The results are rounded to bfloat16 in registers (vcvtne2ps2bf16), put back in
// channel order (one vpermw a line) and stored at half the bytes.
//
// Measured (Zen 4, 1 thread, thread CPU time, MESRGAN-paper's dense layers at LR 32 batch 16 and
// LR 128 batch 1): the float32 tile kernel and its rounding pass made 18-19 GMAC/s (FMA peak about
// 58); groups of 16 channels widened with vpmovzxwd + vpslld (one lane-crossing shuffle per load),
// strips of 8, made 35-37 in the block and 31-39 alone; groups of 32 split by parity, strips of 4,
// make 40-44 alone (strips of 2, 6 or 8: within 3 of that). Tried on the groups of 16 and left out,
// each 34-38: strips of two output rows (2.5 loads an output instead of 3.75), vdpbf16ps on
// (column, next column) pairs (6 instead of 9 multiply instructions an output), rows outer and
// channel groups inner.
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

constexpr int kPX = 4;  // output pixels a strip: 8 accumulators (two halves of 4), 18 weights

// One channel group of 32 (a 64-byte line of bfloat16): its weights, bias, lane mask (a last group of
// C % 32 channels) and the LeakyReLU slope. Its channels are split into halves by parity, which is
// how a line of bfloat16 widens to float32 without a shuffle: the even channels are each 32-bit
// lane's low half shifted up, the odd ones its high half with the low bits cleared.
struct Group {
  __m512 we[9], wo[9];  // tap-major weights of the even / odd channels
  __m512 be, bo;        // bias, even / odd
  __m512 slope;
  __mmask32 m;
};

// Lanes [0, n) of 32.
inline __mmask32 lanes32(int64_t n) { return n >= 32 ? ~__mmask32(0) : (__mmask32(1) << n) - 1; }

// The even and odd channels of 32 float32 values at p (lanes past the group's are zero).
inline void split_floats(const float* p, __mmask32 m, __m512& even, __m512& odd) {
  const __m512 lo = _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p);
  const __m512 hi = _mm512_maskz_loadu_ps(static_cast<__mmask16>(m >> 16), p + 16);
  const __m512i idx_even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i idx_odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  even = _mm512_permutex2var_ps(lo, idx_even, hi);
  odd = _mm512_permutex2var_ps(lo, idx_odd, hi);
}

// 32 bfloat16 values at p, widened: even channels, odd channels.
template <bool FULL>
inline void load(const uint16_t* p, __mmask32 m, __m512& even, __m512& odd) {
  const __m512i v = FULL ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(m, p);
  even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

// The even and odd channels' results rounded to bfloat16 and stored interleaved back at p.
template <bool FULL>
inline void store_bf16(uint16_t* p, __m512 even, __m512 odd, __mmask32 m) {
  const __m512i both = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(odd, even));  // even in 0..15, odd in 16..31
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21,
                                       5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i v = _mm512_permutexvar_epi16(idx, both);
  if (FULL) {
    _mm512_storeu_si512(p, v);
  } else {
    _mm512_mask_storeu_epi16(p, m, v);
  }
}

// PX output pixels of one row and channel group. in[dr] points at the strip's first pixel in the input
// row dr (0: above); pixels are C values apart. LEFT / RIGHT: the strip touches the row's left / right
// end, where the taps that would read outside are skipped (zero padding).
template <int PX, bool LEFT, bool RIGHT, bool FULL>
inline void strip(const uint16_t* const (&in)[3], const Group& g, uint16_t* out, int64_t C) {
  __m512 ae[PX], ao[PX];
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p) {
    ae[p] = g.be;
    ao[p] = g.bo;
  }
#pragma GCC unroll 3
  for (int dr = 0; dr < 3; ++dr) {
#pragma GCC unroll 10
    for (int j = 0; j < PX + 2; ++j) {  // input column j - 1 of the strip, used at once by up to 3 outputs
      if ((LEFT && j == 0) || (RIGHT && j == PX + 1)) continue;
      __m512 xe, xo;
      load<FULL>(in[dr] + (j - 1) * C, g.m, xe, xo);
#pragma GCC unroll 3
      for (int dc = 0; dc < 3; ++dc) {
        const int p = j - dc;
        if (p < 0 || p >= PX) continue;
        ae[p] = _mm512_fmadd_ps(xe, g.we[dr * 3 + dc], ae[p]);
        ao[p] = _mm512_fmadd_ps(xo, g.wo[dr * 3 + dc], ao[p]);
      }
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p)
    store_bf16<FULL>(out + p * C, gemm::avx512::times_leaky_factor(ae[p], ae[p], g.slope),
                     gemm::avx512::times_leaky_factor(ao[p], ao[p], g.slope), g.m);
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
  for (int64_t c0 = 0; c0 < C; c0 += 32) {
    Group g;
    g.m = lanes32(C - c0);
    for (int t = 0; t < 9; ++t) split_floats(wt + t * C + c0, g.m, g.we[t], g.wo[t]);
    if (bias) {
      split_floats(bias + c0, g.m, g.be, g.bo);
    } else {
      g.be = g.bo = _mm512_setzero_ps();
    }
    g.slope = _mm512_set1_ps(slope);
    const bool full = C - c0 >= 32;
    // Down the rows with the group's operands loaded: each input row of this group (W lines of
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
