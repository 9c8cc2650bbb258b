// The fused block's forward on the CPU (the design is in bottleneck_block_cpu.h).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "bottleneck_block.h"
#include "cpu/bottleneck_bf16.h"
#include "cpu/bottleneck_block_cpu.h"
#include "depthwise_conv3x3.h"

namespace mesrgan {

using namespace cpu::bottleneck;

namespace {

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
    const int64_t per_image = forward_chunks_per_image(d, R, at::get_num_threads());
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
  if (x_in.scalar_type() == at::kBFloat16)
    return cpu::bf16::forward(x_in, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, skip,
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
  if (x_in.scalar_type() == at::kBFloat16)
    return cpu::bf16::forward_out(x_in, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, skip,
                             negative_slope, out);
  forward_into(as_nhwc(x_in), expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, skip,
               negative_slope, out, pixel_stride(out));
}

TORCH_LIBRARY_IMPL(mesrgan, CPU, m) {
  m.impl("bottleneck_block", &bottleneck_block_cpu);
  m.impl("_bottleneck_block_out", &bottleneck_block_out_cpu);
}

}  // namespace mesrgan
