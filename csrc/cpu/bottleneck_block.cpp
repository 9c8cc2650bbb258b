// The fused block's Block (bottleneck_block_cpu.h): its weights in the kernels' layouts, and the
// tensors' layouts as its kernels read and write them.
#include "cpu/bottleneck_block_cpu.h"

#include "cpu/gemm_choice.h"
#include "depthwise_conv3x3.h"

namespace mesrgan {
namespace cpu {
namespace bottleneck {

namespace {

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

at::Tensor channels_last(const at::Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }

}  // namespace

Dims dims_of(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2) {
  return {x.size(0), x.size(2), x.size(3), x.size(1), w1.size(0), w2.size(0)};
}

const at::Tensor* opt(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined() ? &*t : nullptr; }

template <typename T>
Block<T> make_block(const Dims& d, const T* x, int64_t ld_x, const at::Tensor& w1, const at::Tensor& b1,
                    const at::Tensor& wd, const at::Tensor& bd, const at::Tensor& w2, const at::Tensor& b2, bool skip,
                    double slope, bool rotated, std::vector<at::Tensor>& keep, bool pack_own_gemm) {
  keep = {w1.reshape({d.hidden, d.c_in}).contiguous(), wd.reshape({d.hidden, 9}).t().contiguous(),
          rotated ? wd.flip({2, 3}).reshape({d.hidden, 9}).t().contiguous() : at::Tensor(),
          w2.reshape({d.c_out, d.hidden}).contiguous(),
          b1.defined() ? b1.contiguous() : b1, bd.defined() ? bd.contiguous() : bd,
          b2.defined() ? b2.contiguous() : b2};
  Block<T> k{d, x, ld_x, keep[0].data_ptr<T>(), ptr_or_null<T>(keep[4]), keep[1].data_ptr<T>(),
             ptr_or_null<T>(keep[2]), ptr_or_null<T>(keep[5]), keep[3].data_ptr<T>(), ptr_or_null<T>(keep[6]),
             skip, static_cast<T>(slope), cpu::kernels<T>().tiles, nullptr, OwnWeights{}};
  if constexpr (std::is_same_v<T, float>) {
    const cpu::gemm::Kernel gemm = pack_own_gemm ? cpu::gemm_kernel(cpu::gemm_in_use()) : nullptr;
    if (gemm) {
      // Packing all four costs one pass over the weights, nothing beside the GEMMs over the pixels.
      namespace g = cpu::gemm;
      const int64_t sizes[4] = {g::packed_size(d.c_in, d.hidden), g::packed_size(d.hidden, d.c_out),
                                g::packed_size(d.c_out, d.hidden), g::packed_size(d.hidden, d.c_in)};
      at::Tensor packed = at::empty({sizes[0] + sizes[1] + sizes[2] + sizes[3]}, w1.options());
      float* p = packed.data_ptr<float>();
      const float* w1p = k.w1;
      const float* w2p = k.w2;
      k.own.expand = g::pack_b(w1p, d.c_in, d.hidden, 1, d.c_in, p);                          // W1^T
      k.own.project = g::pack_b(w2p, d.hidden, d.c_out, 1, d.hidden, p += sizes[0]);          // W2^T
      k.own.project_t = g::pack_b(w2p, d.c_out, d.hidden, d.hidden, 1, p += sizes[1]);        // W2
      k.own.expand_t = g::pack_b(w1p, d.hidden, d.c_in, d.c_in, 1, p += sizes[2]);            // W1
      keep.push_back(packed);
      k.own_gemm = gemm;
    }
  }
  return k;
}

int64_t pixel_stride(const at::Tensor& t) {
  const int64_t N = t.size(0), C = t.size(1), H = t.size(2), W = t.size(3);
  if (C > 1 && t.stride(1) != 1) return 0;
  const int64_t ld = W > 1 ? t.stride(3) : H > 1 ? t.stride(2) : N > 1 ? t.stride(0) : C;
  if (ld < C || (H > 1 && t.stride(2) != W * ld) || (N > 1 && t.stride(0) != H * W * ld)) return 0;
  return ld;
}

Nhwc as_nhwc(const at::Tensor& t) {
  const int64_t ld = t.numel() > 0 ? pixel_stride(t) : 0;
  if (ld > 0) return {t, ld};
  at::Tensor c = channels_last(t);
  return {c, std::max<int64_t>(c.size(1), 1)};
}

at::Tensor in_callers_format(const at::Tensor& t, const at::Tensor& like) {
  return prefers_channels_last(like) ? t : t.contiguous();
}

at::Tensor defined_or_empty(const c10::optional<at::Tensor>& t) { return opt(t) ? *t : at::Tensor(); }

void check_destination(const at::Tensor& t, const at::Tensor& x, int64_t c, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4 && t.size(0) == x.size(0) && t.size(1) == c && t.size(2) == x.size(2) &&
                        t.size(3) == x.size(3),
                    op, ": ", name, " must have shape (", x.size(0), ", ", c, ", ", x.size(2), ", ", x.size(3),
                    "), got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type() && t.device() == x.device(), op, ": ", name,
                   " must match x's dtype and device (", x.scalar_type(), ", ", x.device(), "), got ",
                   t.scalar_type(), ", ", t.device());
  TORCH_CHECK_VALUE(t.numel() == 0 || pixel_stride(t) > 0, op, ": ", name,
                    " must be channels_last or a channel slice of a channels_last tensor, got strides ", t.strides());
}

template Block<float> make_block<float>(const Dims&, const float*, int64_t, const at::Tensor&, const at::Tensor&,
                                       const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       bool, double, bool, std::vector<at::Tensor>&, bool);
template Block<double> make_block<double>(const Dims&, const double*, int64_t, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         bool, double, bool, std::vector<at::Tensor>&, bool);

}  // namespace bottleneck
}  // namespace cpu
}  // namespace mesrgan
