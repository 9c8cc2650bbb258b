// CPU backend of the fused bottleneck block, channels-last inside.
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
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <string>
#include <vector>

#include "bottleneck_block.h"
#include "cpu/dispatch.h"
#include "cpu/gemm_choice.h"
#include "depthwise_conv3x3.h"

namespace mesrgan {
namespace {

// ---------------------------------------------------------------------------------------------
// Shapes, tiling and scratch.

struct Dims {
  int64_t N, H, W, c_in, hidden, c_out;
  int64_t row_h() const { return W * hidden; }  // elements of one hidden row
};

// Rows per band: about `pixels` pixels, so that a band's GEMMs are large enough to run at full speed
// while its hidden rows stay in L2.
int64_t band_rows(const Dims& d, int64_t pixels) { return std::max<int64_t>(1, std::min(d.H, pixels / d.W)); }

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
    const int64_t row = d.row_h();
    const int64_t a = std::max<int64_t>(lo, 0), b = std::min(hi, d.H);
    if (a > lo) std::memset(dst, 0, sizeof(T) * (a - lo) * row);
    if (b < hi) std::memset(dst + (std::max(b, lo) - lo) * row, 0, sizeof(T) * (hi - std::max(b, lo)) * row);
    if (b <= a) return;
    const int64_t P = (b - a) * d.W;
    Epilogue<T> ep;
    ep.bias = b1;
    ep.leaky = true;
    matmul(P, d.hidden, d.c_in, x_row(n, a), ld_x, 1, mat(w1, d.hidden, d.c_in, d.c_in).t(), own.expand,
           dst + (a - lo) * row, d.hidden, ep);
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

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename T>
void forward_chunk(const Block<T>& k, T* y, int64_t ld_y, int64_t n, int64_t r0, int64_t r1, int64_t R, T* h1,
                   T* h2) {
  const Dims& d = k.d;
  const int64_t row = d.row_h();
  int64_t base = r0 - 1;  // image row held by h1's first row
  for (int64_t a = r0; a < r1; a += R) {
    const int64_t b = std::min(a + R, r1);
    if (a == r0) {
      k.expand_rows(n, a - 1, b + 1, h1);
    } else {
      // The window was [a - R - 1, a + 1): its last two rows are this band's top halo and first row.
      std::memmove(h1, h1 + (a - 1 - base) * row, sizeof(T) * 2 * row);
      base = a - 1;
      k.expand_rows(n, a + 1, b + 1, h1 + 2 * row);
    }
    k.fn.dw_forward(h1 + (a - 1 - base) * row, k.wt, k.bd, h2, b - a, d.W, d.hidden, k.slope);
    Epilogue<T> ep;
    ep.bias = k.b2;
    ep.add = k.skip ? k.x_row(n, a) : nullptr;
    ep.ld_add = k.ld_x;
    k.matmul((b - a) * d.W, d.c_out, d.hidden, h2, d.hidden, 1, mat(k.w2, d.c_out, d.hidden, d.hidden).t(),
             k.own.project, y + (n * d.H + a) * d.W * ld_y, ld_y, ep);
  }
}

Dims dims_of(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2) {
  return {x.size(0), x.size(2), x.size(3), x.size(1), w1.size(0), w2.size(0)};
}

const at::Tensor* opt(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined() ? &*t : nullptr; }

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// The block's weights in the layouts the kernels read; `keep` holds the tensors behind the pointers.
template <typename T>
Block<T> make_block(const at::Tensor& x, int64_t ld_x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& wd,
                    const at::Tensor& bd, const at::Tensor& w2, const at::Tensor& b2, bool skip, double slope,
                    bool rotated, std::vector<at::Tensor>& keep) {
  const Dims d = dims_of(x, w1, w2);
  keep = {w1.reshape({d.hidden, d.c_in}).contiguous(), wd.reshape({d.hidden, 9}).t().contiguous(),
          rotated ? wd.flip({2, 3}).reshape({d.hidden, 9}).t().contiguous() : at::Tensor(),
          w2.reshape({d.c_out, d.hidden}).contiguous(),
          b1.defined() ? b1.contiguous() : b1, bd.defined() ? bd.contiguous() : bd,
          b2.defined() ? b2.contiguous() : b2};
  Block<T> k{d, x.data_ptr<T>(), ld_x, keep[0].data_ptr<T>(), ptr_or_null<T>(keep[4]), keep[1].data_ptr<T>(),
             ptr_or_null<T>(keep[2]), ptr_or_null<T>(keep[5]), keep[3].data_ptr<T>(), ptr_or_null<T>(keep[6]),
             skip, static_cast<T>(slope), cpu::kernels<T>().tiles, nullptr, OwnWeights{}};
  if constexpr (std::is_same_v<T, float>) {
    const cpu::gemm::Kernel gemm = cpu::gemm_kernel(cpu::gemm_in_use());
    if (gemm) {
      // Packing all four costs one pass over the weights, nothing beside the GEMMs over the pixels.
      namespace g = cpu::gemm;
      const int64_t sizes[4] = {g::packed_size(d.c_in, d.hidden), g::packed_size(d.hidden, d.c_out),
                                g::packed_size(d.c_out, d.hidden), g::packed_size(d.hidden, d.c_in)};
      at::Tensor packed = at::empty({sizes[0] + sizes[1] + sizes[2] + sizes[3]}, x.options());
      float* p = packed.data_ptr<float>();
      const float* w1p = k.w1;
      const float* w2p = k.w2;
      k.own.expand = g::pack_b(w1p, d.c_in, d.hidden, 1, d.c_in, p);                          // W1^T
      k.own.project = g::pack_b(w2p, d.hidden, d.c_out, 1, d.hidden, p += sizes[0]);          // W2^T
      k.own.project_t = g::pack_b(w2p, d.c_out, d.hidden, d.hidden, 1, p += sizes[1]);        // W2
      k.own.expand_t = g::pack_b(w1p, d.hidden, d.c_in, d.c_in, 1, p += sizes[2]);            // W1
      keep.push_back(packed);
      k.own_gemm = gemm;
    }
  }
  return k;
}

at::Tensor channels_last(const at::Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }

// The distance in elements between neighbouring pixels when t's memory is NHWC with each pixel's
// channels consecutive (a channels_last tensor, or a channel slice of one: a dense block's buffer),
// else 0. The strides of size-1 dimensions do not matter.
int64_t pixel_stride(const at::Tensor& t) {
  const int64_t N = t.size(0), C = t.size(1), H = t.size(2), W = t.size(3);
  if (C > 1 && t.stride(1) != 1) return 0;
  const int64_t ld = W > 1 ? t.stride(3) : H > 1 ? t.stride(2) : N > 1 ? t.stride(0) : C;
  if (ld < C || (H > 1 && t.stride(2) != W * ld) || (N > 1 && t.stride(0) != H * W * ld)) return 0;
  return ld;
}

// t as the kernels read it, with its pixel stride: t itself when its memory is NHWC already (no copy
// of a buffer's channel slice), else a channels_last copy.
struct Nhwc {
  at::Tensor t;
  int64_t ld;
};
Nhwc as_nhwc(const at::Tensor& t) {
  const int64_t ld = t.numel() > 0 ? pixel_stride(t) : 0;
  if (ld > 0) return {t, ld};
  at::Tensor c = channels_last(t);
  return {c, std::max<int64_t>(c.size(1), 1)};
}

// The result in the memory format the caller's x has (the kernels work channels-last).
at::Tensor in_callers_format(const at::Tensor& t, const at::Tensor& like) {
  return prefers_channels_last(like) ? t : t.contiguous();
}

at::Tensor defined_or_empty(const c10::optional<at::Tensor>& t) { return opt(t) ? *t : at::Tensor(); }

// A tensor the caller hands in to be written: (N, C, H, W) as `shape` gives, x's dtype and device, NHWC.
void check_destination(const at::Tensor& t, const at::Tensor& x, int64_t c, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4 && t.size(0) == x.size(0) && t.size(1) == c && t.size(2) == x.size(2) &&
                        t.size(3) == x.size(3),
                    op, ": ", name, " must have shape (", x.size(0), ", ", c, ", ", x.size(2), ", ", x.size(3),
                    "), got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type() && t.device() == x.device(), op, ": ", name,
                   " must match x's dtype and device (", x.scalar_type(), ", ", x.device(), "), got ",
                   t.scalar_type(), ", ", t.device());
  TORCH_CHECK_VALUE(t.numel() == 0 || pixel_stride(t) > 0, op, ": ", name,
                    " must be channels_last or a channel slice of a channels_last tensor, got strides ", t.strides());
}

// y (its pixels ld_y apart) = the block of x.
void forward_into(const Nhwc& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1, const at::Tensor& wd,
                  const c10::optional<at::Tensor>& bd, const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
                  bool skip, double slope, const at::Tensor& y, int64_t ld_y) {
  const Dims d = dims_of(x.t, w1, w2);
  if (y.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES(x.t.scalar_type(), "bottleneck_block_cpu", [&] {
    std::vector<at::Tensor> keep;
    const Block<scalar_t> k = make_block<scalar_t>(x.t, x.ld, w1, defined_or_empty(b1), wd, defined_or_empty(bd), w2,
                                                   defined_or_empty(b2), skip, slope, false, keep);
    // 128-1024 pixels per band measured the same here (16.3-15.5 ms on (16, 192, 32, 32) -> 384 -> 64).
    const int64_t R = band_rows(d, 256);
    // Enough chunks for every thread; chunks of at least two bands, so that halo rows stay few.
    const int64_t threads = at::get_num_threads();
    const int64_t per_image =
        std::max<int64_t>(1, std::min((2 * threads + d.N - 1) / d.N, d.H / (2 * R)));
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, d.N * per_image, 1, [&](int64_t begin, int64_t end) {
      scalar_t* h1 = scratch<scalar_t>((2 * R + 2) * d.row_h());
      scalar_t* h2 = h1 + (R + 2) * d.row_h();
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / per_image, j = t % per_image;
        forward_chunk(k, yp, ld_y, n, d.H * j / per_image, d.H * (j + 1) / per_image, R, h1, h2);
      }
    });
  });
}

}  // namespace

