// What the bfloat16 block's forward (bottleneck_bf16.cpp) and backward (bottleneck_bf16_backward.cpp)
// share: bfloat16 rows <-> float32 scratch, the weights packed for the bfloat16 GEMM, and the GEMMs
// whose A operand is a band's bfloat16 rows.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "cpu/bottleneck_block_cpu.h"
#include "cpu/gemm_bf16.h"

namespace mesrgan {
namespace cpu {
namespace bf16 {

using bottleneck::Block;
using bottleneck::Dims;
using bottleneck::Epilogue;

inline const uint16_t* bits(const at::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
}
inline uint16_t* bits_mut(const at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

// The first pixel of row r of image n of an NHWC tensor whose pixels are ld apart.
template <typename T>
T* pixel_row(T* base, const Dims& d, int64_t ld, int64_t n, int64_t r) {
  return base + (n * d.H + r) * d.W * ld;
}

// P pixels of C channels: bfloat16 ld_src apart -> dense float32. One conversion call when the
// pixels are dense (a whole tensor's rows), one per pixel in a dense block's buffer.
void widen_pixels(const uint16_t* src, int64_t ld_src, float* dst, int64_t P, int64_t C);

// P pixels of C channels: dense float32 -> bfloat16 ld_dst apart, rounded to nearest-even.
void narrow_pixels(const float* src, uint16_t* dst, int64_t ld_dst, int64_t P, int64_t C);

// B for the bfloat16 GEMM (gemm_bf16.h), when it runs, packed from the float32 copies of the weights
// (exact: they were bfloat16): the forward's W1^T (expand) and W2^T (project), the backward's W1^T,
// W2 (project_t) and W1 (expand_t).
struct Bf16Weights {
  bool on = false;
  gemm::BMatrixBf16 expand, project, project_t, expand_t;
};
Bf16Weights pack_bf16_weights(const Block<float>& k, bool backward, std::vector<at::Tensor>& keep);

// C (P x N, dense) = A . B then ep, A being P pixels of bfloat16 (lda apart) and B the bfloat16
// GEMM's; the block's LeakyReLU slope.
void gemm_bf16(int64_t P, int64_t N, int64_t K, const uint16_t* A, int64_t lda, const gemm::BMatrixBf16& B, float* C,
               Epilogue<float> ep, float slope);

// h1 = LeakyReLU(x W1^T + b1) for P pixels of x (bfloat16, ld_x apart) into out (dense float32): the
// bfloat16 GEMM on x in place, or x widened into `widened` (P x c_in floats) and the float32 GEMM.
void expand_pixels(const Block<float>& k, const Bf16Weights& wb, const uint16_t* x, int64_t ld_x, int64_t P,
                   float* widened, float* out);

}  // namespace bf16
}  // namespace cpu
}  // namespace mesrgan
