// The fused block on bfloat16 CPU tensors (bottleneck_bf16.cpp), called by the op's CPU entry points
// once the arguments are checked.
#pragma once
#include <ATen/ATen.h>

#include "bottleneck_block.h"

namespace mesrgan {
namespace cpu {
namespace bf16 {

using OptTensor = c10::optional<at::Tensor>;

at::Tensor forward(const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1, const at::Tensor& wd,
                   const OptTensor& bd, const at::Tensor& w2, const OptTensor& b2, bool skip, double slope);

void forward_out(const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1, const at::Tensor& wd,
                 const OptTensor& bd, const at::Tensor& w2, const OptTensor& b2, bool skip, double slope,
                 const at::Tensor& out);

BottleneckGrads backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1,
                         const at::Tensor& wd, const OptTensor& bd, const at::Tensor& w2, bool skip, double slope,
                         std::array<bool, 7> mask);

BottleneckWeightGrads backward_into(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1,
                                    const OptTensor& b1, const at::Tensor& wd, const OptTensor& bd,
                                    const at::Tensor& w2, bool skip, double slope, std::array<bool, 7> mask,
                                    const at::Tensor& grad_x, bool accumulate);

}  // namespace bf16
}  // namespace cpu
}  // namespace mesrgan