at::Tensor bottleneck_block_cpu(const at::Tensor& x_in, const at::Tensor& expand_weight,
                                const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                                const c10::optional<at::Tensor>& dw_bias, const at::Tensor& project_weight,
                                const c10::optional<at::Tensor>& project_bias, bool skip, double negative_slope) {
  check_bottleneck_args(x_in, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, skip,
                        negative_slope);
  const Nhwc x = as_nhwc(x_in);
  const Dims d = dims_of(x.t, expand_weight, project_weight);
  at::Tensor y = empty_output_cpu({d.N, d.c_out, d.H, d.W}, x.t.options(), Layout::NHWC);
  forward_into(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, skip, negative_slope,
               y, std::max<int64_t>(d.c_out, 1));
  return in_callers_format(y, x_in);
}

// The same, written into `out` (channels_last, or a channel slice of a channels_last tensor, not
// overlapping x): how a dense block's layer writes its features into the block's buffer.
void bottleneck_block_out_cpu(const at::Tensor& x_in, const at::Tensor& expand_weight,
                              const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                              const c10::optional<at::Tensor>& dw_bias, const at::Tensor& project_weight,
                              const c10::optional<at::Tensor>& project_bias, bool skip, double negative_slope,
                              const at::Tensor& out) {
  check_bottleneck_args(x_in, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, skip,
                        negative_slope);
  check_destination(out, x_in, project_weight.size(0), "_bottleneck_block_out", "out");
  if (out.numel() == 0) return;
  forward_into(as_nhwc(x_in), expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, skip,
               negative_slope, out, pixel_stride(out));
}

