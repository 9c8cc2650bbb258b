// Autograd of the three mesrgan ops, in C++ (the Autograd dispatch key), so that a forward and a
// backward cost no Python: with the glue in Python, a small layer's forward + backward spent most
// of its time in the interpreter (tens of microseconds per op call) rather than in the kernels.
//
// Each backward is written with the ops themselves (and torch's flip / sum), so a backward run with
// create_graph=True is recorded too, and double backward works through it.
//
//   y = act(conv(x, w) + b)
//   grad_pre = act'(y) * grad_y                     (depthwise_conv3x3_activation_backward)
//   grad_x   = conv(grad_pre, w rotated 180°)       (depthwise_conv3x3)
//   grad_w, grad_b = reduction of x * grad_pre       (depthwise_conv3x3_backward_weight)
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "depthwise_conv3x3.h"

namespace mesrgan {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The ops, called through the dispatcher (below autograd in a forward, through it in a backward).
at::Tensor op_forward(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                      const std::string& act, double slope) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mesrgan::depthwise_conv3x3", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                               const std::string&, double)>();
  return op.call(x, w, b, act, slope);
}

std::tuple<at::Tensor, at::Tensor> op_backward_weight(const at::Tensor& x, const at::Tensor& g, bool need_bias) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mesrgan::depthwise_conv3x3_backward_weight", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(x, g, need_bias);
}

at::Tensor op_activation_backward(const at::Tensor& g, const at::Tensor& y, const std::string& act, double slope) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mesrgan::depthwise_conv3x3_activation_backward", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::string&, double)>();
  return op.call(g, y, act, slope);
}

at::Tensor rotate180(const at::Tensor& w) { return w.flip({2, 3}); }

class ForwardFn : public torch::autograd::Function<ForwardFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const c10::optional<at::Tensor>& b, const std::string& act, double slope) {
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      y = op_forward(x, w, b, act, slope);
    }
    const bool has_bias = b.has_value() && b->defined();
    ctx->saved_data["act"] = act;
    ctx->saved_data["slope"] = slope;
    ctx->saved_data["has_bias"] = has_bias;
    // The output only when the activation's slope must be read from it.
    ctx->save_for_backward({x, w, act == "none" ? at::Tensor() : y});
    ctx->set_materialize_grads(false);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& w = saved[1];
    const std::string act = ctx->saved_data["act"].toStringRef();
    const double slope = ctx->saved_data["slope"].toDouble();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // needs_input_grad counts the tensor inputs only: x, w and (when given) b.
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1);
    const bool need_b = has_bias && ctx->needs_input_grad(2);
    at::Tensor gx, gw, gb;
    const at::Tensor& gy = grads[0];
    if (gy.defined() && (need_x || need_w || need_b)) {
      const at::Tensor g = act == "none" ? gy : op_activation_backward(gy, saved[2], act, slope);
      if (need_x) gx = op_forward(g, rotate180(w), c10::nullopt, "none", 0.0);
      if (need_w) {
        auto [sw, sb] = op_backward_weight(x, g, need_b);
        gw = sw;
        if (need_b) gb = sb;
      } else if (need_b) {
        gb = g.sum({0, 2, 3});
      }
    }
    // One entry per forward argument: x, w, b, activation, negative_slope.
    return {gx, gw, gb, at::Tensor(), at::Tensor()};
  }
};

class BackwardWeightFn : public torch::autograd::Function<BackwardWeightFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& g, bool need_bias) {
    at::Tensor gw, gb;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(gw, gb) = op_backward_weight(x, g, need_bias);
    }
    ctx->saved_data["need_bias"] = need_bias;
    ctx->save_for_backward({x, g});
    ctx->set_materialize_grads(false);
    if (!need_bias) ctx->mark_non_differentiable({gb});
    return {gw, gb};
  }

  // grad_weight[c, i, j] = sum over (n, h, w) of x[n, c, h+i-1, w+j-1] * g[n, c, h, w]: linear in
  // each of x and g, so its derivative in g is the forward op on x with weight gg_w, and in x the
  // forward op on g with gg_w rotated 180°. grad_bias = sum of g: its derivative in g is gg_b
  // broadcast over (N, H, W).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& g = saved[1];
    const bool need_bias = ctx->saved_data["need_bias"].toBool();
    const bool need_x = ctx->needs_input_grad(0), need_g = ctx->needs_input_grad(1);
    const at::Tensor& gg_w = grads[0];
    const at::Tensor& gg_b = grads[1];
    at::Tensor gx, gg;
    if (gg_w.defined()) {
      if (need_x) gx = op_forward(g, rotate180(gg_w), c10::nullopt, "none", 0.0);
      if (need_g) gg = op_forward(x, gg_w, c10::nullopt, "none", 0.0);
    }
    if (need_g && need_bias && gg_b.defined() && gg_b.numel() > 0) {
      const at::Tensor gb = gg_b.view({1, -1, 1, 1}).expand_as(g);
      gg = gg.defined() ? gg + gb : gb;
    }
    return {gx, gg, at::Tensor()};
  }
};

class ActivationBackwardFn : public torch::autograd::Function<ActivationBackwardFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& g, const at::Tensor& y, const std::string& act,
                            double slope) {
    at::Tensor r;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      r = op_activation_backward(g, y, act, slope);
    }
    ctx->saved_data["act"] = act;
    ctx->saved_data["slope"] = slope;
    ctx->save_for_backward({y});
    ctx->set_materialize_grads(false);
    return r;
  }

  // Linear in g with the same mask; the mask is piecewise constant in y (zero derivative there).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    at::Tensor gg;
    if (grads[0].defined() && ctx->needs_input_grad(0)) {
      gg = op_activation_backward(grads[0], saved[0], ctx->saved_data["act"].toStringRef(),
                                  ctx->saved_data["slope"].toDouble());
    }
    return {gg, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor forward_autograd(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                            const std::string& act, double slope) {
  return ForwardFn::apply(x, w, b, act, slope);
}

std::tuple<at::Tensor, at::Tensor> backward_weight_autograd(const at::Tensor& x, const at::Tensor& g,
                                                            bool need_bias) {
  auto r = BackwardWeightFn::apply(x, g, need_bias);
  return {r[0], r[1]};
}

at::Tensor activation_backward_autograd(const at::Tensor& g, const at::Tensor& y, const std::string& act,
                                        double slope) {
  return ActivationBackwardFn::apply(g, y, act, slope);
}

}  // namespace

TORCH_LIBRARY_IMPL(mesrgan, Autograd, m) {
  m.impl("depthwise_conv3x3", &forward_autograd);
  m.impl("depthwise_conv3x3_backward_weight", &backward_weight_autograd);
  m.impl("depthwise_conv3x3_activation_backward", &activation_backward_autograd);
}

}  // namespace mesrgan
