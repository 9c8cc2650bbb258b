// The fused block's depthwise 3x3 + LeakyReLU for its bfloat16 forward on CPUs with AVX512_BF16
// (bottleneck_bf16.cpp): the expand's bfloat16 hidden rows in, widened to float32 as they are
// loaded; the rows the project GEMM reads out, rounded to bfloat16 as they are stored (one pass where
// there were two: the float32 tile kernel, then a rounding pass over its float32 output).
#pragma once
#include <cstdint>

#include "cpu/isa.h"

namespace mesrgan {
namespace cpu {
namespace bf16 {

#ifdef MESRGAN_HAVE_X86_KERNELS
// h2b rows [0, rows) = bfloat16(LeakyReLU(bias + depthwise 3x3 of h1)), zero padding left and right,
// rounded to nearest-even. h1 points at the row above output row 0 (rows + 2 rows of W pixels of C
// bfloat16 values, zero rows where outside the image); wt is tap-major (9, C) float32; bias (C) or null.
// h2b: rows of W pixels of C bfloat16 values, dense.
void dw_forward_to_bf16_avx512(const uint16_t* h1, const float* wt, const float* bias, uint16_t* h2b, int64_t rows,
                               int64_t W, int64_t C, float slope);
#endif

}  // namespace bf16
}  // namespace cpu
}  // namespace mesrgan
