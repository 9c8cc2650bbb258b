// Tile kernels of the fused bottleneck block (cpu/bottleneck_block_cpu.h), in plain C++ with no
// torch headers, on channels-last tiles that sit in L1/L2: rows of W pixels, C channels per pixel,
// channel index fastest. The two 1x1 convolutions of the block are GEMMs (cpu/gemm.h: our AVX2 /
// AVX-512 kernels, or BLAS); these are the pieces between them: the depthwise 3x3 on a band of rows, its two backward halves, and the
// bias / LeakyReLU epilogues.
//
// Compiled once per instruction set (bottleneck_tiles_{base,avx2,avx512}.cpp), each time inside its
// own namespace MESRGAN_CPU_NS, like kernels.h; the channel loops are written so that the compiler
// vectorises them, and a block of kCB channels is accumulated in a local array that stays in
// registers across the nine taps.
#include <cstdint>

#ifndef MESRGAN_CPU_NS
#error "define MESRGAN_CPU_NS before including bottleneck_tiles.h"
#endif

namespace mesrgan {
namespace cpu {
namespace MESRGAN_CPU_NS {
namespace tiles {

constexpr int64_t kCB = 64;  // channels accumulated together (4 AVX-512 / 8 AVX2 registers of floats)

template <typename T>
static inline T leaky(T v, T slope) {
  return v > T(0) ? v : v * slope;
}

// A full block of kCB channels: the trip counts are compile-time constants and the column tests sit
// outside the channel loops, so the compiler keeps acc in vector registers across the nine taps.
template <typename T>
static inline void dw_full_block(const T* const rows[3], const T* __restrict wt, const T* __restrict bias,
                                 T* __restrict out, bool left, bool right, int64_t C, T slope) {
  T acc[kCB];
  for (int64_t c = 0; c < kCB; ++c) acc[c] = bias ? bias[c] : T(0);
  for (int dr = 0; dr < 3; ++dr) {
    const T* __restrict r = rows[dr];
    const T* __restrict wk = wt + dr * 3 * C;
    if (left)
      for (int64_t c = 0; c < kCB; ++c) acc[c] += r[c - C] * wk[c];
    for (int64_t c = 0; c < kCB; ++c) acc[c] += r[c] * wk[C + c];
    if (right)
      for (int64_t c = 0; c < kCB; ++c) acc[c] += r[c + C] * wk[2 * C + c];
  }
  for (int64_t c = 0; c < kCB; ++c) out[c] = leaky(acc[c], slope);
}

// One channel block [c0, c0 + n) of one output pixel: acc = bias + sum over the taps whose column is
// inside the row, then LeakyReLU. rows[3] point at the pixel's column in the rows above, at and below.
template <typename T>
static inline void dw_pixel_block(const T* const rows[3], const T* __restrict wt, const T* __restrict bias,
                                  T* __restrict out, int64_t w, int64_t W, int64_t C, int64_t n, T slope) {
  if (n == kCB) {
    dw_full_block(rows, wt, bias, out, w > 0, w + 1 < W, C, slope);
    return;
  }
  T acc[kCB];
  for (int64_t c = 0; c < n; ++c) acc[c] = bias ? bias[c] : T(0);
  for (int dr = 0; dr < 3; ++dr) {
    for (int dc = 0; dc < 3; ++dc) {
      const int64_t ww = w + dc - 1;
      if (ww < 0 || ww >= W) continue;
      const T* __restrict src = rows[dr] + (dc - 1) * C;
      const T* __restrict wk = wt + (dr * 3 + dc) * C;
      for (int64_t c = 0; c < n; ++c) acc[c] += src[c] * wk[c];
    }
  }
  for (int64_t c = 0; c < n; ++c) out[c] = leaky(acc[c], slope);
}

// In place: g[i] *= LeakyReLU'(y[i]) with the slope read from y's sign, over n values.
template <typename T>
void leaky_mask(T* g, const T* y, int64_t n, T slope) {
  for (int64_t i = 0; i < n; ++i) g[i] = y[i] > T(0) ? g[i] : g[i] * slope;
}

// h2 rows [0, rows) = LeakyReLU(bias + depthwise 3x3 of h1), zero padding left and right.
// h1 points at the row above output row 0 (rows + 2 rows, zero rows where outside the image);
// wt is tap-major (9, C).
template <typename T>
void dw_forward(const T* h1, const T* wt, const T* bias, T* h2, int64_t rows, int64_t W, int64_t C, T slope) {
  const int64_t row = W * C;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t w = 0; w < W; ++w) {
      for (int64_t c0 = 0; c0 < C; c0 += kCB) {
        const int64_t n = C - c0 < kCB ? C - c0 : kCB;
        const int64_t at = w * C + c0;
        const T* in[3] = {h1 + r * row + at, h1 + (r + 1) * row + at, h1 + (r + 2) * row + at};
        dw_pixel_block(in, wt + c0, bias ? bias + c0 : nullptr, h2 + r * row + at, w, W, C, n, slope);
      }
    }
  }
}

// grad of the depthwise input, rows [0, rows): the depthwise 3x3 of g2 with each kernel rotated 180°,
// times LeakyReLU's slope at h1 (the depthwise input, post-activation: its sign is the
// pre-activation's for slope >= 0). g2 points at the row above output row 0 (rows + 2 rows);
// wt_rot is the rotated tap-major (9, C) weight.
template <typename T>
void dw_backward_input(const T* g2, const T* wt_rot, const T* h1, T* g1, int64_t rows, int64_t W, int64_t C,
                       T slope) {
  // The forward's kernel with no bias and slope 1 (no activation), then the mask of h1's activation.
  dw_forward(g2, wt_rot, static_cast<const T*>(nullptr), g1, rows, W, C, T(1));
  leaky_mask(g1, h1, rows * W * C, slope);
}

// Depthwise weight and bias gradients of rows [0, rows): gw (9, C) += sum over pixels of
// g2[r][w] * h1[r + dr - 1][w + dc - 1] per tap, gb (C) += sum of g2. h1 points at the row above
// row 0 (rows + 2 rows).
template <typename T>
void dw_backward_weight(const T* h1, const T* g2, T* gw, T* gb, int64_t rows, int64_t W, int64_t C) {
  const int64_t row = W * C;
  for (int64_t c0 = 0; c0 < C; c0 += kCB) {
    const int64_t n = C - c0 < kCB ? C - c0 : kCB;
    T acc[10][kCB];
    for (int k = 0; k < 10; ++k)
      for (int64_t c = 0; c < n; ++c) acc[k][c] = T(0);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t w = 0; w < W; ++w) {
        const T* __restrict g = g2 + r * row + w * C + c0;
        for (int64_t c = 0; c < n; ++c) acc[9][c] += g[c];
        for (int dr = 0; dr < 3; ++dr) {
          for (int dc = 0; dc < 3; ++dc) {
            const int64_t ww = w + dc - 1;
            if (ww < 0 || ww >= W) continue;
            const T* __restrict src = h1 + (r + dr) * row + ww * C + c0;
            T* __restrict a = acc[dr * 3 + dc];
            for (int64_t c = 0; c < n; ++c) a[c] += g[c] * src[c];
          }
        }
      }
    }
    for (int k = 0; k < 9; ++k)
      for (int64_t c = 0; c < n; ++c) gw[k * C + c0 + c] += acc[k][c];
    for (int64_t c = 0; c < n; ++c) gb[c0 + c] += acc[9][c];
  }
}

