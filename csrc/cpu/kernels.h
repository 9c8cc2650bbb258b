// CPU inner kernels for depthwise 3x3 (stride 1, padding 1), in plain C++ with no torch headers.
//
// This file is compiled twice: once for the build's baseline ISA (kernels_base.cpp) and once with
// AVX2+FMA enabled (kernels_avx2.cpp), each time inside its own namespace MESRGAN_CPU_NS; the
// dispatcher picks one at run time. Keeping torch's headers out keeps AVX2 code out of torch's inline
// functions, which the linker could otherwise pick for the baseline path.
//
// Vectors are GCC/Clang vector extensions of 32 bytes (8 floats / 4 doubles): one AVX register, or
// two SSE registers on the baseline path.
//  * NCHW: each input row is copied once into a zero-padded row buffer (a ring of three), so that
//    every output vector reads its 9 taps with plain unaligned loads and no edge cases.
//  * NHWC: vectors run across channels; a block of channels keeps its 9 weight vectors in
//    registers while it walks along the row.
//  * Weight gradient: float vector accumulators per tap, flushed into double sums every few rows.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

#include "activation.h"

#ifndef MESRGAN_CPU_NS
#error "define MESRGAN_CPU_NS before including kernels.h"
#endif

namespace mesrgan {
namespace cpu {
namespace MESRGAN_CPU_NS {

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  static constexpr int L = 8;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  static constexpr int L = 4;
};

template <typename V, typename T>
static inline V loadu(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T>
static inline void storeu(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}
template <typename V, typename T>
static inline V splat(T s) {
  return V{} + s;
}

// Comparisons are written so that NaN falls through unchanged, as in F.relu / F.relu6 / F.leaky_relu.
template <typename T, typename V>
static inline V activate(V v, Activation act, T slope) {
  const V zero = V{};
  switch (act) {
    case Activation::ReLU:
      return v < zero ? zero : v;
    case Activation::ReLU6: {
      const V six = splat<V>(T(6));
      v = v < zero ? zero : v;
      return v > six ? six : v;
    }
    case Activation::LeakyReLU:
      return v < zero ? v * slope : v;
    default:
      return v;
  }
}
template <typename T>
static inline T activate_scalar(T v, Activation act, T slope) {
  switch (act) {
    case Activation::ReLU:
      return v < T(0) ? T(0) : v;
    case Activation::ReLU6:
      return v < T(0) ? T(0) : (v > T(6) ? T(6) : v);
    case Activation::LeakyReLU:
      return v < T(0) ? v * slope : v;
    default:
      return v;
  }
}

// Calls f(std::integral_constant<bool, TOP>, std::integral_constant<bool, BOT>) with the row flags
// as compile-time constants, so that the border cases compile to branch-free loop bodies.
template <typename F>
static inline void with_border_rows(bool top, bool bot, F&& f) {
  using Y = std::true_type;
  using N = std::false_type;
  if (top && bot) f(Y{}, Y{});
  else if (top) f(Y{}, N{});
  else if (bot) f(N{}, Y{});
  else f(N{}, N{});
}

// A zero-filled scratch array, 64-byte aligned. Not a standard vector: GCC 13 marks std::allocator's
// members always_inline, and inlining them into functions compiled under `#pragma GCC target` (the
// AVX2 copy of this file) fails with "target specific option mismatch".
template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t n) {
    const size_t bytes = (static_cast<size_t>(n) * sizeof(T) + 63) / 64 * 64;
    p_ = static_cast<T*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64));
    if (p_ == nullptr) throw std::bad_alloc();
    for (int64_t i = 0; i < n; ++i) p_[i] = T{};
  }
  ~Scratch() { std::free(p_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() { return p_; }
  const T* data() const { return p_; }
  T& operator[](int64_t i) { return p_[i]; }

 private:
  T* p_;
};

// One prefetch hint per 64-byte line of [p, p + n elements). A hint past the end of a tensor is
// harmless: prefetches never fault.
template <typename T>
static inline void prefetch_range(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t o = 0; o < n * static_cast<int64_t>(sizeof(T)); o += 64) __builtin_prefetch(c + o, 0, 3);
}

// Software prefetch for a row-by-row stream: the W elements that lie 8 rows past `row` (in whole
// rows: at least one, at most 8 KiB ahead). The hardware prefetchers of the dev VM left these
// streams waiting on memory: with the hints, the NCHW forward and weight gradient of a
// (16, 128, 64, 64) tensor took about 35% less time (8 rows ahead did better than 2 or 4 there).
template <typename T>
static inline void prefetch_ahead(const T* row, int64_t W) {
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(8, 8192 / std::max<int64_t>(1, W * sizeof(T))));
  prefetch_range(row + rows * W, W);
}

