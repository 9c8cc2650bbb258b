// The bottleneck block's tile kernels for AVX-512 (F, with 512-bit vectors preferred); chosen at run
// time when the CPU has it. The channel loops are vectorised 16 floats wide instead of 8.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cstdint>  // standard headers first, so that none of them is compiled for AVX-512
#pragma GCC target("avx512f,avx512vl,avx2,fma", "prefer-vector-width=512")
#define MESRGAN_CPU_NS avx512
#include "bottleneck_tiles.h"
#endif
