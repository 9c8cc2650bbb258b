// Shared declarations for the depthwise 3x3 operator (stride 1, padding 1).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>

#include "activation.h"

namespace mesrgan {

Activation parse_activation(const std::string& name);

// Which of the two kernel layouts a tensor takes; anything else is copied to NCHW first.
enum class Layout { NCHW, NHWC };

// Checks shared by every backend; raises a c10::Error that names the argument.
void check_forward_args(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                        const std::string& activation, double negative_slope);
void check_backward_weight_args(const at::Tensor& x, const at::Tensor& grad_out);
void check_activation_backward_args(const at::Tensor& grad_out, const at::Tensor& out);

// The layout rule: channels_last when x is NHWC- but not NCHW-contiguous, or, for any other strides,
// when its channel stride is smaller than its width stride. The output takes the same layout.
bool prefers_channels_last(const at::Tensor& x);

// t as a contiguous tensor of the given layout (a second operand that must match the first's).
at::Tensor in_layout(const at::Tensor& t, Layout layout);

// Returns x in the layout prefers_channels_last picks (a copy only when x is not already contiguous in it).
at::Tensor as_kernel_layout(const at::Tensor& x, Layout* layout);

// (C, 10) sums (9 taps, then the bias) -> fresh (grad_weight (C, 1, 3, 3), grad_bias (C,) or (0,)).
std::tuple<at::Tensor, at::Tensor> split_sums(const at::Tensor& sums, at::ScalarType dtype, bool need_bias);

// An uninitialised CPU output shaped like `like` in the given layout; large ones come from
// recycled memory (cpu/output_cache.cpp).
at::Tensor empty_output_cpu(const at::Tensor& like, Layout layout);
at::Tensor empty_output_cpu(at::IntArrayRef sizes, const at::TensorOptions& options, Layout layout);

// Backend kernels. weight is (C, 1, 3, 3); bias is (C,) or undefined.
at::Tensor depthwise_conv3x3_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                 const std::string& activation, double negative_slope);
std::tuple<at::Tensor, at::Tensor> depthwise_conv3x3_backward_weight_cpu(const at::Tensor& x,
                                                                         const at::Tensor& grad_out,
                                                                         bool need_bias);

}  // namespace mesrgan
