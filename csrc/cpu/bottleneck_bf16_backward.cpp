// The fused block's backward on bfloat16 tensors: bottleneck_backward.cpp's backward_chunk on
// bfloat16 memory, band by band, with the same chunks and groups (so the same determinism whatever
// the thread count). Only the band's rows are ever float32 (per-thread scratch): the recomputed h1
// and h2, the gradients g2 and g1, and the band's rows of x, dy and dx where a float32 operand is
// needed. The weight gradients are summed in float32 and rounded once at the end.
//
// With AVX512_BF16 (gemm_bf16.h) the three GEMMs whose A operand is bfloat16 already, or cheap to
// round, run vdpbf16ps:
//   h1 = LeakyReLU(x W1^T + b1)    A = x's rows in place (as the forward)
//   g2 = (dy W2) * act'(h2)        A = dy's rows in place
//   dx = g1 W1 (+ dy)              A = g1 rounded to bfloat16 (as oneDNN rounds a bfloat16 conv's
//                                  gradient operands)
// and so do the weight gradients, whose sums run over the band's pixels, taken in pairs:
//   dW2 += dy^T h2                 A = dy's channels, two pixels interleaved; B = h2 rounded
//   dW1^T += x^T g1                A = x's channels, two pixels interleaved; B = g1 rounded
// (dW1 summed transposed, so that A is x as it is: each group's sum is turned round once at the end).
// Without AVX512_BF16 (or MESRGAN_CPU_ISA=avx2 / base) every GEMM is the float32 one on widened rows,
// and each gradient is, bit for bit, the float32 backward's rounded once.
#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/bf16.h"
#include "cpu/bottleneck_bf16.h"
#include "cpu/bottleneck_bf16_band.h"

