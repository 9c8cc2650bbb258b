// Declarations of the bottleneck block's tile kernels (bottleneck_tiles.h), per instruction set.
#pragma once
#include <cstdint>

#include "cpu/isa.h"

namespace mesrgan {
namespace cpu {
#define MESRGAN_DECLARE_TILES(NS)                                                                         \
  namespace NS {                                                                                          \
  namespace tiles {                                                                                       \
  template <typename T>                                                                                   \
  void dw_forward(const T* h1, const T* wt, const T* bias, T* h2, int64_t rows, int64_t W, int64_t C,     \
                  T slope);                                                                               \
  template <typename T>                                                                                   \
  void dw_backward_input(const T* g2, const T* wt_rot, const T* h1, T* g1, int64_t rows, int64_t W,       \
                         int64_t C, T slope);                                                             \
  template <typename T>                                                                                   \
  void dw_backward_weight(const T* h1, const T* g2, T* gw, T* gb, int64_t rows, int64_t W, int64_t C);    \
  template <typename T>                                                                                   \
  void bias_leaky(T* x, int64_t ld, const T* bias, int64_t P, int64_t C, T slope);                        \
  template <typename T>                                                                                   \
  void add_bias_skip(T* y, int64_t ld, const T* bias, const T* skip, int64_t ld_skip, int64_t P,          \
                     int64_t C);                                                                          \
  template <typename T>                                                                                   \
  void leaky_mask(T* g, const T* y, int64_t n, T slope);                                                  \
  template <typename T>                                                                                   \
  void column_sum(const T* g, int64_t ld, int64_t P, int64_t C, T* out);                                  \
  }                                                                                                       \
  }
MESRGAN_DECLARE_TILES(base)
#ifdef MESRGAN_HAVE_X86_KERNELS
MESRGAN_DECLARE_TILES(avx2)
MESRGAN_DECLARE_TILES(avx512)
#endif
#undef MESRGAN_DECLARE_TILES
}  // namespace cpu
}  // namespace mesrgan