// ---------------------------------------------------------------------------------------------
// Backward.

namespace {

// Offsets of one chunk's partial gradient sums in its row of the partial-sum matrix.
struct GradLayout {
  int64_t w1, b1, wd, bd, w2, b2, size;
  explicit GradLayout(const Dims& d) {
    w1 = 0;
    b1 = w1 + d.hidden * d.c_in;
    wd = b1 + d.hidden;
    bd = wd + 9 * d.hidden;
    w2 = bd + d.hidden;
    b2 = w2 + d.c_out * d.hidden;
    size = b2 + d.c_out;
  }
};

struct Needs {
  bool x, w1, b1, wd, bd, w2, b2;
  bool lower() const { return x || w1 || b1 || wd || bd; }  // anything below the projection
};

// dy as the backward reads it and dx as it writes it: pixels ld elements apart; dx is added to
// (accumulate) or overwritten.
template <typename T>
struct GradIo {
  const T* dy;
  int64_t ld_dy;
  T* dx;
  int64_t ld_dx;
  bool accumulate;
};

template <typename T>
void backward_chunk(const Block<T>& k, const Needs& need, const GradLayout& gl, const GradIo<T>& io, T* part,
                    int64_t n, int64_t r0, int64_t r1, int64_t R, T* h1, T* h2, T* g2, T* g1) {
  const T* dy = io.dy;
  const Dims& d = k.d;
  const int64_t row = d.row_h();
  int64_t base1 = r0 - 2, base2 = r0 - 1;  // image rows held by the first rows of h1 and of h2 / g2
  for (int64_t a = r0; a < r1; a += R) {
    const int64_t b = std::min(a + R, r1);
    if (a == r0) {
      k.expand_rows(n, a - 2, b + 2, h1);
      k.depthwise_rows(a - 1, b + 1, h1, base1, h2);
      if (need.lower()) k.project_grad_rows(n, a - 1, b + 1, dy, io.ld_dy, h2, g2);
    } else {
      // Keep the rows the previous band already computed: h1 [a - 2, a + 2), h2 and g2 [a - 1, a + 1).
      std::memmove(h1, h1 + (a - 2 - base1) * row, sizeof(T) * 4 * row);
      std::memmove(h2, h2 + (a - 1 - base2) * row, sizeof(T) * 2 * row);
      if (need.lower()) std::memmove(g2, g2 + (a - 1 - base2) * row, sizeof(T) * 2 * row);
      base1 = a - 2;
      base2 = a - 1;
      k.expand_rows(n, a + 2, b + 2, h1 + 4 * row);
      k.depthwise_rows(a + 1, b + 1, h1, base1, h2 + 2 * row);
      if (need.lower()) k.project_grad_rows(n, a + 1, b + 1, dy, io.ld_dy, h2 + 2 * row, g2 + 2 * row);
    }
    // The band's own rows [a, b).
    const int64_t P = (b - a) * d.W;
    const T* dy_band = dy + (n * d.H + a) * d.W * io.ld_dy;
    const T* h2_band = h2 + (a - base2) * row;
    Epilogue<T> acc;
    acc.accumulate = true;
    if (need.w2)  // dW2 += dy^T h2
      k.matmul(d.c_out, d.hidden, P, dy_band, 1, io.ld_dy, mat(h2_band, P, d.hidden, d.hidden),
               k.own_rows(h2_band, d.hidden), part + gl.w2, d.hidden, acc);
    if (need.b2) k.fn.column_sum(dy_band, io.ld_dy, P, d.c_out, part + gl.b2);
    if (need.wd || need.bd)
      k.fn.dw_backward_weight(h1 + (a - 1 - base1) * row, g2 + (a - base2) * row, part + gl.wd, part + gl.bd, b - a,
                              d.W, d.hidden);
    if (!(need.x || need.w1 || need.b1)) continue;
    k.fn.dw_backward_input(g2 + (a - 1 - base2) * row, k.wt_rot, h1 + (a - base1) * row, g1, b - a, d.W, d.hidden,
                           k.slope);
    if (need.b1) k.fn.column_sum(g1, d.hidden, P, d.hidden, part + gl.b1);
    if (need.w1)  // dW1 += g1^T x
      k.matmul(d.hidden, d.c_in, P, g1, 1, d.hidden, mat(k.x_row(n, a), P, d.c_in, k.ld_x),
               k.own_rows(k.x_row(n, a), k.ld_x), part + gl.w1, d.c_in, acc);
    if (need.x) {  // dx (+)= g1 W1 (+ dy)
      Epilogue<T> ep;
      ep.accumulate = io.accumulate;
      ep.add = k.skip ? dy_band : nullptr;
      ep.ld_add = io.ld_dy;
      k.matmul(P, d.c_in, d.hidden, g1, d.hidden, 1, mat(k.w1, d.hidden, d.c_in, d.c_in), k.own.expand_t,
               io.dx + (n * d.H + a) * d.W * io.ld_dx, io.ld_dx, ep);
    }
  }
}

// Sum of the chunks' partial sums (chunks, size) in chunk order, parallel over elements.
template <typename T>
at::Tensor sum_partials(const at::Tensor& part) {
  const int64_t chunks = part.size(0), size = part.size(1);
  at::Tensor total = at::empty({size}, part.options());
  const T* p = part.data_ptr<T>();
  T* out = total.data_ptr<T>();
  at::parallel_for(0, size, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T s = 0;
      for (int64_t c = 0; c < chunks; ++c) s += p[c * size + i];
      out[i] = s;
    }
  });
  return total;
}

