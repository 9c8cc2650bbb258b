// The vectorised conversions of bf16.h, one pair per instruction set. Each pair is a few intrinsics,
// so the copies share this file through `target` attributes rather than one file per ISA.
//
// Widening: zero-extend each 16-bit value to 32 bits and shift it into the top half. Narrowing:
// the integer form of float_to_bf16 (add 0x7fff plus the lowest kept bit, shift down), with NaNs
// blended back in; AVX512_BF16's vcvtneps2bf16 does all of it in one instruction (it treats
// denormal inputs as zero, which the integer path does not; both round normal values the same).
#include <cstdint>

#include "cpu/bf16.h"
#include "cpu/isa.h"

#ifdef MESRGAN_HAVE_X86_KERNELS
#include <immintrin.h>
#endif

namespace mesrgan {
namespace cpu {
namespace {

void to_float_base(const uint16_t* s, float* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = bf16_to_float(s[i]);
}
void from_float_base(const float* s, uint16_t* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = float_to_bf16(s[i]);
}

#ifdef MESRGAN_HAVE_X86_KERNELS

__attribute__((target("avx2,fma"))) void to_float_avx2(const uint16_t* s, float* d, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
    _mm256_storeu_ps(d + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
  }
  to_float_base(s + i, d + i, n - i);
}

__attribute__((target("avx2,fma"))) void from_float_avx2(const float* s, uint16_t* d, int64_t n) {
  const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1), quiet = _mm256_set1_epi32(0x40);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 f = _mm256_loadu_ps(s + i);
    const __m256i u = _mm256_castps_si256(f);
    const __m256i hi = _mm256_srli_epi32(u, 16);
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(bias, _mm256_and_si256(hi, one))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(hi, quiet), nan);
    // Pack the 32-bit lanes (all <= 0xffff) to 16 bits: packus works per 128-bit half, so the
    // permute brings the two halves' results together.
    const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), _mm256_castsi256_si128(p));
  }
  from_float_base(s + i, d + i, n - i);
}

__attribute__((target("avx512f,avx2,fma"))) void to_float_avx512(const uint16_t* s, float* d, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
    _mm512_storeu_ps(d + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
  to_float_avx2(s + i, d + i, n - i);
}

__attribute__((target("avx512f,avx2,fma"))) void from_float_avx512(const float* s, uint16_t* d, int64_t n) {
  const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1), quiet = _mm512_set1_epi32(0x40);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 f = _mm512_loadu_ps(s + i);
    const __m512i u = _mm512_castps_si512(f);
    const __m512i hi = _mm512_srli_epi32(u, 16);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(bias, _mm512_and_si512(hi, one))), 16);
    r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), r, _mm512_or_si512(hi, quiet));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), _mm512_cvtepi32_epi16(r));
  }
  from_float_avx2(s + i, d + i, n - i);
}

__attribute__((target("avx512f,avx512bf16,avx2,fma"))) void from_float_avx512_bf16(const float* s, uint16_t* d,
                                                                                    int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256bh b = _mm512_cvtneps_pbh(_mm512_loadu_ps(s + i));
    __builtin_memcpy(d + i, &b, sizeof(b));
  }
  from_float_avx2(s + i, d + i, n - i);
}

bool cpu_has_avx512_bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
}

#endif

struct Choice {
  Bf16Convert fn;
  const char* name;
};

Choice choose() {
#ifdef MESRGAN_HAVE_X86_KERNELS
  switch (cpu_isa()) {
    case Isa::kAvx512:
      if (cpu_has_avx512_bf16()) return {{&to_float_avx512, &from_float_avx512_bf16}, "avx512_bf16"};
      return {{&to_float_avx512, &from_float_avx512}, "avx512"};
    case Isa::kAvx2: return {{&to_float_avx2, &from_float_avx2}, "avx2"};
    default: break;
  }
#endif
  return {{&to_float_base, &from_float_base}, "base"};
}

const Choice& chosen() {
  static const Choice c = choose();
  return c;
}

}  // namespace

const Bf16Convert& bf16_convert() { return chosen().fn; }
const char* bf16_convert_name() { return chosen().name; }

}  // namespace cpu
}  // namespace mesrgan
