// The depthwise op's bfloat16 CPU paths (depthwise_bf16.cpp), called by cpu/depthwise_conv3x3.cpp
// once it has the operands in the kernel layout (contiguous NCHW or NHWC) and the outputs allocated.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

#include "activation.h"

namespace mesrgan {
namespace cpu {

// y = activation(depthwise(x, weight) + bias); weight and bias (undefined: none) are bfloat16 too.
void depthwise_forward_bf16(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& y,
                            bool nhwc, Activation act, double negative_slope, int64_t band_rows);

// The weight gradient's sums into the float path's double buffers: per_plane (N, C, 10) for NCHW,
// partial (chunks, 10, C) for NHWC (zeroed by the caller; one chunk of rows each).
void depthwise_backward_weight_bf16_nchw(const at::Tensor& x, const at::Tensor& g, const at::Tensor& per_plane);
void depthwise_backward_weight_bf16_nhwc(const at::Tensor& x, const at::Tensor& g, const at::Tensor& partial);

// r = g * the activation's slope at y (elementwise over the tensors' memory).
void depthwise_activation_backward_bf16(const at::Tensor& g, const at::Tensor& y, const at::Tensor& r,
                                        Activation act, double negative_slope);

}  // namespace cpu
}  // namespace mesrgan
