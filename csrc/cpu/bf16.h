// bfloat16 <-> float32 for the CPU kernels, which compute bfloat16 tensors in float32: loads are
// widened (a bfloat16 is the top half of a float32, so widening is a shift), results are rounded
// to nearest-even on the way out, as c10::BFloat16 rounds. No torch headers: bits are uint16_t.
#pragma once
#include <cstdint>
#include <cstring>

namespace mesrgan {
namespace cpu {

inline float bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round to nearest, ties to even; a NaN stays a (quiet) NaN instead of rounding up into infinity.
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// n values at a time, vectorised for the CPU (AVX2 or AVX-512; AVX512_BF16's rounding instruction
// where the CPU has it and MESRGAN_CPU_ISA allows AVX-512). Chosen once per process.
struct Bf16Convert {
  void (*to_float)(const uint16_t* src, float* dst, int64_t n);
  void (*from_float)(const float* src, uint16_t* dst, int64_t n);
};
const Bf16Convert& bf16_convert();

// The name of the conversion in use ("base", "avx2", "avx512" or "avx512_bf16"), for the tests.
const char* bf16_convert_name();

}  // namespace cpu
}  // namespace mesrgan
