// The fused block on bfloat16: the float32 block on float32 copies of the operands, the results
// rounded to bfloat16 (the weight gradients to the weights' dtype, bfloat16 too).
//
// This is the correct-first form: x, grad_out and the results are converted whole, so a call holds
// float32 copies of its activations for its duration. The weights' copies are converted once per
// call whatever the form. Converting a band of rows at a time inside the tile pipeline would drop
// the activations' copies; the float32 arithmetic would be the same.
#include "cpu/bottleneck_bf16.h"

namespace mesrgan {
namespace cpu {
namespace bf16 {
namespace {

at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat); }  // keeps the memory format
OptTensor f32(const OptTensor& t) { return t.has_value() && t->defined() ? OptTensor(f32(*t)) : t; }

// An empty tensor (a gradient not asked for) stays as it is, in bfloat16.
at::Tensor bf(const at::Tensor& t) { return t.to(at::kBFloat16); }

at::Tensor nhwc_float_like(const at::Tensor& t) {
  return at::empty(t.sizes(), t.options().dtype(at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
}

}  // namespace

at::Tensor forward(const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1, const at::Tensor& wd,
                   const OptTensor& bd, const at::Tensor& w2, const OptTensor& b2, bool skip, double slope) {
  return bf(bottleneck_block_cpu(f32(x), f32(w1), f32(b1), f32(wd), f32(bd), f32(w2), f32(b2), skip, slope));
}

void forward_out(const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1, const at::Tensor& wd,
                 const OptTensor& bd, const at::Tensor& w2, const OptTensor& b2, bool skip, double slope,
                 const at::Tensor& out) {
  const at::Tensor y = nhwc_float_like(out);
  bottleneck_block_out_cpu(f32(x), f32(w1), f32(b1), f32(wd), f32(bd), f32(w2), f32(b2), skip, slope, y);
  out.copy_(y);
}

BottleneckGrads backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1,
                         const at::Tensor& wd, const OptTensor& bd, const at::Tensor& w2, bool skip, double slope,
                         std::array<bool, 7> mask) {
  const auto g = bottleneck_block_backward_cpu(f32(grad_out), f32(x), f32(w1), f32(b1), f32(wd), f32(bd), f32(w2),
                                               skip, slope, mask);
  return {bf(std::get<0>(g)), bf(std::get<1>(g)), bf(std::get<2>(g)), bf(std::get<3>(g)), bf(std::get<4>(g)),
          bf(std::get<5>(g)), bf(std::get<6>(g))};
}

BottleneckWeightGrads backward_into(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1,
                                    const OptTensor& b1, const at::Tensor& wd, const OptTensor& bd,
                                    const at::Tensor& w2, bool skip, double slope, std::array<bool, 7> mask,
                                    const at::Tensor& grad_x, bool accumulate) {
  // x's gradient in float32 first; added to a bfloat16 grad_x it is rounded once, after the add.
  const at::Tensor dx = mask[0] ? nhwc_float_like(grad_x) : at::empty({0}, x.options().dtype(at::kFloat));
  const auto g = bottleneck_block_backward_into_cpu(f32(grad_out), f32(x), f32(w1), f32(b1), f32(wd), f32(bd),
                                                    f32(w2), skip, slope, mask, dx, false);
  if (mask[0] && grad_x.numel() > 0) {
    if (accumulate) {
      grad_x.copy_(grad_x.to(at::kFloat).add_(dx));
    } else {
      grad_x.copy_(dx);
    }
  }
  return {bf(std::get<0>(g)), bf(std::get<1>(g)), bf(std::get<2>(g)), bf(std::get<3>(g)), bf(std::get<4>(g)),
          bf(std::get<5>(g))};
}

}  // namespace bf16
}  // namespace cpu
}  // namespace mesrgan
