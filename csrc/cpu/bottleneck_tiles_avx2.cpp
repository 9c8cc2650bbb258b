// The bottleneck block's tile kernels for AVX2 + FMA; chosen at run time when the CPU has them.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cstdint>  // standard headers first, so that none of them is compiled for AVX2
#pragma GCC target("avx2,fma")
#define MESRGAN_CPU_NS avx2
#include "bottleneck_tiles.h"
#endif
