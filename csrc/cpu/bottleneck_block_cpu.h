// The CPU backend of the fused bottleneck block, channels-last inside: the pieces its forward
// (bottleneck_forward.cpp) and backward (bottleneck_backward.cpp) share.
//
// The work is cut into chunks of rows of one image. A chunk walks down its rows a band of R rows at a
// time and keeps a window of hidden rows (the band plus its halo) in L2-sized scratch:
//   forward : h1 = LeakyReLU(x W1^T + b1) for the band's rows and one halo row above and below,
//             h2 = LeakyReLU(depthwise(h1) + bd), y = h2 W2^T + b2 (+ x).
// Moving to the next band keeps the halo rows already computed (a ring, in effect), so within a
// chunk every hidden row is computed once; only chunk edges compute their halo twice. The hidden
// tensor never exists at full size.
//   backward: recomputes h1 (two halo rows each side) and h2 (one) the same way, then
//             g2 = (dy W2) * act'(h2), g1 = depthwise^T(g2) * act'(h1), dx = g1 W1 (+ dy),
//             and accumulates dW2 += dy^T h2, dW1 += g1^T x, the depthwise and bias gradients.
// The 1x1 convolutions are GEMMs on the band: in float32 our own kernel at the tiles' width
// (gemm.h: AVX2 or AVX-512, with the bias / LeakyReLU / skip / mask folded into its stores),
// except on Intel CPUs with AVX-512 and in float64: ATen's BLAS there (MKL: about 70-85 GMAC/s per
// core on an AVX-512 Xeon at these sizes, but about 25 on AMD EPYCs, where it does not use AVX-512)
// followed by a tile pass for the epilogue. The depthwise and the epilogues are our tile kernels
// (bottleneck_tiles.h), compiled per ISA and picked at run time (dispatch.h).
// Weight gradients go to a few partial sums (one per group of chunks) whose number depends on the
// shape only, summed in a fixed order: the backward is deterministic whatever the thread count.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/gemm.h"

