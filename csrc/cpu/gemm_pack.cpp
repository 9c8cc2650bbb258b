// Packing B for the GEMMs of gemm.h: once per call, one pass over the block's weights.
#include "cpu/gemm.h"

namespace mesrgan {
namespace cpu {
namespace gemm {

int64_t packed_size(int64_t K, int64_t N) { return K * ((N + kNR - 1) / kNR) * kNR; }

BMatrix pack_b(const float* src, int64_t K, int64_t N, int64_t ks, int64_t js, float* dst) {
  const int64_t panels = (N + kNR - 1) / kNR;
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < kNR; ++c) {
        const int64_t j = p * kNR + c;
        dst[(p * K + k) * kNR + c] = j < N ? src[k * ks + j * js] : 0.0f;
      }
  return BMatrix{dst, kNR, K * kNR};
}

}  // namespace gemm
}  // namespace cpu
}  // namespace mesrgan