// Zero-padded copies of input rows: element 0 is the left padding (x[-1]), 1..W the row, then zeros
// up to a whole number of vectors plus one; and a row of zeros (the padding rows).
template <typename T>
struct PaddedRows {
  int64_t W, stride;
  Scratch<T> buf;  // 4 rows: a ring of 3 and one row of zeros
  PaddedRows(int64_t W_, int L) : W(W_), stride(((W_ + 2 + L - 1) / L + 1) * L), buf(4 * stride) {}
  T* slot(int s) { return buf.data() + s * stride; }
  const T* zeros() const { return buf.data() + 3 * stride; }
  const T* fill(int s, const T* row) {
    std::memcpy(slot(s) + 1, row, sizeof(T) * W);
    return slot(s);
  }
};

// Forward, NCHW-contiguous. Work unit u covers plane u / bands, rows [band*band_rows, ...).
// weight: C*9 (as stored by Conv2d), bias: C or null.
template <typename T>
void fwd_nchw(const T* x, const T* weight, const T* bias, T* y, int64_t C, int64_t H, int64_t W, int64_t band_rows,
              int64_t unit_begin, int64_t unit_end, Activation act, T slope) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L;
  PaddedRows<T> rows(W, L);
  const int64_t bands = (H + band_rows - 1) / band_rows;
  for (int64_t u = unit_begin; u < unit_end; ++u) {
    const int64_t plane = u / bands;
    const int64_t h0 = (u % bands) * band_rows;
    const int64_t h1 = std::min(H, h0 + band_rows);
    const int64_t c = plane % C;
    const T* xp = x + plane * H * W;
    T* yp = y + plane * H * W;
    const T* kp = weight + c * 9;
    V k[9];
    for (int t = 0; t < 9; ++t) k[t] = splat<V>(kp[t]);
    const V b = splat<V>(bias ? bias[c] : T(0));
    // Three independent row sums: a single chain of 9 FMAs would be latency-bound. q* point at
    // the input column left of the first output.
    auto out = [&](const T* q0, const T* q1, const T* q2) {
      const V s0 = k[0] * loadu<V>(q0) + k[1] * loadu<V>(q0 + 1) + k[2] * loadu<V>(q0 + 2);
      const V s1 = k[3] * loadu<V>(q1) + k[4] * loadu<V>(q1 + 1) + k[5] * loadu<V>(q1 + 2);
      const V s2 = k[6] * loadu<V>(q2) + k[7] * loadu<V>(q2 + 1) + k[8] * loadu<V>(q2 + 2);
      return activate<T>((b + s1) + (s0 + s2), act, slope);
    };
    if (W >= L + 2) {
      // Rows are read in place: vectors cover outputs 1 .. W-2 (the last one overlapping its
      // predecessor, rewriting a few outputs with the same values); the two edge outputs, whose
      // windows leave the image, are done in scalar code.
      const T sk[9] = {kp[0], kp[1], kp[2], kp[3], kp[4], kp[5], kp[6], kp[7], kp[8]};
      const T sb = bias ? bias[c] : T(0);
      for (int64_t h = h0; h < h1; ++h) {
        const T* r0 = h > 0 ? xp + (h - 1) * W : rows.zeros();
        const T* r1 = xp + h * W;
        const T* r2 = h + 1 < H ? xp + (h + 1) * W : rows.zeros();
        T* yr = yp + h * W;
        prefetch_ahead(r1, W);
        const int64_t e = W - 1;
        yr[0] = activate_scalar(sb + (sk[1] * r0[0] + sk[2] * r0[1]) + (sk[4] * r1[0] + sk[5] * r1[1]) +
                                    (sk[7] * r2[0] + sk[8] * r2[1]), act, slope);
        yr[e] = activate_scalar(sb + (sk[0] * r0[e - 1] + sk[1] * r0[e]) + (sk[3] * r1[e - 1] + sk[4] * r1[e]) +
                                    (sk[6] * r2[e - 1] + sk[7] * r2[e]), act, slope);
        int64_t w = 1;
        for (; w + L <= e; w += L) storeu(yr + w, out(r0 + w - 1, r1 + w - 1, r2 + w - 1));
        if (w < e) {
          w = e - L;
          storeu(yr + w, out(r0 + w - 1, r1 + w - 1, r2 + w - 1));
        }
      }
      continue;
    }
    // Narrow images: each input row is copied once into a zero-padded ring of three rows.
    int s = 0;  // ring slot of row h
    const T* p0 = h0 > 0 ? rows.fill(2, xp + (h0 - 1) * W) : rows.zeros();
    const T* p1 = rows.fill(s, xp + h0 * W);
    for (int64_t h = h0; h < h1; ++h) {
      const int s2 = (s + 1) % 3;
      const T* p2 = h + 1 < H ? rows.fill(s2, xp + (h + 1) * W) : rows.zeros();
      T* yr = yp + h * W;
      int64_t w = 0;
      for (; w + L <= W; w += L) storeu(yr + w, out(p0 + w, p1 + w, p2 + w));
      if (w < W) {
        T tail[L];
        storeu(tail, out(p0 + w, p1 + w, p2 + w));
        std::memcpy(yr + w, tail, sizeof(T) * (W - w));
      }
      p0 = p1;
      p1 = p2;
      s = s2;
    }
  }
}

