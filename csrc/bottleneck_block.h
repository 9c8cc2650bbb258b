// The fused bottleneck block: 1x1 expand + bias + LeakyReLU -> depthwise 3x3 + bias + LeakyReLU ->
// 1x1 project + bias (+ the input, when skip), in one op that never stores the hidden tensor.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>

namespace mesrgan {

// Raises a c10::Error naming the argument for any shape, dtype, device or value the op cannot take.
void check_bottleneck_args(const at::Tensor& x, const at::Tensor& expand_weight,
                           const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                           const c10::optional<at::Tensor>& dw_bias, const at::Tensor& project_weight,
                           const c10::optional<at::Tensor>& project_bias, bool skip, double negative_slope);

// (grad_x, grad_expand_weight, grad_expand_bias, grad_dw_weight, grad_dw_bias, grad_project_weight,
//  grad_project_bias); an entry whose output_mask is false is an empty tensor.
using BottleneckGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

at::Tensor bottleneck_block_cpu(const at::Tensor& x, const at::Tensor& expand_weight,
                                const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                                const c10::optional<at::Tensor>& dw_bias, const at::Tensor& project_weight,
                                const c10::optional<at::Tensor>& project_bias, bool skip, double negative_slope);

BottleneckGrads bottleneck_block_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                              const at::Tensor& expand_weight,
                                              const c10::optional<at::Tensor>& expand_bias,
                                              const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias,
                                              const at::Tensor& project_weight, bool skip, double negative_slope,
                                              std::array<bool, 7> output_mask);

// The dense-buffer forms (csrc/cpu/bottleneck_forward.cpp, bottleneck_backward.cpp).
using BottleneckWeightGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

void bottleneck_block_out_cpu(const at::Tensor& x, const at::Tensor& expand_weight,
                              const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                              const c10::optional<at::Tensor>& dw_bias, const at::Tensor& project_weight,
                              const c10::optional<at::Tensor>& project_bias, bool skip, double negative_slope,
                              const at::Tensor& out);

BottleneckWeightGrads bottleneck_block_backward_into_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& expand_weight,
    const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias,
    const at::Tensor& project_weight, bool skip, double negative_slope, std::array<bool, 7> output_mask,
    const at::Tensor& grad_x, bool accumulate);

}  // namespace mesrgan
