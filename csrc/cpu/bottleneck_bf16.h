// The fused block on bfloat16 CPU tensors (bottleneck_bf16.cpp: forward; bottleneck_bf16_backward.cpp:
// backward), called by the op's CPU entry points once the arguments are checked.
#pragma once
#include <ATen/ATen.h>

#include "bottleneck_block.h"
#include "cpu/bottleneck_backward_cpu.h"

namespace mesrgan {
namespace cpu {
namespace bf16 {

using OptTensor = c10::optional<at::Tensor>;

at::Tensor forward(const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1, const at::Tensor& wd,
                   const OptTensor& bd, const at::Tensor& w2, const OptTensor& b2, bool skip, double slope);

void forward_out(const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1, const at::Tensor& wd,
                 const OptTensor& bd, const at::Tensor& w2, const OptTensor& b2, bool skip, double slope,
                 const at::Tensor& out);

// The backward of bottleneck_backward.cpp's backward_into on bfloat16 tensors: writes (or, with
// `accumulate`, adds) x's gradient into dx (bfloat16, its pixels ld_dx apart) when need.x, and adds
// each group's weight-gradient sums (float32, GradLayout) into its row of `part` (groups x size).
void backward_partials(const bottleneck::Nhwc& dy, const bottleneck::Nhwc& x, const at::Tensor& w1,
                       const OptTensor& b1, const at::Tensor& wd, const OptTensor& bd, const at::Tensor& w2,
                       bool skip, double slope, const bottleneck::Needs& need, const bottleneck::BackwardChunks& c,
                       const at::Tensor& part, const at::Tensor& dx, int64_t ld_dx, bool accumulate);

}  // namespace bf16
}  // namespace cpu
}  // namespace mesrgan