// Columns per chunk of an NHWC row: 3 input rows x (chunk + 2) columns x C channels within ~24 KiB.
template <typename T>
static inline int64_t nhwc_chunk_width(int64_t C, int64_t W) {
  const int64_t wt = (24 * 1024) / (3 * C * static_cast<int64_t>(sizeof(T))) - 2;
  return std::min(W, std::max<int64_t>(wt, 4));
}

// One NHWC output position, all channels: the channel loop runs over contiguous memory (x, the
// tap-major weights and y alike), so every load is sequential. r0 / r2 are null at the top / bottom
// border; r* point at the position's column. The last partial block of channels is done as an
// overlapping full block ending at C, which rewrites a few channels with the same values.
template <typename T, bool TOP, bool BOT>
static inline void fwd_nhwc_pos(const T* r0, const T* r1, const T* r2, const T* wt, const T* bias, T* y, int64_t C,
                                bool left, bool right, Activation act, T slope) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L;
  // Per-row partial sums: independent dependency chains. Column taps vanish at the image's edges.
  auto row = [&](const T* r, int i, int64_t c) {
    V s = loadu<V>(wt + (3 * i + 1) * C + c) * loadu<V>(r + c);
    if (left) s += loadu<V>(wt + (3 * i) * C + c) * loadu<V>(r - C + c);
    if (right) s += loadu<V>(wt + (3 * i + 2) * C + c) * loadu<V>(r + C + c);
    return s;
  };
  for (int64_t c0 = 0; c0 < C; c0 += L) {
    const int64_t c = std::min(c0, C - L);
    V acc = (bias ? loadu<V>(bias + c) : V{}) + row(r1, 1, c);
    V outer = V{};
    if (TOP) outer += row(r0, 0, c);
    if (BOT) outer += row(r2, 2, c);
    storeu(y + c, activate<T>(acc + outer, act, slope));
  }
}

// Two NHWC output positions (w, w + 1) in one pass over the channels: the 9 weight vectors of a
// channel block are loaded once for both, and the two windows share 2 of their 4 input columns.
// left: w > 0; right: w + 2 < W.
template <typename T, bool TOP, bool BOT>
static inline void fwd_nhwc_pair(const T* r0, const T* r1, const T* r2, const T* wt, const T* bias, T* y, int64_t C,
                                 bool left, bool right, Activation act, T slope) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L;
  auto row = [&](const T* r, int i, int64_t c, V& s0, V& s1) {
    const V k0 = loadu<V>(wt + (3 * i) * C + c), k1 = loadu<V>(wt + (3 * i + 1) * C + c),
            k2 = loadu<V>(wt + (3 * i + 2) * C + c);
    const V xb = loadu<V>(r + c), xc = loadu<V>(r + C + c);
    s0 = k1 * xb + k2 * xc;
    s1 = k0 * xb + k1 * xc;
    if (left) s0 += k0 * loadu<V>(r - C + c);
    if (right) s1 += k2 * loadu<V>(r + 2 * C + c);
  };
  for (int64_t c0 = 0; c0 < C; c0 += L) {
    const int64_t c = std::min(c0, C - L);
    const V b = bias ? loadu<V>(bias + c) : V{};
    // The bottom row is read here for the first time: fetch it a few positions ahead (the
    // hardware prefetcher alone leaves this loop waiting on memory; perf showed the stall).
    if (BOT) __builtin_prefetch(r2 + 8 * C + c);
    V a0, a1, t0 = V{}, t1 = V{}, u0 = V{}, u1 = V{};
    row(r1, 1, c, a0, a1);
    if (TOP) row(r0, 0, c, t0, t1);
    if (BOT) row(r2, 2, c, u0, u1);
    storeu(y + c, activate<T>((b + a0) + (t0 + u0), act, slope));
    storeu(y + C + c, activate<T>((b + a1) + (t1 + u1), act, slope));
  }
}