void check_grad_out(const at::Tensor& grad_out, const at::Tensor& x, const Dims& d, const char* op) {
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == d.N && grad_out.size(1) == d.c_out &&
                        grad_out.size(2) == d.H && grad_out.size(3) == d.W,
                    op, ": grad_out must have shape (", d.N, ", ", d.c_out, ", ", d.H, ", ", d.W, "), got ",
                    grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type() && grad_out.device() == x.device(), op,
                   ": grad_out must match x's dtype and device (", x.scalar_type(), ", ", x.device(), "), got ",
                   grad_out.scalar_type(), ", ", grad_out.device());
}

// The backward of the block: writes (or, with `accumulate`, adds) x's gradient into dx (its pixels
// ld_dx apart) when need.x, and returns the weight gradients' sums in GradLayout's order.
at::Tensor backward_into(const Nhwc& dy, const Nhwc& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                         const at::Tensor& wd, const c10::optional<at::Tensor>& bd, const at::Tensor& w2, bool skip,
                         double slope, const Needs& need, const at::Tensor& dx, int64_t ld_dx, bool accumulate) {
  const Dims d = dims_of(x.t, w1, w2);
  const GradLayout gl(d);
  // Chunks per image from the shape alone (not the thread count), so the sums' order is fixed.
  const bool empty = x.t.numel() == 0;
  const int64_t R = empty ? 1 : band_rows(d, 128);
  const int64_t per_image = empty ? 1 : std::max<int64_t>(1, std::min<int64_t>((4 + d.N - 1) / d.N, d.H / (4 * R)));
  const int64_t chunks = d.N * per_image;
  // Chunks are dealt to a fixed number of groups, each with one partial sum; few groups keep the
  // partial sums small (each is the size of all the weights).
  const int64_t groups = std::max<int64_t>(1, std::min<int64_t>(chunks, 8));
  at::Tensor part = at::zeros({groups, gl.size}, x.t.options());
  if (!empty && (need.lower() || need.w2 || need.b2)) {
    AT_DISPATCH_FLOATING_TYPES(x.t.scalar_type(), "bottleneck_block_backward_cpu", [&] {
      std::vector<at::Tensor> keep;
      const Block<scalar_t> k = make_block<scalar_t>(x.t, x.ld, w1, defined_or_empty(b1), wd, defined_or_empty(bd), w2,
                                                     at::Tensor(), skip, slope, true, keep);
      const GradIo<scalar_t> io{dy.t.data_ptr<scalar_t>(), dy.ld, need.x ? dx.data_ptr<scalar_t>() : nullptr, ld_dx,
                                accumulate};
      scalar_t* pp = part.data_ptr<scalar_t>();
      at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
        const int64_t row = d.row_h();
        scalar_t* h1 = scratch<scalar_t>((4 * R + 8) * row);
        scalar_t* h2 = h1 + (R + 4) * row;
        scalar_t* g2 = h2 + (R + 2) * row;
        scalar_t* g1 = g2 + (R + 2) * row;
        for (int64_t g = begin; g < end; ++g) {
          for (int64_t t = chunks * g / groups; t < chunks * (g + 1) / groups; ++t) {
            const int64_t n = t / per_image, j = t % per_image;
            backward_chunk(k, need, gl, io, pp + g * gl.size, n, d.H * j / per_image, d.H * (j + 1) / per_image, R,
                           h1, h2, g2, g1);
          }
        }
      });
    });
  } else if (need.x && !accumulate && dx.numel() > 0) {
    dx.zero_();
  }
  return AT_DISPATCH_FLOATING_TYPES(x.t.scalar_type(), "bottleneck_sum_partials",
                                    [&] { return sum_partials<scalar_t>(part); });
}