namespace mesrgan {
namespace cpu {
namespace bf16 {
namespace {

using namespace cpu::bottleneck;

at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat); }
at::Tensor f32(const OptTensor& t) { return t.has_value() && t->defined() ? f32(*t) : at::Tensor(); }

// One call's bfloat16 tensors: x and dy read, dx written (or added to); each with its pixel stride.
struct GradIoBf16 {
  const uint16_t* x;
  int64_t ld_x;
  const uint16_t* dy;
  int64_t ld_dy;
  uint16_t* dx;
  int64_t ld_dx;
  bool accumulate;
};

// Per-thread float32 rows for bands of R rows: h1 (R + 4 rows), h2 and g2 (R + 2), g1 (R) as in the
// float32 backward; `widened`: the A rows of a float32 GEMM on x or dy (up to R + 4 rows, the
// float32 form only); x_band and dy_band: the band's rows of x and dy (weight gradients, skip);
// dx: the band's x gradient before it is rounded; g1b: g1 rounded, for the bfloat16 GEMM; a_pairs and
// b_packed: the operands of a weight gradient's bfloat16 GEMM.
struct BackwardScratch {
  float *h1, *h2, *g2, *g1, *widened, *x_band, *dy_band, *dx;
  uint16_t *g1b, *b_packed;
  uint32_t* a_pairs;
  BackwardScratch(const Dims& d, int64_t R) {
    const int64_t row = d.row_h(), px = R * d.W, channels = std::max(d.c_in, d.c_out);
    const int64_t wide = (R + 4) * d.W * channels;
    const int64_t pairs = (px + 1) / 2 * channels, packed = gemm::packed_size_bf16(px, d.hidden);
    h1 = scratch<float>((4 * R + 8) * row + wide + px * (2 * d.c_in + d.c_out) + (px * d.hidden + 1) / 2 + pairs +
                        (packed + 1) / 2 + 16);
    h2 = h1 + (R + 4) * row;
    g2 = h2 + (R + 2) * row;
    g1 = g2 + (R + 2) * row;
    widened = g1 + R * row;
    x_band = widened + wide;
    dy_band = x_band + px * d.c_in;
    dx = dy_band + px * d.c_out;
    a_pairs = reinterpret_cast<uint32_t*>(dx + px * d.c_in);
    g1b = reinterpret_cast<uint16_t*>(a_pairs + pairs);
    b_packed = g1b + (px * d.hidden + 1) / 2 * 2;
  }
};

// C (c x N) += A^T B summed over P pixels with vdpbf16ps taking the pixels in pairs: A = P pixels of c
// bfloat16 channels (ld apart, read as they are), B = P dense float32 rows of N, rounded to bfloat16
// (as the GEMMs round their other float32 operands).
void weight_grad_bf16(const uint16_t* a, int64_t ld, int64_t c, const float* b, int64_t N, int64_t P,
                      const BackwardScratch& s, float* C) {
#ifdef MESRGAN_HAVE_X86_KERNELS
  gemm::pack_pixel_pairs_bf16(a, ld, P, c, s.a_pairs);
  const gemm::BMatrixBf16 B = gemm::pack_rows_b_bf16(b, P, N, s.b_packed);
  Epilogue<float> acc;
  acc.accumulate = true;
  gemm::gemm_bf16_pairs_avx512(c, N, P, s.a_pairs, B, C, N, acc);
#else
  TORCH_CHECK(false, "bottleneck_block: no bfloat16 GEMM in this build");
#endif
}

// g2 = (dy W2) * act'(h2) for P pixels of dy (bfloat16, ld_dy apart) into out (dense float32), h2
// holding the same pixels' depthwise output: the bfloat16 GEMM on dy in place, or dy widened into
// `widened` and the float32 GEMM.
void project_grad_pixels(const Block<float>& k, const Bf16Weights& wb, const uint16_t* dy, int64_t ld_dy, int64_t P,
                         const float* h2, float* widened, float* out) {
  const Dims& d = k.d;
  Epilogue<float> ep;
  ep.mask = h2;
  ep.ld_mask = d.hidden;
  if (wb.on) return gemm_bf16(P, d.hidden, d.c_out, dy, ld_dy, wb.project_t, out, ep, k.slope);
  widen_pixels(dy, ld_dy, widened, P, d.c_out);
  k.matmul(P, d.hidden, d.c_out, widened, d.c_out, 1, mat(k.w2, d.c_out, d.hidden, d.hidden), k.own.project_t, out,
           d.hidden, ep);
}

// dx (+)= g1 W1 (+ dy) for the P pixels of dx from `dx` on (ld_dx apart): computed in float32, the
// values already there added in float32 when accumulating, rounded once as stored. dy_band: dy's
// same pixels widened (read with skip).
void input_grad_pixels(const Block<float>& k, const Bf16Weights& wb, const BackwardScratch& s, int64_t P, uint16_t* dx,
                       int64_t ld_dx, bool accumulate) {
  const Dims& d = k.d;
  Epilogue<float> ep;
  if (accumulate) {
    widen_pixels(dx, ld_dx, s.dx, P, d.c_in);
    ep.accumulate = true;
  }
  if (k.skip) {
    ep.add = s.dy_band;
    ep.ld_add = d.c_out;
  }
  if (wb.on) {
    bf16_convert().from_float(s.g1, s.g1b, P * d.hidden);
    gemm_bf16(P, d.c_in, d.hidden, s.g1b, d.hidden, wb.expand_t, s.dx, ep, k.slope);
  } else {
    k.matmul(P, d.c_in, d.hidden, s.g1, d.hidden, 1, mat(k.w1, d.hidden, d.c_in, d.c_in), k.own.expand_t, s.dx,
             d.c_in, ep);
  }
  narrow_pixels(s.dx, dx, ld_dx, P, d.c_in);
}

// The gradients of the band's own rows [a, b) of image n: the weight gradients' partial sums into
// part, x's gradient into io.dx. h1 and g2 hold the rows from a - 1 on, h2 from a.
void band_gradients(const Block<float>& k, const Bf16Weights& wb, const Needs& need, const GradLayout& gl,
                    const GradIoBf16& io, float* part, int64_t n, int64_t a, int64_t b, const float* h1,
                    const float* h2, const float* g2, const BackwardScratch& s) {
  const Dims& d = k.d;
  const int64_t row = d.row_h(), P = (b - a) * d.W;
  const uint16_t* dy = pixel_row(io.dy, d, io.ld_dy, n, a);
  const uint16_t* x = pixel_row(io.x, d, io.ld_x, n, a);
  if (need.b2 || (need.x && k.skip) || (need.w2 && !wb.on)) widen_pixels(dy, io.ld_dy, s.dy_band, P, d.c_out);
  Epilogue<float> acc;
  acc.accumulate = true;
  if (need.w2 && wb.on) {  // dW2 += dy^T h2
    weight_grad_bf16(dy, io.ld_dy, d.c_out, h2, d.hidden, P, s, part + gl.w2);
  } else if (need.w2) {
    k.matmul(d.c_out, d.hidden, P, s.dy_band, 1, d.c_out, mat(h2, P, d.hidden, d.hidden), k.own_rows(h2, d.hidden),
             part + gl.w2, d.hidden, acc);
  }
  if (need.b2) k.fn.column_sum(s.dy_band, d.c_out, P, d.c_out, part + gl.b2);
  if (need.wd || need.bd)
    k.fn.dw_backward_weight(h1, g2 + row, part + gl.wd, part + gl.bd, b - a, d.W, d.hidden);
  if (!(need.x || need.w1 || need.b1)) return;
  k.fn.dw_backward_input(g2, k.wt_rot, h1 + row, s.g1, b - a, d.W, d.hidden, k.slope);
  if (need.b1) k.fn.column_sum(s.g1, d.hidden, P, d.hidden, part + gl.b1);
  if (need.w1 && wb.on) {  // dW1^T += x^T g1 (A = x's rows as they are), turned round in backward_partials
    weight_grad_bf16(x, io.ld_x, d.c_in, s.g1, d.hidden, P, s, part + gl.w1);
  } else if (need.w1) {  // dW1 += g1^T x
    widen_pixels(x, io.ld_x, s.x_band, P, d.c_in);
    k.matmul(d.hidden, d.c_in, P, s.g1, 1, d.hidden, mat(s.x_band, P, d.c_in, d.c_in), k.own_rows(s.x_band, d.c_in),
             part + gl.w1, d.c_in, acc);
  }
  if (need.x) input_grad_pixels(k, wb, s, P, pixel_row(io.dx, d, io.ld_dx, n, a), io.ld_dx, io.accumulate);
}

// backward_chunk of bottleneck_backward.cpp: rows [r0, r1) of image n, bands of R rows, keeping the
// rows the previous band computed (h1 [a - 2, a + 2), h2 and g2 [a - 1, a + 1)).
void backward_chunk(const Block<float>& k, const Bf16Weights& wb, const Needs& need, const GradLayout& gl,
                    const GradIoBf16& io, float* part, int64_t n, int64_t r0, int64_t r1, int64_t R,
                    const BackwardScratch& s) {
  const Dims& d = k.d;
  const int64_t row = d.row_h();
  auto expand = [&](int64_t a, int64_t b, float* out) {
    expand_pixels(k, wb, pixel_row(io.x, d, io.ld_x, n, a), io.ld_x, (b - a) * d.W, s.widened, out);
  };
  auto project_grad = [&](int64_t lo, int64_t hi, const float* h2, float* g2) {  // zero rows outside the image
    k.rows_inside(lo, hi, g2, [&](int64_t a, int64_t b, float* out) {
      project_grad_pixels(k, wb, pixel_row(io.dy, d, io.ld_dy, n, a), io.ld_dy, (b - a) * d.W, h2 + (out - g2),
                          s.widened, out);
    });
  };
  int64_t base1 = r0 - 2, base2 = r0 - 1;  // image rows held by the first rows of h1 and of h2 / g2
  for (int64_t a = r0; a < r1; a += R) {
    const int64_t b = std::min(a + R, r1);
    if (a == r0) {
      k.rows_inside(a - 2, b + 2, s.h1, expand);
      k.depthwise_rows(a - 1, b + 1, s.h1, base1, s.h2);
      if (need.lower()) project_grad(a - 1, b + 1, s.h2, s.g2);
    } else {
      std::memmove(s.h1, s.h1 + (a - 2 - base1) * row, sizeof(float) * 4 * row);
      std::memmove(s.h2, s.h2 + (a - 1 - base2) * row, sizeof(float) * 2 * row);
      if (need.lower()) std::memmove(s.g2, s.g2 + (a - 1 - base2) * row, sizeof(float) * 2 * row);
      base1 = a - 2;
      base2 = a - 1;
      k.rows_inside(a + 2, b + 2, s.h1 + 4 * row, expand);
      k.depthwise_rows(a + 1, b + 1, s.h1, base1, s.h2 + 2 * row);
      if (need.lower()) project_grad(a + 1, b + 1, s.h2 + 2 * row, s.g2 + 2 * row);
    }
    band_gradients(k, wb, need, gl, io, part, n, a, b, s.h1 + (a - 1 - base1) * row, s.h2 + (a - base2) * row,
                   s.g2 + (a - 1 - base2) * row, s);
  }
}

}  // namespace

void backward_partials(const Nhwc& dy, const Nhwc& x, const at::Tensor& w1, const OptTensor& b1, const at::Tensor& wd,
                       const OptTensor& bd, const at::Tensor& w2, bool skip, double slope, const Needs& need,
                       const BackwardChunks& c, const at::Tensor& part, const at::Tensor& dx, int64_t ld_dx,
                       bool accumulate) {
  const Dims d = dims_of(x.t, w1, w2);
  const GradLayout gl(d);
  std::vector<at::Tensor> keep;
  const Block<float> k = make_block<float>(d, nullptr, 0, f32(w1), f32(b1), f32(wd), f32(bd), f32(w2), at::Tensor(),
                                           skip, slope, true, keep, !gemm::use_gemm_bf16());
  const Bf16Weights wb = pack_bf16_weights(k, true, keep);
  const GradIoBf16 io{bits(x.t), x.ld, bits(dy.t), dy.ld, need.x ? bits_mut(dx) : nullptr, ld_dx, accumulate};
  float* pp = part.data_ptr<float>();
  c.for_each(
      d, [&] { return BackwardScratch(d, c.R); },
      [&](const BackwardScratch& s, int64_t g, int64_t n, int64_t r0, int64_t r1) {
        backward_chunk(k, wb, need, gl, io, pp + g * gl.size, n, r0, r1, c.R, s);
      });
  if (wb.on && need.w1) {  // each group's dW1^T (c_in x hidden) -> dW1 (hidden x c_in)
    const at::Tensor w1s = part.narrow(1, gl.w1, d.hidden * d.c_in);
    w1s.copy_(w1s.view({c.groups, d.c_in, d.hidden}).transpose(1, 2).contiguous().view({c.groups, -1}));
  }
}

}  // namespace bf16
}  // namespace cpu
}  // namespace mesrgan