// Forward, NHWC-contiguous. Work unit = one output row (n, h). wt: 9*C (tap-major), bias: C or null.
template <typename T>
void fwd_nhwc(const T* x, const T* wt, const T* bias, T* y, int64_t C, int64_t H, int64_t W, int64_t row_begin,
              int64_t row_end, Activation act, T slope) {
  constexpr int L = Vec<T>::L;
  const int64_t rowlen = W * C;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t h = r % H;
    const bool top = h > 0, bot = h + 1 < H;
    const T* r0 = top ? x + (r - 1) * rowlen : nullptr;
    const T* r1 = x + r * rowlen;
    const T* r2 = bot ? x + (r + 1) * rowlen : nullptr;
    T* yr = y + r * rowlen;
    if (C >= L) {
      int64_t w = 0;
      for (; w + 1 < W; w += 2) {
        const int64_t o = w * C;
        const bool left = w > 0, right = w + 2 < W;
        with_border_rows(top, bot, [&](auto tp, auto bt) {
          fwd_nhwc_pair<T, decltype(tp)::value, decltype(bt)::value>(top ? r0 + o : nullptr, r1 + o,
                                                                      bot ? r2 + o : nullptr, wt, bias, yr + o, C,
                                                                      left, right, act, slope);
        });
      }
      for (; w < W; ++w) {  // the last column of an odd width
        const int64_t o = w * C;
        const bool left = w > 0, right = w + 1 < W;
        with_border_rows(top, bot, [&](auto tp, auto bt) {
          fwd_nhwc_pos<T, decltype(tp)::value, decltype(bt)::value>(top ? r0 + o : nullptr, r1 + o,
                                                                     bot ? r2 + o : nullptr, wt, bias, yr + o, C,
                                                                     left, right, act, slope);
        });
      }
      continue;
    }
    const T* rows[3] = {r0, r1, r2};
    for (int64_t w = 0; w < W; ++w) {
      for (int64_t c = 0; c < C; ++c) {
        T acc = bias ? bias[c] : T(0);
        for (int i = 0; i < 3; ++i) {
          if (!rows[i]) continue;
          for (int j = 0; j < 3; ++j) {
            const int64_t ww = w + j - 1;
            if (ww >= 0 && ww < W) acc += rows[i][ww * C + c] * wt[(i * 3 + j) * C + c];
          }
        }
        yr[w * C + c] = activate_scalar(acc, act, slope);
      }
    }
  }
}

template <typename T, typename V>
static inline double hsum(const V& v) {
  double s = 0;
  for (int l = 0; l < Vec<T>::L; ++l) s += static_cast<double>(v[l]);
  return s;
}

// Rows summed in T before the running sums move to double: bounds the float rounding error.
constexpr int64_t kFlushElems = 4096;

