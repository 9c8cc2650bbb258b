// The dispatch table of dispatch.h: which copy of each kernel runs on each instruction set.
#include "cpu/dispatch.h"

namespace mesrgan {
namespace cpu {
namespace {

#define MESRGAN_DEPTHWISE_ROW(NS) \
  DepthwiseKernels<T> { &NS::fwd_nchw<T>, &NS::fwd_nhwc<T>, &NS::bwdw_nchw<T>, &NS::bwdw_nhwc<T>, &NS::act_bwd<T> }
#define MESRGAN_TILES_ROW(NS)                                                                                  \
  TileKernels<T> {                                                                                             \
    &NS::tiles::dw_forward<T>, &NS::tiles::dw_backward_input<T>, &NS::tiles::dw_backward_weight<T>,            \
        &NS::tiles::bias_leaky<T>, &NS::tiles::add_bias_skip<T>, &NS::tiles::leaky_mask<T>,                    \
        &NS::tiles::column_sum<T>                                                                              \
  }

template <typename T>
Kernels<T> row(Isa isa) {
  switch (isa) {
#ifdef MESRGAN_HAVE_X86_KERNELS
    // kernels.h has no AVX-512 copy (the depthwise op is compiled for base and AVX2 only).
    case Isa::kAvx512: return {MESRGAN_DEPTHWISE_ROW(avx2), MESRGAN_TILES_ROW(avx512)};
    case Isa::kAvx2: return {MESRGAN_DEPTHWISE_ROW(avx2), MESRGAN_TILES_ROW(avx2)};
#endif
    default: return {MESRGAN_DEPTHWISE_ROW(base), MESRGAN_TILES_ROW(base)};
  }
}

#undef MESRGAN_DEPTHWISE_ROW
#undef MESRGAN_TILES_ROW

}  // namespace

template <typename T>
const Kernels<T>& kernels() {
  static const Kernels<T> k = row<T>(cpu_isa());
  return k;
}

template const Kernels<float>& kernels<float>();
template const Kernels<double>& kernels<double>();

}  // namespace cpu
}  // namespace mesrgan
