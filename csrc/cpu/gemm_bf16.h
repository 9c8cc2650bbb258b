// A GEMM with bfloat16 operands and float32 accumulation for the fused block's bfloat16 forward and
// backward, on CPUs with AVX512_BF16 (vdpbf16ps: 16 lanes, each the dot product of two bfloat16 pairs added to a
// float32). C (M x N, float32) = A (M x K, bfloat16, row-major) . B (K x N, bfloat16, packed by
// pack_b_bf16) then gemm.h's Epilogue. Each product of two bfloat16 values is exact in float32; the
// sums are float32, as in the float32 kernels (in another order).
#pragma once
#include <cstdint>

#include "cpu/gemm.h"

namespace mesrgan {
namespace cpu {
namespace gemm {

// B packed for vdpbf16ps: panels of kNR columns; in a panel, rows k and k + 1 (k even) interleaved
// as 16 pairs (B[k][j], B[k+1][j]), one 32-bit lane per column; an odd K and the columns past N are
// padded with zeros. Element (k, j) is at p[(j / kNR) * panel_stride + (k / 2) * 2 * kNR + (j % kNR) * 2 + k % 2].
struct BMatrixBf16 {
  const uint16_t* p = nullptr;
  int64_t panel_stride = 0;
};

int64_t packed_size_bf16(int64_t K, int64_t N);
// B's element (k, j) is the float src[k * ks + j * js], rounded to bfloat16 (exact for weights
// that were bfloat16).
BMatrixBf16 pack_b_bf16(const float* src, int64_t K, int64_t N, int64_t ks, int64_t js, uint16_t* dst);

#ifdef MESRGAN_HAVE_X86_KERNELS
// A's rows are lda elements apart (a pixel stride: a channel slice of a buffer reads in place).
void gemm_bf16_avx512(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda, const BMatrixBf16& B, float* C,
                      int64_t ldc, const Epilogue<float>& ep);

// The same with C in bfloat16, each result rounded to nearest-even after the epilogue (its
// accumulate and mask are not supported: they read C as float32).
void gemm_bf16_avx512_to_bf16(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda, const BMatrixBf16& B,
                              uint16_t* C, int64_t ldc, const Epilogue<float>& ep);

// The same as gemm_bf16_avx512 with A packed in pairs along K, M pairs a step: the 32-bit value Ap[q * M + i] holds
// (A[i][2q], A[i][2q + 1]), low half first; an odd K's last pair has a zero high half. The weight
// gradients' form (K = a band's pixels): A = the band's bfloat16 channels (pack_pixel_pairs_bf16),
// B = float32 rows rounded (pack_rows_b_bf16), with the reduction over pixels in vdpbf16ps's pairs.
void gemm_bf16_pairs_avx512(int64_t M, int64_t N, int64_t K, const uint32_t* Ap, const BMatrixBf16& B, float* C,
                            int64_t ldc, const Epilogue<float>& ep);

// P pixels of C bfloat16 channels (pixels ld apart) as gemm_bf16_pairs_avx512's A (M = C, K = P):
// ((P + 1) / 2) * C values at dst.
void pack_pixel_pairs_bf16(const uint16_t* src, int64_t ld, int64_t P, int64_t C, uint32_t* dst);

// The K x N float32 matrix of dense rows at src, rounded, as B (packed_size_bf16(K, N) values at dst).
BMatrixBf16 pack_rows_b_bf16(const float* src, int64_t K, int64_t N, uint16_t* dst);
#endif

// Whether the bfloat16 forward uses gemm_bf16_avx512: the CPU has AVX512_BF16 and MESRGAN_CPU_ISA
// does not ask for less than AVX-512 (the float32 kernels on widened rows otherwise).
bool use_gemm_bf16();

}  // namespace gemm
}  // namespace cpu
}  // namespace mesrgan