// Weight/bias gradient, NCHW-contiguous. For each plane p in [begin, end) writes 10 sums into
// out[p*10 ...]: taps 0..8 (sum over h, w of g[h][w] * x[h+i-1][w+j-1]) then the bias (sum of g).
template <typename T>
void bwdw_nchw(const T* x, const T* g, int64_t H, int64_t W, int64_t plane_begin, int64_t plane_end, double* out) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L;
  PaddedRows<T> rows(W, L);
  // grad_out rows are copied to offset 0 of a zero-padded buffer, so lanes past W contribute nothing.
  Scratch<T> gbuf(rows.stride);
  const int64_t rows_per_flush = std::max<int64_t>(1, kFlushElems / std::max<int64_t>(W, 1));
  for (int64_t p = plane_begin; p < plane_end; ++p) {
    const T* xp = x + p * H * W;
    const T* gp = g + p * H * W;
    double tot[10] = {};
    V acc[10];
    for (auto& a : acc) a = V{};
    int s = 0;
    const T* p0 = rows.zeros();
    const T* p1 = rows.fill(s, xp);
    for (int64_t h = 0; h < H; ++h) {
      const int s2 = (s + 1) % 3;
      const T* p2 = h + 1 < H ? rows.fill(s2, xp + (h + 1) * W) : rows.zeros();
      std::memcpy(gbuf.data(), gp + h * W, sizeof(T) * W);
      prefetch_ahead(xp + h * W, W);
      prefetch_ahead(gp + h * W, W);
      for (int64_t w0 = 0; w0 < W; w0 += L) {
        const V gv = loadu<V>(gbuf.data() + w0);
        acc[0] += gv * loadu<V>(p0 + w0);
        acc[1] += gv * loadu<V>(p0 + w0 + 1);
        acc[2] += gv * loadu<V>(p0 + w0 + 2);
        acc[3] += gv * loadu<V>(p1 + w0);
        acc[4] += gv * loadu<V>(p1 + w0 + 1);
        acc[5] += gv * loadu<V>(p1 + w0 + 2);
        acc[6] += gv * loadu<V>(p2 + w0);
        acc[7] += gv * loadu<V>(p2 + w0 + 1);
        acc[8] += gv * loadu<V>(p2 + w0 + 2);
        acc[9] += gv;
      }
      if ((h + 1) % rows_per_flush == 0 || h + 1 == H) {
        for (int t = 0; t < 10; ++t) {
          tot[t] += hsum<T>(acc[t]);
          acc[t] = V{};
        }
      }
      p0 = p1;
      p1 = p2;
      s = s2;
    }
    for (int t = 0; t < 10; ++t) out[p * 10 + t] = tot[t];
  }
}

// One channel block of one NHWC row for the weight gradient; acc holds 10 vectors (9 taps, bias).
// mask zeroes the lanes an overlapping last block shares with the block before it.
template <typename T, bool TOP, bool BOT>
static inline void bwdw_nhwc_block(const T* r0, const T* r1, const T* r2, const T* gr, typename Vec<T>::type mask,
                                   typename Vec<T>::type* acc_out, int64_t w_begin, int64_t w_end, int64_t W,
                                   int64_t C) {
  using V = typename Vec<T>::type;
  V acc[10];  // a local copy the compiler can keep in registers (acc_out may alias the inputs for all it knows)
  for (int t = 0; t < 10; ++t) acc[t] = acc_out[t];
  for (int64_t w = w_begin; w < w_end; ++w) {
    const int64_t o = w * C;
    const V gv = loadu<V>(gr + o) * mask;
    const bool left = w > 0, right = w + 1 < W;
    if (TOP) {
      if (left) acc[0] += gv * loadu<V>(r0 + o - C);
      acc[1] += gv * loadu<V>(r0 + o);
      if (right) acc[2] += gv * loadu<V>(r0 + o + C);
    }
    if (left) acc[3] += gv * loadu<V>(r1 + o - C);
    acc[4] += gv * loadu<V>(r1 + o);
    if (right) acc[5] += gv * loadu<V>(r1 + o + C);
    if (BOT) {
      if (left) acc[6] += gv * loadu<V>(r2 + o - C);
      acc[7] += gv * loadu<V>(r2 + o);
      if (right) acc[8] += gv * loadu<V>(r2 + o + C);
    }
    acc[9] += gv;
  }
  for (int t = 0; t < 10; ++t) acc_out[t] = acc[t];
}

