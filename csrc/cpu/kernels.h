// CPU inner kernels for depthwise 3x3 (stride 1, padding 1), in plain C++ with no torch headers.
//
// This file is compiled twice: once for the baseline ISA (kernels_base.cpp) and once with AVX2+FMA
// enabled (kernels_avx2.cpp), each time inside its own namespace MESRGAN_CPU_NS, and the dispatcher
// picks one at run time. Keeping torch's headers out of it keeps AVX2 code out of torch's inline
// functions (which the linker could otherwise pick for the baseline path).
//
// The loops are written so that the compiler vectorises them: NCHW forward works one output row at
// a time with restrict pointers to three input rows; NHWC works on blocks of channels held in a
// small accumulator array; the weight gradient uses multi-lane dot products.
#include <algorithm>
#include <cstdint>
#include <cstring>

#ifndef MESRGAN_CPU_NS
#error "define MESRGAN_CPU_NS before including kernels.h"
#endif

#define MESRGAN_RESTRICT __restrict__

namespace mesrgan {
namespace cpu {
namespace MESRGAN_CPU_NS {

// act: 0 none, 1 relu, 2 relu6, 3 leaky_relu (matches mesrgan::Activation). Written with `<` so
// that a NaN falls through unchanged, as it does in F.relu / F.hardtanh / F.leaky_relu.
template <typename T>
static inline void apply_activation(T* MESRGAN_RESTRICT y, int64_t n, int act, T slope) {
  switch (act) {
    case 1:
      for (int64_t i = 0; i < n; ++i) y[i] = y[i] < T(0) ? T(0) : y[i];
      break;
    case 2:
      for (int64_t i = 0; i < n; ++i) y[i] = y[i] < T(0) ? T(0) : (y[i] > T(6) ? T(6) : y[i]);
      break;
    case 3:
      for (int64_t i = 0; i < n; ++i) y[i] = y[i] < T(0) ? y[i] * slope : y[i];
      break;
    default:
      break;
  }
}

// One output row of an NCHW plane. r0/r2 may be a row of zeros (padding rows).
template <typename T>
static inline void fwd_row(const T* MESRGAN_RESTRICT r0, const T* MESRGAN_RESTRICT r1, const T* MESRGAN_RESTRICT r2,
                           const T* k, T b, T* MESRGAN_RESTRICT y, int64_t W) {
  const T k0 = k[0], k1 = k[1], k2 = k[2], k3 = k[3], k4 = k[4], k5 = k[5], k6 = k[6], k7 = k[7], k8 = k[8];
  if (W == 1) {
    y[0] = b + k1 * r0[0] + k4 * r1[0] + k7 * r2[0];
    return;
  }
  y[0] = b + (k1 * r0[0] + k2 * r0[1]) + (k4 * r1[0] + k5 * r1[1]) + (k7 * r2[0] + k8 * r2[1]);
  for (int64_t w = 1; w < W - 1; ++w) {
    y[w] = b + (k0 * r0[w - 1] + k1 * r0[w] + k2 * r0[w + 1]) + (k3 * r1[w - 1] + k4 * r1[w] + k5 * r1[w + 1]) +
           (k6 * r2[w - 1] + k7 * r2[w] + k8 * r2[w + 1]);
  }
  const int64_t e = W - 1;
  y[e] = b + (k0 * r0[e - 1] + k1 * r0[e]) + (k3 * r1[e - 1] + k4 * r1[e]) + (k6 * r2[e - 1] + k7 * r2[e]);
}

// Forward, NCHW-contiguous. Work unit u covers plane u / bands, rows [band*band_rows, ...).
// weight: C*9 (as stored by Conv2d), bias: C or null, zeros: W zeros (the padding rows).
template <typename T>
void fwd_nchw(const T* x, const T* weight, const T* bias, T* y, int64_t C, int64_t H, int64_t W, int64_t band_rows,
              int64_t unit_begin, int64_t unit_end, int act, T slope, const T* zeros) {
  const int64_t bands = (H + band_rows - 1) / band_rows;
  const int64_t plane_size = H * W;
  for (int64_t u = unit_begin; u < unit_end; ++u) {
    const int64_t plane = u / bands;
    const int64_t h0 = (u % bands) * band_rows;
    const int64_t h1 = std::min(H, h0 + band_rows);
    const int64_t c = plane % C;
    const T* xp = x + plane * plane_size;
    T* yp = y + plane * plane_size;
    const T* k = weight + c * 9;
    const T b = bias ? bias[c] : T(0);
    for (int64_t h = h0; h < h1; ++h) {
      const T* r0 = h > 0 ? xp + (h - 1) * W : zeros;
      const T* r2 = h + 1 < H ? xp + (h + 1) * W : zeros;
      T* yr = yp + h * W;
      fwd_row(r0, xp + h * W, r2, k, b, yr, W);
      apply_activation(yr, W, act, slope);
    }
  }
}

// Forward, NHWC-contiguous. Work unit = one output row (n, h). wt: 9*C (tap-major), bias: C or null.
template <typename T>
void fwd_nhwc(const T* x, const T* wt, const T* bias, T* y, int64_t C, int64_t H, int64_t W, int64_t row_begin,
              int64_t row_end, int act, T slope) {
  constexpr int64_t CB = 32;
  const int64_t rowlen = W * C;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t h = r % H;
    const T* xrow[3] = {h > 0 ? x + (r - 1) * rowlen : nullptr, x + r * rowlen,
                        h + 1 < H ? x + (r + 1) * rowlen : nullptr};
    T* yrow = y + r * rowlen;
    for (int64_t w = 0; w < W; ++w) {
      T* MESRGAN_RESTRICT yw = yrow + w * C;
      int64_t c0 = 0;
      for (; c0 + CB <= C; c0 += CB) {
        T acc[CB];
        for (int l = 0; l < CB; ++l) acc[l] = bias ? bias[c0 + l] : T(0);
        for (int i = 0; i < 3; ++i) {
          if (!xrow[i]) continue;
          for (int j = 0; j < 3; ++j) {
            const int64_t ww = w + j - 1;
            if (ww < 0 || ww >= W) continue;
            const T* MESRGAN_RESTRICT xv = xrow[i] + ww * C + c0;
            const T* MESRGAN_RESTRICT kv = wt + (i * 3 + j) * C + c0;
            for (int l = 0; l < CB; ++l) acc[l] += xv[l] * kv[l];
          }
        }
        for (int l = 0; l < CB; ++l) yw[c0 + l] = acc[l];
      }
      for (int64_t c = c0; c < C; ++c) {
        T acc = bias ? bias[c] : T(0);
        for (int i = 0; i < 3; ++i) {
          if (!xrow[i]) continue;
          for (int j = 0; j < 3; ++j) {
            const int64_t ww = w + j - 1;
            if (ww < 0 || ww >= W) continue;
            acc += xrow[i][ww * C + c] * wt[(i * 3 + j) * C + c];
          }
        }
        yw[c] = acc;
      }
    }
    apply_activation(yrow, rowlen, act, slope);
  }
}

template <typename T>
static inline T dot(const T* MESRGAN_RESTRICT a, const T* MESRGAN_RESTRICT b, int64_t n) {
  constexpr int L = 16;
  T lanes[L] = {};
  int64_t k = 0;
  for (; k + L <= n; k += L)
    for (int l = 0; l < L; ++l) lanes[l] += a[k + l] * b[k + l];
  T s = T(0);
  for (; k < n; ++k) s += a[k] * b[k];
  for (int l = 0; l < L; ++l) s += lanes[l];
  return s;
}

template <typename T>
static inline T sum(const T* MESRGAN_RESTRICT a, int64_t n) {
  constexpr int L = 16;
  T lanes[L] = {};
  int64_t k = 0;
  for (; k + L <= n; k += L)
    for (int l = 0; l < L; ++l) lanes[l] += a[k + l];
  T s = T(0);
  for (; k < n; ++k) s += a[k];
  for (int l = 0; l < L; ++l) s += lanes[l];
  return s;
}

// Weight/bias gradient, NCHW-contiguous. For each plane p in [begin, end) writes 10 sums into
// out[p*10 ...]: taps 0..8 (sum over h, w of g[h][w] * x[h+i-1][w+j-1]) then the bias (sum of g).
// Row sums are taken in T, plane totals in double.
template <typename T>
void bwdw_nchw(const T* x, const T* g, int64_t H, int64_t W, int64_t plane_begin, int64_t plane_end, double* out) {
  for (int64_t p = plane_begin; p < plane_end; ++p) {
    const T* xp = x + p * H * W;
    const T* gp = g + p * H * W;
    double acc[10] = {};
    for (int64_t h = 0; h < H; ++h) {
      const T* gr = gp + h * W;
      for (int i = 0; i < 3; ++i) {
        const int64_t hh = h + i - 1;
        if (hh < 0 || hh >= H) continue;
        const T* xr = xp + hh * W;
        // tap j reads x[w + j - 1]: j = 0 -> w in [1, W); j = 1 -> [0, W); j = 2 -> [0, W - 1).
        if (W > 1) acc[i * 3 + 0] += dot(gr + 1, xr, W - 1);
        acc[i * 3 + 1] += dot(gr, xr, W);
        if (W > 1) acc[i * 3 + 2] += dot(gr, xr + 1, W - 1);
      }
      acc[9] += sum(gr, W);
    }
    for (int t = 0; t < 10; ++t) out[p * 10 + t] = acc[t];
  }
}

// Weight/bias gradient, NHWC-contiguous, for rows (n, h) in [row_begin, row_end). Adds into
// out[t * C + c] (t = 0..8 taps, 9 = bias), a double buffer owned by the caller. rowacc: 10*C scratch.
template <typename T>
void bwdw_nhwc(const T* x, const T* g, int64_t C, int64_t H, int64_t W, int64_t row_begin, int64_t row_end,
               double* out, T* rowacc) {
  const int64_t rowlen = W * C;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t h = r % H;
    std::fill(rowacc, rowacc + 10 * C, T(0));
    const T* grow = g + r * rowlen;
    for (int i = 0; i < 3; ++i) {
      const int64_t hh = h + i - 1;
      if (hh < 0 || hh >= H) continue;
      const T* xrow = x + (r + i - 1) * rowlen;
      for (int j = 0; j < 3; ++j) {
        T* MESRGAN_RESTRICT acc = rowacc + (i * 3 + j) * C;
        const int64_t w_lo = j == 0 ? 1 : 0, w_hi = j == 2 ? W - 1 : W;
        for (int64_t w = w_lo; w < w_hi; ++w) {
          const T* MESRGAN_RESTRICT gv = grow + w * C;
          const T* MESRGAN_RESTRICT xv = xrow + (w + j - 1) * C;
          for (int64_t c = 0; c < C; ++c) acc[c] += gv[c] * xv[c];
        }
      }
    }
    T* MESRGAN_RESTRICT bacc = rowacc + 9 * C;
    for (int64_t w = 0; w < W; ++w) {
      const T* MESRGAN_RESTRICT gv = grow + w * C;
      for (int64_t c = 0; c < C; ++c) bacc[c] += gv[c];
    }
    for (int64_t q = 0; q < 10 * C; ++q) out[q] += static_cast<double>(rowacc[q]);
  }
}

#define MESRGAN_INSTANTIATE(T)                                                                                      \
  template void fwd_nchw<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, \
                            int, T, const T*);                                                                      \
  template void fwd_nhwc<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, int, T); \
  template void bwdw_nchw<T>(const T*, const T*, int64_t, int64_t, int64_t, int64_t, double*);                      \
  template void bwdw_nhwc<T>(const T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t, double*, T*);

MESRGAN_INSTANTIATE(float)
MESRGAN_INSTANTIATE(double)
#undef MESRGAN_INSTANTIATE

}  // namespace MESRGAN_CPU_NS
}  // namespace cpu
}  // namespace mesrgan
