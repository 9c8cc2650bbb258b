// The CPU kernels again, compiled for AVX2 + FMA; chosen at run time when the CPU has them.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// Every standard header kernels.h uses comes first, so that none of it is compiled for AVX2.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#pragma GCC target("avx2,fma")
#define MESRGAN_CPU_NS avx2
#include "kernels.h"
#endif