// Weight/bias gradient, NHWC-contiguous, for rows (n, h) in [row_begin, row_end). Adds into
// out[t * C + c] (t = 0..8 taps, 9 = bias), a double buffer owned by the caller.
template <typename T>
void bwdw_nhwc(const T* x, const T* g, int64_t C, int64_t H, int64_t W, int64_t row_begin, int64_t row_end,
               double* out) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L;
  const int64_t rowlen = W * C;
  if (C < L) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      const int64_t h = r % H;
      for (int i = 0; i < 3; ++i) {
        if (h + i - 1 < 0 || h + i - 1 >= H) continue;
        const T* xr = x + (r + i - 1) * rowlen;
        for (int j = 0; j < 3; ++j)
          for (int64_t c = 0; c < C; ++c) {
            T s = T(0);
            for (int64_t w = std::max<int64_t>(0, 1 - j); w < std::min(W, W + 1 - j); ++w)
              s += g[r * rowlen + w * C + c] * xr[(w + j - 1) * C + c];
            out[(i * 3 + j) * C + c] += s;
          }
      }
      for (int64_t c = 0; c < C; ++c) {
        T s = T(0);
        for (int64_t w = 0; w < W; ++w) s += g[r * rowlen + w * C + c];
        out[9 * C + c] += s;
      }
    }
    return;
  }
  const int64_t nblocks = (C + L - 1) / L;
  Scratch<V> acc(10 * nblocks);
  const int64_t rows_per_flush = std::max<int64_t>(1, kFlushElems / std::max<int64_t>(W, 1));
  auto flush = [&] {
    for (int64_t bi = 0; bi < nblocks; ++bi) {
      const int64_t cb = std::min(bi * L, C - L);
      for (int t = 0; t < 10; ++t) {
        V& a = acc[bi * 10 + t];
        for (int l = 0; l < L; ++l) out[t * C + cb + l] += static_cast<double>(a[l]);
        a = V{};
      }
    }
  };
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t h = r % H;
    const bool top = h > 0, bot = h + 1 < H;
    const T* r0 = top ? x + (r - 1) * rowlen : nullptr;
    const T* r1 = x + r * rowlen;
    const T* r2 = bot ? x + (r + 1) * rowlen : nullptr;
    const T* gr = g + r * rowlen;
    const int64_t chunk = nhwc_chunk_width<T>(C, W);
    for (int64_t w0 = 0; w0 < W; w0 += chunk) {
      const int64_t w1 = std::min(W, w0 + chunk);
      // The same columns one row further on, first read in the next row: x's bottom row and
      // grad_out (on the dev VM this took the (16, 128, 64, 64) weight gradient from 7.3 to 6.0 ms).
      prefetch_range(x + (r + 2) * rowlen + w0 * C, (w1 - w0) * C);
      prefetch_range(g + (r + 1) * rowlen + w0 * C, (w1 - w0) * C);
      for (int64_t bi = 0; bi < nblocks; ++bi) {
        const int64_t c0 = bi * L, cb = std::min(c0, C - L);
        V mask;
        for (int l = 0; l < L; ++l) mask[l] = cb + l >= c0 ? T(1) : T(0);
        V* a = acc.data() + bi * 10;
        with_border_rows(top, bot, [&](auto tp, auto bt) {
          bwdw_nhwc_block<T, decltype(tp)::value, decltype(bt)::value>(top ? r0 + cb : nullptr, r1 + cb,
                                                                        bot ? r2 + cb : nullptr, gr + cb, mask, a,
                                                                        w0, w1, W, C);
        });
      }
    }
    if ((r - row_begin + 1) % rows_per_flush == 0) flush();
  }
  flush();
}

// Activation backward on [begin, end): r = g * slope of the activation at y, with vector selects
// (a branch on the random signs of y would be mispredicted half the time).
template <typename T>
void act_bwd(const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ r, int64_t begin, int64_t end,
             Activation act, T slope) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L;
  if (act == Activation::None) {
    std::memcpy(r + begin, g + begin, sizeof(T) * (end - begin));
    return;
  }
  const V zero = V{}, six = splat<V>(T(6)), slope_v = splat<V>(slope);
  // Selects, not products, outside the active region: a NaN gradient there becomes 0, as in torch.
  auto grad_at = [&](V gv, V yv) {
    const V off = act == Activation::LeakyReLU ? gv * slope_v : zero;
    V out = yv > zero ? gv : off;
    if (act == Activation::ReLU6) out = yv < six ? out : zero;
    return out;
  };
  int64_t i = begin;
  for (; i + L <= end; i += L) storeu(r + i, grad_at(loadu<V>(g + i), loadu<V>(y + i)));
  if (i < end) {
    T gt[L] = {}, yt[L] = {}, rt[L];
    std::memcpy(gt, g + i, sizeof(T) * (end - i));
    std::memcpy(yt, y + i, sizeof(T) * (end - i));
    storeu(rt, grad_at(loadu<V>(gt), loadu<V>(yt)));
    std::memcpy(r + i, rt, sizeof(T) * (end - i));
  }
}

#define MESRGAN_INSTANTIATE(T)                                                                                      \
  template void fwd_nchw<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, \
                            Activation, T);                                                                         \
  template void fwd_nhwc<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t,          \
                            Activation, T);                                                                         \
  template void bwdw_nchw<T>(const T*, const T*, int64_t, int64_t, int64_t, int64_t, double*);                      \
  template void bwdw_nhwc<T>(const T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t, double*);             \
  template void act_bwd<T>(const T*, const T*, T*, int64_t, int64_t, Activation, T);

MESRGAN_INSTANTIATE(float)
MESRGAN_INSTANTIATE(double)
#undef MESRGAN_INSTANTIATE

}  // namespace MESRGAN_CPU_NS
}  // namespace cpu
}  // namespace mesrgan