// The six weight gradients out of the sums (empty where not needed).
std::array<at::Tensor, 6> weight_grads(const at::Tensor& total, const Dims& d, const Needs& need) {
  const GradLayout gl(d);
  auto piece = [&](bool needed, int64_t offset, int64_t size) {
    return needed ? total.narrow(0, offset, size).clone() : at::empty({0}, total.options());
  };
  at::Tensor gw1 = need.w1 ? piece(true, gl.w1, d.hidden * d.c_in).view({d.hidden, d.c_in, 1, 1}) : piece(false, 0, 0);
  at::Tensor gwd = need.wd ? total.narrow(0, gl.wd, 9 * d.hidden).view({9, d.hidden}).t().contiguous().view(
                                 {d.hidden, 1, 3, 3})
                           : piece(false, 0, 0);
  at::Tensor gw2 =
      need.w2 ? piece(true, gl.w2, d.c_out * d.hidden).view({d.c_out, d.hidden, 1, 1}) : piece(false, 0, 0);
  return {gw1, piece(need.b1, gl.b1, d.hidden), gwd, piece(need.bd, gl.bd, d.hidden), gw2, piece(need.b2, gl.b2, d.c_out)};
}

}  // namespace

BottleneckGrads bottleneck_block_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                              const at::Tensor& expand_weight,
                                              const c10::optional<at::Tensor>& expand_bias,
                                              const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias,
                                              const at::Tensor& project_weight, bool skip, double negative_slope,
                                              std::array<bool, 7> mask) {
  check_bottleneck_args(x_in, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, c10::nullopt, skip,
                        negative_slope);
  const Dims d = dims_of(x_in, expand_weight, project_weight);
  check_grad_out(grad_out_in, x_in, d, "bottleneck_block_backward");
  const Needs need{mask[0], mask[1], mask[2] && opt(expand_bias), mask[3], mask[4] && opt(dw_bias), mask[5], mask[6]};
  const Nhwc x = as_nhwc(x_in);
  at::Tensor dx = need.x ? at::empty({d.N, d.c_in, d.H, d.W}, x.t.options().memory_format(at::MemoryFormat::ChannelsLast))
                         : at::Tensor();
  const at::Tensor total = backward_into(as_nhwc(grad_out_in), x, expand_weight, expand_bias, dw_weight, dw_bias,
                                         project_weight, skip, negative_slope, need, dx, std::max<int64_t>(d.c_in, 1),
                                         false);
  const auto g = weight_grads(total, d, need);
  return {need.x ? in_callers_format(dx, x_in) : at::empty({0}, x.t.options()), g[0], g[1], g[2], g[3], g[4], g[5]};
}