// In place on P pixels of C channels, ld elements apart: x = LeakyReLU(x + bias) (bias may be null).
template <typename T>
void bias_leaky(T* x, int64_t ld, const T* bias, int64_t P, int64_t C, T slope) {
  for (int64_t p = 0; p < P; ++p) {
    T* __restrict v = x + p * ld;
    if (bias) {
      for (int64_t c = 0; c < C; ++c) v[c] = leaky(v[c] + bias[c], slope);
    } else {
      for (int64_t c = 0; c < C; ++c) v[c] = leaky(v[c], slope);
    }
  }
}

// In place on P pixels of C channels, ld elements apart: y += bias (may be null) + skip (may be null;
// its pixels ld_skip apart).
template <typename T>
void add_bias_skip(T* y, int64_t ld, const T* bias, const T* skip, int64_t ld_skip, int64_t P, int64_t C) {
  for (int64_t p = 0; p < P; ++p) {
    T* __restrict v = y + p * ld;
    if (bias)
      for (int64_t c = 0; c < C; ++c) v[c] += bias[c];
    if (skip) {
      const T* __restrict s = skip + p * ld_skip;
      for (int64_t c = 0; c < C; ++c) v[c] += s[c];
    }
  }
}

// out (C) += the sum over P pixels of g (P pixels of C channels, ld elements apart).
template <typename T>
void column_sum(const T* g, int64_t ld, int64_t P, int64_t C, T* out) {
  for (int64_t p = 0; p < P; ++p) {
    const T* __restrict v = g + p * ld;
    for (int64_t c = 0; c < C; ++c) out[c] += v[c];
  }
}

#define MESRGAN_TILES_INSTANTIATE(T)                                                                       \
  template void dw_forward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, T);             \
  template void dw_backward_input<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, T);      \
  template void dw_backward_weight<T>(const T*, const T*, T*, T*, int64_t, int64_t, int64_t);              \
  template void bias_leaky<T>(T*, int64_t, const T*, int64_t, int64_t, T);                                 \
  template void add_bias_skip<T>(T*, int64_t, const T*, const T*, int64_t, int64_t, int64_t);              \
  template void leaky_mask<T>(T*, const T*, int64_t, T);                                                   \
  template void column_sum<T>(const T*, int64_t, int64_t, int64_t, T*);
MESRGAN_TILES_INSTANTIATE(float)
MESRGAN_TILES_INSTANTIATE(double)
#undef MESRGAN_TILES_INSTANTIATE

}  // namespace tiles
}  // namespace MESRGAN_CPU_NS
}  // namespace cpu
}  // namespace mesrgan
