// CPU backend: picks the layout path, splits the work with at::parallel_for; the kernels are
// cpu/dispatch.h's row for the CPU's instruction set.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

#include "cpu/depthwise_bf16.h"
#include "cpu/dispatch.h"
#include "depthwise_conv3x3.h"

namespace mesrgan {
namespace {

// Rows per NCHW work unit: a band is enough work to amortise a task, and small planes stay whole.
constexpr int64_t kBandRows = 32;

}  // namespace

at::Tensor depthwise_conv3x3_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                                 const c10::optional<at::Tensor>& bias_in, const std::string& activation,
                                 double negative_slope) {
  check_forward_args(x_in, weight_in, bias_in, activation, negative_slope);
  const Activation act = parse_activation(activation);
  Layout layout;
  const at::Tensor x = as_kernel_layout(x_in, &layout);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor y = empty_output_cpu(x, layout);  // in x's (kernel) layout
  if (y.numel() == 0) return y;
  const bool has_bias = bias_in.has_value() && bias_in->defined();
  const at::Tensor bias = has_bias ? bias_in->contiguous() : at::Tensor();
  if (x.scalar_type() == at::kBFloat16) {
    cpu::depthwise_forward_bf16(x, weight_in, bias, y, layout == Layout::NHWC, act, negative_slope, kBandRows);
    return y;
  }

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "depthwise_conv3x3_cpu", [&] {
    const scalar_t slope = static_cast<scalar_t>(negative_slope);
    const scalar_t* bp = has_bias ? bias.data_ptr<scalar_t>() : nullptr;
    const auto& kernel = cpu::kernels<scalar_t>().depthwise;
    if (layout == Layout::NCHW) {
      const at::Tensor w = weight_in.contiguous();
      const int64_t bands = (H + kBandRows - 1) / kBandRows;
      at::parallel_for(0, N * C * bands, 1, [&](int64_t begin, int64_t end) {
        kernel.fwd_nchw(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bp, y.data_ptr<scalar_t>(), C, H, W,
                        kBandRows, begin, end, act, slope);
      });
    } else {
      // Tap-major weights (9, C) so that the channel loop reads them contiguously.
      const at::Tensor wt = weight_in.reshape({C, 9}).t().contiguous();
      at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
        kernel.fwd_nhwc(x.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(), bp, y.data_ptr<scalar_t>(), C, H, W, begin,
                        end, act, slope);
      });
    }
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> depthwise_conv3x3_backward_weight_cpu(const at::Tensor& x_in,
                                                                         const at::Tensor& grad_out_in,
                                                                         bool need_bias) {
  check_backward_weight_args(x_in, grad_out_in);
  const int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  // Both operands must share one layout; grad_out decides when they differ (it is the larger stream
  // in a training step and usually follows the forward output's layout).
  Layout layout;
  const at::Tensor g = as_kernel_layout(grad_out_in, &layout);
  const at::Tensor x = in_layout(x_in, layout);
  const auto dbl = x.options().dtype(at::kDouble);
  at::Tensor sums;  // (C, 10) in double: taps 0..8, then bias

  if (N * H * W == 0 || C == 0) {
    sums = at::zeros({C, 10}, dbl);
  } else if (layout == Layout::NCHW) {
    at::Tensor per_plane = at::empty({N, C, 10}, dbl);
    if (x.scalar_type() == at::kBFloat16) cpu::depthwise_backward_weight_bf16_nchw(x, g, per_plane);
    else AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "depthwise_conv3x3_backward_weight_cpu", [&] {
      const auto& kernel = cpu::kernels<scalar_t>().depthwise;
      at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
        kernel.bwdw_nchw(x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), H, W, begin, end,
                         per_plane.data_ptr<double>());
      });
    });
    sums = per_plane.sum(0);  // fixed order: deterministic whatever the thread count
  } else {
    // Rows are cut into a fixed number of chunks (not one per thread), each with its own partial
    // sums, so the result does not depend on the thread count.
    const int64_t rows = N * H;
    const int64_t chunks = std::min<int64_t>(rows, 64);
    at::Tensor partial = at::zeros({chunks, 10, C}, dbl);
    if (x.scalar_type() == at::kBFloat16) cpu::depthwise_backward_weight_bf16_nhwc(x, g, partial);
    else AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "depthwise_conv3x3_backward_weight_cpu", [&] {
      const auto& kernel = cpu::kernels<scalar_t>().depthwise;
      at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          const int64_t r0 = rows * k / chunks, r1 = rows * (k + 1) / chunks;
          kernel.bwdw_nhwc(x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), C, H, W, r0, r1,
                           partial.data_ptr<double>() + k * 10 * C);
        }
      });
    });
    sums = partial.sum(0).t();
  }
  return split_sums(sums, x.scalar_type(), need_bias);
}

at::Tensor depthwise_conv3x3_activation_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& out_in,
                                                     const std::string& activation, double negative_slope) {
  check_activation_backward_args(grad_out_in, out_in);
  const Activation act = parse_activation(activation);
  Layout layout;
  const at::Tensor g = as_kernel_layout(grad_out_in, &layout);
  const at::Tensor y = in_layout(out_in, layout);
  at::Tensor r = empty_output_cpu(g, layout);
  const int64_t n = r.numel();
  if (g.scalar_type() == at::kBFloat16) {
    if (n > 0) cpu::depthwise_activation_backward_bf16(g, y, r, act, negative_slope);
    return r;
  }
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "depthwise_conv3x3_activation_backward_cpu", [&] {
    const auto& kernel = cpu::kernels<scalar_t>().depthwise;
    at::parallel_for(0, n, 1 << 15, [&](int64_t begin, int64_t end) {
      kernel.act_bwd(g.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), begin, end, act,
                     static_cast<scalar_t>(negative_slope));
    });
  });
  return r;
}

// Whether at::parallel_for in this file can use several threads: only when it was compiled with
// OpenMP, like torch itself (see setup.py). A test compares it with torch._C.has_openmp.
static bool cpu_parallel() {
#ifdef INTRA_OP_PARALLEL
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY_FRAGMENT(mesrgan, m) { m.def("_cpu_parallel() -> bool", &cpu_parallel); }

TORCH_LIBRARY_IMPL(mesrgan, CPU, m) {
  m.impl("depthwise_conv3x3_activation_backward", &depthwise_conv3x3_activation_backward_cpu);
  m.impl("depthwise_conv3x3", &depthwise_conv3x3_cpu);
  m.impl("depthwise_conv3x3_backward_weight", &depthwise_conv3x3_backward_weight_cpu);
}

}  // namespace mesrgan
