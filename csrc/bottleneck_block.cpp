// Schema of the fused bottleneck block op and its argument checks (shared by every backend).
#include "bottleneck_block.h"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace mesrgan {
namespace {

constexpr const char* kOp = "bottleneck_block";

void check_float(const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16, kOp, ": ", name,
                   " must be float32, float64 or bfloat16 on CPU, got ", dt, " on ", t.device());
}

void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), kOp, ": ", name, " dtype must match x (", x.scalar_type(),
                   "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), kOp, ": ", name, " must be on x's device (", x.device(), "), got ",
              t.device());
}

void check_bias(const c10::optional<at::Tensor>& b, int64_t size, const at::Tensor& x, const char* name) {
  if (!b.has_value() || !b->defined()) return;
  TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == size, kOp, ": ", name, " must have shape (", size, ",), got ",
                    b->sizes());
  check_like_x(*b, x, name);
}

}  // namespace

void check_bottleneck_args(const at::Tensor& x, const at::Tensor& expand_weight,
                           const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                           const c10::optional<at::Tensor>& dw_bias, const at::Tensor& project_weight,
                           const c10::optional<at::Tensor>& project_bias, bool skip, double negative_slope) {
  TORCH_CHECK_VALUE(x.dim() == 4, kOp, ": x must be 4-D (N, C_in, H, W), got shape ", x.sizes());
  check_float(x, "x");
  const int64_t c_in = x.size(1);
  TORCH_CHECK_VALUE(expand_weight.dim() == 4 && expand_weight.size(1) == c_in && expand_weight.size(2) == 1 &&
                        expand_weight.size(3) == 1 && expand_weight.size(0) >= 1,
                    kOp, ": expand_weight must have shape (hidden, C_in, 1, 1) with C_in = ", c_in, ", got ",
                    expand_weight.sizes());
  check_like_x(expand_weight, x, "expand_weight");
  const int64_t hidden = expand_weight.size(0);
  TORCH_CHECK_VALUE(dw_weight.dim() == 4 && dw_weight.size(0) == hidden && dw_weight.size(1) == 1 &&
                        dw_weight.size(2) == 3 && dw_weight.size(3) == 3,
                    kOp, ": dw_weight must have shape (hidden, 1, 3, 3) = (", hidden, ", 1, 3, 3), got ",
                    dw_weight.sizes());
  check_like_x(dw_weight, x, "dw_weight");
  TORCH_CHECK_VALUE(project_weight.dim() == 4 && project_weight.size(1) == hidden && project_weight.size(2) == 1 &&
                        project_weight.size(3) == 1 && project_weight.size(0) >= 1,
                    kOp, ": project_weight must have shape (C_out, hidden, 1, 1) with hidden = ", hidden, ", got ",
                    project_weight.sizes());
  check_like_x(project_weight, x, "project_weight");
  const int64_t c_out = project_weight.size(0);
  check_bias(expand_bias, hidden, x, "expand_bias");
  check_bias(dw_bias, hidden, x, "dw_bias");
  check_bias(project_bias, c_out, x, "project_bias");
  TORCH_CHECK_VALUE(!skip || c_in == c_out, kOp, ": skip needs C_in == C_out, got C_in = ", c_in, " and C_out = ",
                    c_out);
  TORCH_CHECK_VALUE(negative_slope >= 0.0, kOp, ": negative_slope must be >= 0 (the backward reads the "
                    "activation's slope from the sign of its output), got ", negative_slope);
}

TORCH_LIBRARY_FRAGMENT(mesrgan, m) {
  m.def("bottleneck_block(Tensor x, Tensor expand_weight, Tensor? expand_bias, Tensor dw_weight, Tensor? dw_bias, "
        "Tensor project_weight, Tensor? project_bias, bool skip=False, float negative_slope=0.2) -> Tensor");
  // Recomputes the hidden activations tile by tile. output_mask: which of (x, expand_weight,
  // expand_bias, dw_weight, dw_bias, project_weight, project_bias) need a gradient; the others come
  // back as empty tensors.
  m.def("bottleneck_block_backward(Tensor grad_out, Tensor x, Tensor expand_weight, Tensor? expand_bias, "
        "Tensor dw_weight, Tensor? dw_bias, Tensor project_weight, bool skip, float negative_slope, "
        "bool[7] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // For a dense block's layers that read and write channel slices of one channels_last buffer
  // (mesrgan/ops/dense.py), in eager mode only: the forward into `out`, and the backward that writes
  // or accumulates x's gradient into `grad_x` (when output_mask[0]) and returns the six weight
  // gradients. Neither has autograd: they are the pieces of a Function's forward and backward.
  m.def("_bottleneck_block_out(Tensor x, Tensor expand_weight, Tensor? expand_bias, Tensor dw_weight, "
        "Tensor? dw_bias, Tensor project_weight, Tensor? project_bias, bool skip, float negative_slope, "
        "Tensor(a!) out) -> ()");
  m.def("_bottleneck_block_backward_into(Tensor grad_out, Tensor x, Tensor expand_weight, Tensor? expand_bias, "
        "Tensor dw_weight, Tensor? dw_bias, Tensor project_weight, bool skip, float negative_slope, "
        "bool[7] output_mask, Tensor(a!) grad_x, bool accumulate) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace mesrgan
