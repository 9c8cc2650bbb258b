// The depthwise op on bfloat16 CPU tensors: the float32 kernels (kernels.h) run on float32 copies of
// a few rows at a time, converted on the way in and rounded to bfloat16 on the way out (bf16.h).
// Each piece of work converts the rows it reads, its 3x3 halo included, into per-thread scratch and
// computes the rows it owns as a small image of its own: a halo row that is an interior row of the
// full image is then a real row of the small one, and only its (discarded) output row is wrong.
// Accumulation is float32 as for float tensors (the weight gradient's sums go to double).
#include "cpu/depthwise_bf16.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/bf16.h"
#include "cpu/dispatch.h"

namespace mesrgan {
namespace cpu {
namespace {

// Rows of one image per piece of NHWC work: enough to amortise the two halo rows.
constexpr int64_t kRows = 8;

// Per-thread float32 scratch, reused between calls (a fresh allocation per call would page-fault).
float* scratch(int slot, int64_t n) {
  thread_local std::vector<float> buffers[3];
  auto& b = buffers[slot];
  if (static_cast<int64_t>(b.size()) < n) b.resize(n);
  return b.data();
}

const uint16_t* bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }
uint16_t* bits_mut(const at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

// Rows [lo, hi) of an image of H rows, widened by one halo row each side where the image has one.
struct Rows {
  int64_t a, b;  // the rows converted
  Rows(int64_t lo, int64_t hi, int64_t H) : a(std::max<int64_t>(lo - 1, 0)), b(std::min(hi + 1, H)) {}
};

}  // namespace

void depthwise_forward_bf16(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& y,
                            bool nhwc, Activation act, double negative_slope, int64_t band_rows) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto& cv = bf16_convert();
  const auto& kernel = kernels<float>().depthwise;
  const float slope = static_cast<float>(negative_slope);
  const at::Tensor bf = bias.defined() ? bias.to(at::kFloat).contiguous() : at::Tensor();
  const float* bp = bf.defined() ? bf.data_ptr<float>() : nullptr;
  const uint16_t* xp = bits(x);
  uint16_t* yp = bits_mut(y);
  if (!nhwc) {
    const at::Tensor w = weight.to(at::kFloat).contiguous();
    const float* wp = w.data_ptr<float>();
    const int64_t bands = (H + band_rows - 1) / band_rows;
    at::parallel_for(0, N * C * bands, 1, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        const int64_t plane = u / bands, h0 = (u % bands) * band_rows, h1 = std::min(H, h0 + band_rows);
        const int64_t c = plane % C;
        const Rows r(h0, h1, H);
        float* xs = scratch(0, (r.b - r.a) * W);
        float* ys = scratch(1, (r.b - r.a) * W);
        cv.to_float(xp + (plane * H + r.a) * W, xs, (r.b - r.a) * W);
        kernel.fwd_nchw(xs, wp + c * 9, bp ? bp + c : nullptr, ys, 1, r.b - r.a, W, r.b - r.a, 0, 1, act, slope);
        cv.from_float(ys + (h0 - r.a) * W, yp + (plane * H + h0) * W, (h1 - h0) * W);
      }
    });
    return;
  }
  const at::Tensor wt = weight.to(at::kFloat).reshape({C, 9}).t().contiguous();  // tap-major (9, C)
  const int64_t rowlen = W * C;
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end;) {
      const int64_t n = q / H, h0 = q % H, h1 = std::min({H, h0 + kRows, h0 + end - q});
      const Rows r(h0, h1, H);
      float* xs = scratch(0, (r.b - r.a) * rowlen);
      float* ys = scratch(1, (r.b - r.a) * rowlen);
      cv.to_float(xp + (n * H + r.a) * rowlen, xs, (r.b - r.a) * rowlen);
      kernel.fwd_nhwc(xs, wt.data_ptr<float>(), bp, ys, C, r.b - r.a, W, h0 - r.a, h1 - r.a, act, slope);
      cv.from_float(ys + (h0 - r.a) * rowlen, yp + (n * H + h0) * rowlen, (h1 - h0) * rowlen);
      q += h1 - h0;
    }
  });
}

void depthwise_backward_weight_bf16_nchw(const at::Tensor& x, const at::Tensor& g, const at::Tensor& per_plane) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto& cv = bf16_convert();
  const auto& kernel = kernels<float>().depthwise;
  const uint16_t *xp = bits(x), *gp = bits(g);
  double* out = per_plane.data_ptr<double>();
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    float* xs = scratch(0, H * W);
    float* gs = scratch(1, H * W);
    for (int64_t p = begin; p < end; ++p) {
      cv.to_float(xp + p * H * W, xs, H * W);
      cv.to_float(gp + p * H * W, gs, H * W);
      kernel.bwdw_nchw(xs, gs, H, W, 0, 1, out + p * 10);
    }
  });
}

void depthwise_backward_weight_bf16_nhwc(const at::Tensor& x, const at::Tensor& g, const at::Tensor& partial) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto& cv = bf16_convert();
  const auto& kernel = kernels<float>().depthwise;
  const uint16_t *xp = bits(x), *gp = bits(g);
  const int64_t rows = N * H, chunks = partial.size(0), rowlen = W * C;
  double* out = partial.data_ptr<double>();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t q1 = rows * (k + 1) / chunks;
      for (int64_t q = rows * k / chunks; q < q1;) {
        const int64_t n = q / H, h0 = q % H, h1 = std::min({H, h0 + kRows, h0 + q1 - q});
        const Rows r(h0, h1, H);
        // grad_out's rows sit where x's do (the kernel indexes both by the same row); only the
        // owned rows are read, so only those are converted.
        float* xs = scratch(0, (r.b - r.a) * rowlen);
        float* gs = scratch(1, (r.b - r.a) * rowlen);
        cv.to_float(xp + (n * H + r.a) * rowlen, xs, (r.b - r.a) * rowlen);
        cv.to_float(gp + (n * H + h0) * rowlen, gs + (h0 - r.a) * rowlen, (h1 - h0) * rowlen);
        kernel.bwdw_nhwc(xs, gs, C, r.b - r.a, W, h0 - r.a, h1 - r.a, out + k * 10 * C);
        q += h1 - h0;
      }
    }
  });
}

void depthwise_activation_backward_bf16(const at::Tensor& g, const at::Tensor& y, const at::Tensor& r,
                                        Activation act, double negative_slope) {
  constexpr int64_t kPiece = 4096;
  const auto& cv = bf16_convert();
  const auto& kernel = kernels<float>().depthwise;
  const uint16_t *gp = bits(g), *yp = bits(y);
  uint16_t* rp = bits_mut(r);
  at::parallel_for(0, r.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
    float* gs = scratch(0, kPiece);
    float* ys = scratch(1, kPiece);
    float* rs = scratch(2, kPiece);
    for (int64_t i = begin; i < end; i += kPiece) {
      const int64_t n = std::min(kPiece, end - i);
      cv.to_float(gp + i, gs, n);
      cv.to_float(yp + i, ys, n);
      kernel.act_bwd(gs, ys, rs, 0, n, act, static_cast<float>(negative_slope));
      cv.from_float(rs, rp + i, n);
    }
  });
}

}  // namespace cpu
}  // namespace mesrgan