namespace mesrgan {
namespace cpu {
namespace bottleneck {

struct Dims {
  int64_t N, H, W, c_in, hidden, c_out;
  int64_t row_h() const { return W * hidden; }  // elements of one hidden row
};

// Rows per band: about `pixels` pixels, so that a band's GEMMs are large enough to run at full speed
// while its hidden rows stay in L2.
inline int64_t band_rows(const Dims& d, int64_t pixels) { return std::max<int64_t>(1, std::min(d.H, pixels / d.W)); }

// The forward's chunks per image for bands of R rows: enough chunks for every thread, each of at
// least two bands so that halo rows stay few.
inline int64_t forward_chunks_per_image(const Dims& d, int64_t R, int64_t threads) {
  return std::max<int64_t>(1, std::min((2 * threads + d.N - 1) / d.N, d.H / (2 * R)));
}

// Per-thread scratch that outlives the call: a fresh allocation of this size per call would be
// served by mmap and cost a page fault per page.
template <typename T>
T* scratch(size_t elements) {
  thread_local std::vector<char> buffer;
  const size_t bytes = elements * sizeof(T) + 64;
  if (buffer.size() < bytes) buffer.resize(bytes);
  const uintptr_t p = reinterpret_cast<uintptr_t>(buffer.data());
  return reinterpret_cast<T*>((p + 63) & ~uintptr_t(63));
}

// A row-major (rows x cols) matrix view of raw memory with leading dimension ld.
template <typename T>
at::Tensor mat(const T* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

using OwnB = cpu::gemm::BMatrix;
template <typename T>
using Epilogue = cpu::gemm::Epilogue<T>;

// Our kernel's packed copies of the 1x1 weights as the four GEMMs read them (float32 only).
struct OwnWeights {
  OwnB expand, project, project_t, expand_t;
};

// One call's block: its operands as the kernels read them, the kernels that run, and the band-level
// steps the forward and the backward share.
template <typename T>
struct Block {
  Dims d;
  const T* x;      // (N, H, W, c_in), its pixels ld_x elements apart (ld_x > c_in: a channel slice)
  int64_t ld_x;
  const T* w1;     // (hidden, c_in)
  const T* b1;     // (hidden) or null
  const T* wt;     // depthwise weight, tap-major (9, hidden)
  const T* wt_rot; // the same rotated 180° (backward only)
  const T* bd;     // (hidden) or null
  const T* w2;     // (c_out, hidden)
  const T* b2;     // (c_out) or null
  bool skip;
  T slope;
  cpu::TileKernels<T> fn;
  cpu::gemm::Kernel own_gemm;  // float32 only: our GEMM (AVX2 or AVX-512), or null for BLAS
  OwnWeights own;

  const T* x_row(int64_t n, int64_t r) const { return x + (n * d.H + r) * d.W * ld_x; }

  // A row-major K x N matrix with row stride ld as our kernel reads B (float32 only; unused otherwise).
  static OwnB own_rows(const T* p, int64_t ld) {
    if constexpr (std::is_same_v<T, float>) return OwnB{p, ld, cpu::gemm::kNR};
    return OwnB{};
  }

  // C (M x N, row stride ldc) = A . B then the epilogue ep, with the block's LeakyReLU slope. A's
  // element (i, k) is A[i * a_rs + k * a_cs] with a_rs or a_cs 1; B is given as a tensor view for
  // BLAS and as our kernel's BMatrix. A mask has C's layout, and C is dense when there is one.
  void matmul(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_rs, int64_t a_cs, const at::Tensor& b_view,
              const OwnB& b_own, T* C, int64_t ldc, Epilogue<T> ep) const {
    ep.slope = slope;
    if constexpr (std::is_same_v<T, float>) {
      if (own_gemm) {
        own_gemm(M, N, K, A, a_rs, a_cs, b_own, C, ldc, ep);
        return;
      }
    }
    at::Tensor a = at::from_blob(const_cast<T*>(A), {M, K}, {a_rs, a_cs},
                                 at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
    at::Tensor c = mat(C, M, N, ldc);
    if (ep.accumulate) {
      c.addmm_(a, b_view);
    } else {
      at::mm_out(c, a, b_view);
    }
    if (ep.leaky) {
      fn.bias_leaky(C, ldc, ep.bias, M, N, slope);  // no caller has both a LeakyReLU and an add
    } else if (ep.bias || ep.add) {
      fn.add_bias_skip(C, ldc, ep.bias, ep.add, ep.ld_add, M, N);
    }
    if (ep.mask) fn.leaky_mask(C, ep.mask, M * N, slope);  // C dense here (ldc == N)
  }

  // h1 for image rows [lo, hi) of image n into dst (consecutive rows); rows outside the image are
  // the depthwise's zero padding.
  void expand_rows(int64_t n, int64_t lo, int64_t hi, T* dst) const {
    rows_inside(lo, hi, dst, [&](int64_t a, int64_t b, T* out) {
      matmul((b - a) * d.W, d.hidden, d.c_in, x_row(n, a), ld_x, 1, mat(w1, d.hidden, d.c_in, d.c_in).t(),
             own.expand, out, d.hidden, expand_epilogue());
    });
  }

  // Image rows [lo, hi) of hidden rows into dst: zeros for rows outside the image (the depthwise's
  // padding), fill(a, b, dst's row a) for the rows [a, b) inside.
  template <typename Fill>
  void rows_inside(int64_t lo, int64_t hi, T* dst, Fill&& fill) const {
    const int64_t row = d.row_h();
    const int64_t a = std::max<int64_t>(lo, 0), b = std::min(hi, d.H);
    if (a > lo) std::memset(dst, 0, sizeof(T) * (a - lo) * row);
    if (b < hi) std::memset(dst + (std::max(b, lo) - lo) * row, 0, sizeof(T) * (hi - std::max(b, lo)) * row);
    if (b > a) fill(a, b, dst + (a - lo) * row);
  }

  Epilogue<T> expand_epilogue() const {
    Epilogue<T> ep;
    ep.bias = b1;
    ep.leaky = true;
    ep.slope = slope;
    return ep;
  }

  // h2 for image rows [lo, hi) into dst from h1, where h1 holds image rows from h1_base on; rows
  // outside the image are zero.
  void depthwise_rows(int64_t lo, int64_t hi, const T* h1, int64_t h1_base, T* dst) const {
    const int64_t row = d.row_h();
    for (int64_t r = lo; r < hi; ++r)
      if (r < 0 || r >= d.H) std::memset(dst + (r - lo) * row, 0, sizeof(T) * row);
    const int64_t a = std::max<int64_t>(lo, 0), b = std::min(hi, d.H);
    if (b > a) fn.dw_forward(h1 + (a - 1 - h1_base) * row, wt, bd, dst + (a - lo) * row, b - a, d.W, d.hidden, slope);
  }

  // g2 = (dy W2) * act'(h2) for image rows [lo, hi) into dst; h2 holds the same rows; dy's pixels are
  // ld_dy elements apart. Zero outside.
  void project_grad_rows(int64_t n, int64_t lo, int64_t hi, const T* dy, int64_t ld_dy, const T* h2,
                         T* dst) const {
    const int64_t row = d.row_h();
    for (int64_t r = lo; r < hi; ++r)
      if (r < 0 || r >= d.H) std::memset(dst + (r - lo) * row, 0, sizeof(T) * row);
    const int64_t a = std::max<int64_t>(lo, 0), b = std::min(hi, d.H);
    if (b <= a) return;
    const int64_t P = (b - a) * d.W;
    Epilogue<T> ep;
    ep.mask = h2 + (a - lo) * row;
    ep.ld_mask = d.hidden;
    matmul(P, d.hidden, d.c_out, dy + (n * d.H + a) * d.W * ld_dy, ld_dy, 1, mat(w2, d.c_out, d.hidden, d.hidden),
           own.project_t, dst + (a - lo) * row, d.hidden, ep);
  }
};

// The block's shape from x (N, c_in, H, W), w1 (hidden, ...) and w2 (c_out, ...).
Dims dims_of(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2);

// The tensor of an optional argument when it is given and defined, else null / an undefined tensor.
const at::Tensor* opt(const c10::optional<at::Tensor>& t);
at::Tensor defined_or_empty(const c10::optional<at::Tensor>& t);

// The block's weights in the layouts the kernels read; `keep` holds the tensors behind the pointers.
// `rotated`: also the depthwise weight rotated 180° (the backward's). float and double.
// `pack_own_gemm`: for float, also W1 and W2 packed for our float32 GEMM where it runs; the bfloat16
// block leaves that out when its own bfloat16 GEMM runs, which never reads them (on Zen 4 the packs
// were about two thirds of a call's fixed cost, 0.2 ms of a 1.5 ms 192 -> 384 -> 64 layer at LR 32
// batch 1).
template <typename T>
Block<T> make_block(const Dims& d, const T* x, int64_t ld_x, const at::Tensor& w1, const at::Tensor& b1,
                    const at::Tensor& wd, const at::Tensor& bd, const at::Tensor& w2, const at::Tensor& b2, bool skip,
                    double slope, bool rotated, std::vector<at::Tensor>& keep, bool pack_own_gemm = true);

// The same with x's shape and data from the tensor x (of dtype T).
template <typename T>
Block<T> make_block(const at::Tensor& x, int64_t ld_x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& wd,
                    const at::Tensor& bd, const at::Tensor& w2, const at::Tensor& b2, bool skip, double slope,
                    bool rotated, std::vector<at::Tensor>& keep) {
  return make_block<T>(dims_of(x, w1, w2), x.data_ptr<T>(), ld_x, w1, b1, wd, bd, w2, b2, skip, slope, rotated, keep);
}

// The distance in elements between neighbouring pixels when t's memory is NHWC with each pixel's
// channels consecutive (a channels_last tensor, or a channel slice of one: a dense block's buffer),
// else 0. The strides of size-1 dimensions do not matter.
int64_t pixel_stride(const at::Tensor& t);

// t as the kernels read it, with its pixel stride: t itself when its memory is NHWC already (no copy
// of a buffer's channel slice), else a channels_last copy.
struct Nhwc {
  at::Tensor t;
  int64_t ld;
};
Nhwc as_nhwc(const at::Tensor& t);

// The result in the memory format the caller's x has (the kernels work channels-last).
at::Tensor in_callers_format(const at::Tensor& t, const at::Tensor& like);

// A tensor the caller hands in to be written: (N, c, H, W) with x's N, H, W, dtype and device, NHWC.
void check_destination(const at::Tensor& t, const at::Tensor& x, int64_t c, const char* op, const char* name);

}  // namespace bottleneck
}  // namespace cpu
}  // namespace mesrgan
