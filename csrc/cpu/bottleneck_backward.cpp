// The fused block's backward on the CPU (the design is in bottleneck_block_cpu.h).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "bottleneck_block.h"
#include "cpu/bottleneck_bf16.h"
#include "cpu/bottleneck_backward_cpu.h"
#include "cpu/bottleneck_block_cpu.h"

namespace mesrgan {

using namespace cpu::bottleneck;

namespace {

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
  const bool empty = x.t.numel() == 0;
  const BackwardChunks c(d, empty);
  const bool bf16 = x.t.scalar_type() == at::kBFloat16;  // float32 partial sums
  at::Tensor part = at::zeros({c.groups, gl.size}, x.t.options().dtype(bf16 ? at::kFloat : x.t.scalar_type()));
  if (!empty && need.any() && bf16) {
    cpu::bf16::backward_partials(dy, x, w1, b1, wd, bd, w2, skip, slope, need, c, part, dx, ld_dx, accumulate);
  } else if (!empty && need.any()) {
    AT_DISPATCH_FLOATING_TYPES(x.t.scalar_type(), "bottleneck_block_backward_cpu", [&] {
      std::vector<at::Tensor> keep;
      const Block<scalar_t> k = make_block<scalar_t>(x.t, x.ld, w1, defined_or_empty(b1), wd, defined_or_empty(bd), w2,
                                                     at::Tensor(), skip, slope, true, keep);
      const GradIo<scalar_t> io{dy.t.data_ptr<scalar_t>(), dy.ld, need.x ? dx.data_ptr<scalar_t>() : nullptr, ld_dx,
                                accumulate};
      scalar_t* pp = part.data_ptr<scalar_t>();
      const int64_t row = d.row_h(), R = c.R;
      c.for_each(
          d,
          [&] {
            scalar_t* h1 = scratch<scalar_t>((4 * R + 8) * row);
            return std::array<scalar_t*, 4>{h1, h1 + (R + 4) * row, h1 + (2 * R + 6) * row, h1 + (3 * R + 8) * row};
          },
          [&](const std::array<scalar_t*, 4>& s, int64_t g, int64_t n, int64_t r0, int64_t r1) {
            backward_chunk(k, need, gl, io, pp + g * gl.size, n, r0, r1, R, s[0], s[1], s[2], s[3]);
          });
    });
  } else if (need.x && !accumulate && dx.numel() > 0) {
    dx.zero_();
  }
  return AT_DISPATCH_FLOATING_TYPES(part.scalar_type(), "bottleneck_sum_partials",
                                    [&] { return sum_partials<scalar_t>(part); });
}

// The six weight gradients out of the sums (empty where not needed), in the parameters' dtype (the
// sums of a bfloat16 call are float32, rounded here).
std::array<at::Tensor, 6> weight_grads(const at::Tensor& total, const Dims& d, const Needs& need,
                                       at::ScalarType dtype) {
  const GradLayout gl(d);
  auto piece = [&](bool needed, int64_t offset, int64_t size) {
    return needed ? total.narrow(0, offset, size).to(dtype, false, true) : at::empty({0}, total.options().dtype(dtype));
  };
  at::Tensor gw1 = need.w1 ? piece(true, gl.w1, d.hidden * d.c_in).view({d.hidden, d.c_in, 1, 1}) : piece(false, 0, 0);
  at::Tensor gwd = piece(false, 0, 0);
  if (need.wd)  // the sums are tap-major, (9, hidden)
    gwd = total.narrow(0, gl.wd, 9 * d.hidden).view({9, d.hidden}).t().to(dtype).contiguous().view({d.hidden, 1, 3, 3});
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
  const auto g = weight_grads(total, d, need, x_in.scalar_type());
  return {need.x ? in_callers_format(dx, x_in) : at::empty({0}, x.t.options()), g[0], g[1], g[2], g[3], g[4], g[5]};
}

// The backward writing (or with `accumulate` adding) x's gradient into grad_x, channels_last or a
// channel slice of a channels_last tensor, not overlapping grad_out: how a dense block's layer hands
// its input's gradient to the block's gradient buffer. Returns the six weight gradients.
BottleneckWeightGrads bottleneck_block_backward_into_cpu(
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
  const auto g = weight_grads(total, d, need, x_in.scalar_type());
  return {g[0], g[1], g[2], g[3], g[4], g[5]};
}

TORCH_LIBRARY_IMPL(mesrgan, CPU, m) {
  m.impl("bottleneck_block_backward", &bottleneck_block_backward_cpu);
  m.impl("_bottleneck_block_backward_into", &bottleneck_block_backward_into_cpu);
}

}  // namespace mesrgan
