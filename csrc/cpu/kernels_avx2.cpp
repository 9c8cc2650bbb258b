// The CPU kernels again, compiled for AVX2 + FMA; chosen at run time when the CPU has them.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <algorithm>
#include <cstdint>
#include <cstring>
#pragma GCC target("avx2,fma")
#define MESRGAN_CPU_NS avx2
#include "kernels.h"
#endif
