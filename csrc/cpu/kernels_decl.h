// Declarations of the CPU inner kernels in kernels.h, for each instruction-set namespace.
#pragma once
#include <cstdint>

#include "activation.h"
#include "cpu/isa.h"

namespace mesrgan {
namespace cpu {
#define MESRGAN_DECLARE(NS)                                                                                        \
  namespace NS {                                                                                                   \
  template <typename T>                                                                                            \
  void fwd_nchw(const T* x, const T* weight, const T* bias, T* y, int64_t C, int64_t H, int64_t W,                 \
                int64_t band_rows, int64_t unit_begin, int64_t unit_end, Activation act, T slope);                 \
  template <typename T>                                                                                            \
  void fwd_nhwc(const T* x, const T* wt, const T* bias, T* y, int64_t C, int64_t H, int64_t W, int64_t row_begin,  \
                int64_t row_end, Activation act, T slope);                                                         \
  template <typename T>                                                                                            \
  void bwdw_nchw(const T* x, const T* g, int64_t H, int64_t W, int64_t plane_begin, int64_t plane_end,             \
                 double* out);                                                                                     \
  template <typename T>                                                                                            \
  void bwdw_nhwc(const T* x, const T* g, int64_t C, int64_t H, int64_t W, int64_t row_begin, int64_t row_end,      \
                 double* out);                                                                                     \
  template <typename T>                                                                                            \
  void act_bwd(const T* g, const T* y, T* r, int64_t begin, int64_t end, Activation act, T slope);                 \
  }
MESRGAN_DECLARE(base)
#ifdef MESRGAN_HAVE_X86_KERNELS
MESRGAN_DECLARE(avx2)
#endif
#undef MESRGAN_DECLARE
}  // namespace cpu
}  // namespace mesrgan
