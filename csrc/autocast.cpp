// The ops under torch.autocast, as PyTorch's own conv2d: a call inside an autocast region casts its
// floating inputs (x, the weights and biases) to the region's dtype and runs the op's kernel in that
// dtype, with no change to the model. The casts are ordinary differentiable ops (at::autocast's
// cached_cast, which also keeps one cast of each weight per region), so the weight gradients reach
// float32 parameters in float32 through their backward. float64 tensors are not cast, as in autocast.
//
// Registered for AutocastCPU (both ops; the CPU kernels take bfloat16) and AutocastCUDA (the
// depthwise op, whose CUDA kernels take float16 and bfloat16). The fused block has no CUDA kernel.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <string>

namespace mesrgan {
namespace {

using OptTensor = c10::optional<at::Tensor>;

// The autocast key of a device type, and the guard that keeps the redispatch from coming back here.
template <c10::DeviceType D>
struct Region {
  static constexpr c10::DispatchKey kKey =
      D == c10::DeviceType::CUDA ? c10::DispatchKey::AutocastCUDA : c10::DispatchKey::AutocastCPU;
  c10::impl::ExcludeDispatchKeyGuard guard{kKey};
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(D);
  at::Tensor cast(const at::Tensor& t) const { return at::autocast::cached_cast(dtype, t, D); }
  OptTensor cast(const OptTensor& t) const { return at::autocast::cached_cast(dtype, t, D); }
};

template <c10::DeviceType D>
at::Tensor depthwise_autocast(const at::Tensor& x, const at::Tensor& w, const OptTensor& b,
                              const std::string& activation, double slope) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mesrgan::depthwise_conv3x3", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&,
                                               const std::string&, double)>();
  const Region<D> r;
  return op.call(r.cast(x), r.cast(w), r.cast(b), activation, slope);
}

at::Tensor bottleneck_autocast_cpu(const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1,
                                   const at::Tensor& wd, const OptTensor& bd, const at::Tensor& w2,
                                   const OptTensor& b2, bool skip, double slope) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mesrgan::bottleneck_block", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&,
                                               const at::Tensor&, const OptTensor&, const at::Tensor&,
                                               const OptTensor&, bool, double)>();
  const Region<c10::DeviceType::CPU> r;
  return op.call(r.cast(x), r.cast(w1), r.cast(b1), r.cast(wd), r.cast(bd), r.cast(w2), r.cast(b2), skip, slope);
}

}  // namespace

TORCH_LIBRARY_IMPL(mesrgan, AutocastCPU, m) {
  m.impl("depthwise_conv3x3", &depthwise_autocast<c10::DeviceType::CPU>);
  m.impl("bottleneck_block", &bottleneck_autocast_cpu);
}

TORCH_LIBRARY_IMPL(mesrgan, AutocastCUDA, m) {
  m.impl("depthwise_conv3x3", &depthwise_autocast<c10::DeviceType::CUDA>);
}

}  // namespace mesrgan
