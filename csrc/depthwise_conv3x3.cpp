// Operator schema and the argument checks shared by the CPU and CUDA kernels.
#include "depthwise_conv3x3.h"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace mesrgan {

Activation parse_activation(const std::string& name) {
  if (name == "none") return Activation::None;
  if (name == "relu") return Activation::ReLU;
  if (name == "relu6") return Activation::ReLU6;
  if (name == "leaky_relu") return Activation::LeakyReLU;
  TORCH_CHECK_VALUE(false, "depthwise_conv3x3: activation must be one of 'none', 'relu', 'relu6', 'leaky_relu', got '",
                    name, "'");
}

static void check_float_dtype(const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  const bool ok = t.is_cuda() ? (dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16)
                              : (dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16);
  TORCH_CHECK_TYPE(ok, "depthwise_conv3x3: ", name, " must be ",
                   t.is_cuda() ? "float32, float16 or bfloat16 on CUDA" : "float32, float64 or bfloat16 on CPU",
                   ", got ", dt,
                   " on ", t.device());
}

void check_forward_args(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                        const std::string& activation, double negative_slope) {
  TORCH_CHECK_VALUE(x.dim() == 4, "depthwise_conv3x3: x must be 4-D (N, C, H, W), got shape ", x.sizes());
  const int64_t C = x.size(1);
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 && weight.size(2) == 3 &&
                        weight.size(3) == 3,
                    "depthwise_conv3x3: weight must have shape (C, 1, 3, 3) = (", C, ", 1, 3, 3) for x of shape ",
                    x.sizes(), ", got ", weight.sizes());
  check_float_dtype(x, "x");
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), "depthwise_conv3x3: weight dtype must match x (",
                   x.scalar_type(), "), got ", weight.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), "depthwise_conv3x3: weight must be on x's device (", x.device(),
              "), got ", weight.device());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == C, "depthwise_conv3x3: bias must have shape (C,) = (", C,
                      ",), got ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type(), "depthwise_conv3x3: bias dtype must match x (",
                     x.scalar_type(), "), got ", bias->scalar_type());
    TORCH_CHECK(bias->device() == x.device(), "depthwise_conv3x3: bias must be on x's device (", x.device(),
                "), got ", bias->device());
  }
  parse_activation(activation);
  TORCH_CHECK_VALUE(negative_slope >= 0.0, "depthwise_conv3x3: negative_slope must be >= 0 (the backward reads the "
                    "activation's slope from the sign of the output), got ", negative_slope);
}

void check_backward_weight_args(const at::Tensor& x, const at::Tensor& grad_out) {
  TORCH_CHECK_VALUE(x.dim() == 4, "depthwise_conv3x3_backward_weight: x must be 4-D (N, C, H, W), got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(grad_out.sizes() == x.sizes(), "depthwise_conv3x3_backward_weight: grad_out must have x's shape ",
                    x.sizes(), ", got ", grad_out.sizes());
  check_float_dtype(x, "x");
  TORCH_CHECK_TYPE(grad_out.scalar_type() == x.scalar_type(),
                   "depthwise_conv3x3_backward_weight: grad_out dtype must match x (", x.scalar_type(), "), got ",
                   grad_out.scalar_type());
  TORCH_CHECK(grad_out.device() == x.device(), "depthwise_conv3x3_backward_weight: grad_out must be on x's device (",
              x.device(), "), got ", grad_out.device());
}

void check_activation_backward_args(const at::Tensor& grad_out, const at::Tensor& out) {
  TORCH_CHECK_VALUE(out.dim() == 4, "depthwise_conv3x3_activation_backward: out must be 4-D, got shape ", out.sizes());
  TORCH_CHECK_VALUE(grad_out.sizes() == out.sizes(), "depthwise_conv3x3_activation_backward: grad_out must have out's "
                    "shape ", out.sizes(), ", got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == out.scalar_type(), "depthwise_conv3x3_activation_backward: grad_out "
                   "dtype must match out (", out.scalar_type(), "), got ", grad_out.scalar_type());
  TORCH_CHECK(grad_out.device() == out.device(), "depthwise_conv3x3_activation_backward: grad_out must be on out's "
              "device (", out.device(), "), got ", grad_out.device());
}

bool prefers_channels_last(const at::Tensor& x) {
  // Mirrored exactly by mesrgan/ops/depthwise.py (_prefers_channels_last) for the fake kernel.
  const bool nchw = x.is_contiguous();
  const bool nhwc = x.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (nchw || nhwc) return nhwc && !nchw;
  return x.stride(1) < x.stride(3);
}

at::Tensor in_layout(const at::Tensor& t, Layout layout) {
  return layout == Layout::NHWC ? t.contiguous(at::MemoryFormat::ChannelsLast) : t.contiguous();
}

at::Tensor as_kernel_layout(const at::Tensor& x, Layout* layout) {
  *layout = prefers_channels_last(x) ? Layout::NHWC : Layout::NCHW;
  return in_layout(x, *layout);
}

std::tuple<at::Tensor, at::Tensor> split_sums(const at::Tensor& sums, at::ScalarType dtype, bool need_bias) {
  // Always fresh, contiguous copies (never views into sums), so that the outputs' strides and
  // storage offsets are the ones the fake kernel promises.
  const int64_t C = sums.size(0);
  at::Tensor grad_weight =
      sums.narrow(1, 0, 9).to(dtype, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
  at::Tensor grad_bias = need_bias
                             ? sums.select(1, 9).to(dtype, false, true, at::MemoryFormat::Contiguous)
                             : at::empty({0}, sums.options().dtype(dtype));
  return {grad_weight.view({C, 1, 3, 3}), grad_bias};
}

TORCH_LIBRARY(mesrgan, m) {
  m.def("depthwise_conv3x3(Tensor x, Tensor weight, Tensor? bias=None, str activation=\"none\", "
        "float negative_slope=0.2) -> Tensor");
  // Reduction over (N, H, W) of x * shifted grad_out for each of the 9 taps (and of grad_out for the bias).
  // Returns (grad_weight (C, 1, 3, 3), grad_bias (C,) or an empty tensor when need_bias is false).
  m.def("depthwise_conv3x3_backward_weight(Tensor x, Tensor grad_out, bool need_bias) -> (Tensor, Tensor)");
  // grad_out times the activation's slope at each output, read from the sign of the saved output
  // `out` (whose sign matches the pre-activation's for negative_slope >= 0). Elementwise, one pass.
  m.def("depthwise_conv3x3_activation_backward(Tensor grad_out, Tensor out, str activation, "
        "float negative_slope) -> Tensor");
}

}  // namespace mesrgan