// The backward writing (or with `accumulate` adding) x's gradient into grad_x, channels_last or a
// channel slice of a channels_last tensor, not overlapping grad_out: how a dense block's layer hands
// its input's gradient to the block's gradient buffer. Returns the six weight gradients.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bottleneck_block_backward_into_cpu(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& expand_weight,
    const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias,
    const at::Tensor& project_weight, bool skip, double negative_slope, std::array<bool, 7> mask,
    const at::Tensor& grad_x, bool accumulate) {
  constexpr const char* kOp = "_bottleneck_block_backward_into";
  check_bottleneck_args(x_in, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, c10::nullopt, skip,
                        negative_slope);
  const Dims d = dims_of(x_in, expand_weight, project_weight);
  check_grad_out(grad_out, x_in, d, kOp);
  if (mask[0]) check_destination(grad_x, x_in, d.c_in, kOp, "grad_x");
  const Needs need{mask[0], mask[1], mask[2] && opt(expand_bias), mask[3], mask[4] && opt(dw_bias), mask[5], mask[6]};
  const at::Tensor total = backward_into(as_nhwc(grad_out), as_nhwc(x_in), expand_weight, expand_bias, dw_weight,
                                         dw_bias, project_weight, skip, negative_slope, need, grad_x,
                                         need.x && grad_x.numel() > 0 ? pixel_stride(grad_x) : 1, accumulate);
  const auto g = weight_grads(total, d, need);
  return {g[0], g[1], g[2], g[3], g[4], g[5]};
}

TORCH_LIBRARY_IMPL(mesrgan, CPU, m) {
  m.impl("bottleneck_block", &bottleneck_block_cpu);
  m.impl("bottleneck_block_backward", &bottleneck_block_backward_cpu);
  m.impl("_bottleneck_block_out", &bottleneck_block_out_cpu);
  m.impl("_bottleneck_block_backward_into", &bottleneck_block_backward_into_cpu);
}

}  // namespace mesrgan
