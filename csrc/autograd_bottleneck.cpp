// Autograd of the fused bottleneck block, in C++ like csrc/autograd.cpp.
//
// The forward saves only its inputs (x and the weights); the backward op recomputes the hidden
// activations tile by tile, so a training step holds no hidden tensor between forward and backward.
// Double backward is refused: the backward op has no derivative of its own (impl="torch" has one).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "bottleneck_block.h"

namespace mesrgan {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;

at::Tensor op_forward(const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1, const at::Tensor& wd,
                      const OptTensor& bd, const at::Tensor& w2, const OptTensor& b2, bool skip, double slope) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mesrgan::bottleneck_block", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&,
                                               const at::Tensor&, const OptTensor&, const at::Tensor&,
                                               const OptTensor&, bool, double)>();
  return op.call(x, w1, b1, wd, bd, w2, b2, skip, slope);
}

BottleneckGrads op_backward(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1,
                            const at::Tensor& wd, const OptTensor& bd, const at::Tensor& w2, bool skip, double slope,
                            std::array<bool, 7> mask) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mesrgan::bottleneck_block_backward", "")
                             .typed<BottleneckGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    const OptTensor&, const at::Tensor&, const OptTensor&,
                                                    const at::Tensor&, bool, double, std::array<bool, 7>)>();
  return op.call(gy, x, w1, b1, wd, bd, w2, skip, slope, mask);
}

bool defined(const OptTensor& t) { return t.has_value() && t->defined(); }
OptTensor as_opt(const at::Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); }

class BottleneckFn : public torch::autograd::Function<BottleneckFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1,
                            const at::Tensor& wd, const OptTensor& bd, const at::Tensor& w2, const OptTensor& b2,
                            bool skip, double slope) {
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      y = op_forward(x, w1, b1, wd, bd, w2, b2, skip, slope);
    }
    ctx->saved_data["skip"] = skip;
    ctx->saved_data["slope"] = slope;
    ctx->saved_data["has_b1"] = defined(b1);
    ctx->saved_data["has_bd"] = defined(bd);
    ctx->saved_data["has_b2"] = defined(b2);
    ctx->save_for_backward({x, w1, defined(b1) ? *b1 : at::Tensor(), wd, defined(bd) ? *bd : at::Tensor(), w2});
    ctx->set_materialize_grads(false);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "bottleneck_block: double backward (create_graph=True) is not supported by the fused op; build the "
                "model with impl=\"torch\" for higher-order gradients");
    const auto s = ctx->get_saved_variables();
    const bool has[7] = {true, true, ctx->saved_data["has_b1"].toBool(), true, ctx->saved_data["has_bd"].toBool(),
                         true, ctx->saved_data["has_b2"].toBool()};
    // needs_input_grad counts the tensor inputs that were given: a None bias takes no index.
    std::array<bool, 7> mask{};
    for (int i = 0, idx = 0; i < 7; ++i)
      if (has[i]) mask[i] = ctx->needs_input_grad(idx++);
    variable_list out(9);
    const at::Tensor& gy = grads[0];
    bool any = false;
    for (bool m : mask) any = any || m;
    if (!gy.defined() || !any) return out;
    auto g = op_backward(gy, s[0], s[1], as_opt(s[2]), s[3], as_opt(s[4]), s[5], ctx->saved_data["skip"].toBool(),
                         ctx->saved_data["slope"].toDouble(), mask);
    const at::Tensor parts[7] = {std::get<0>(g), std::get<1>(g), std::get<2>(g), std::get<3>(g),
                                 std::get<4>(g), std::get<5>(g), std::get<6>(g)};
    for (int i = 0; i < 7; ++i)
      if (mask[i]) out[i] = parts[i];
    // One entry per forward argument: x, w1, b1, wd, bd, w2, b2, skip, negative_slope.
    return out;
  }
};

at::Tensor bottleneck_autograd(const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1, const at::Tensor& wd,
                               const OptTensor& bd, const at::Tensor& w2, const OptTensor& b2, bool skip,
                               double slope) {
  return BottleneckFn::apply(x, w1, b1, wd, bd, w2, b2, skip, slope);
}

}  // namespace

TORCH_LIBRARY_IMPL(mesrgan, Autograd, m) { m.impl("bottleneck_block", &bottleneck_autograd); }

}  // namespace mesrgan
