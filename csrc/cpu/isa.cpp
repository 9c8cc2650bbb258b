// CPU feature detection and MESRGAN_CPU_ISA.
#include "cpu/isa.h"

#include <cstdlib>
#include <string>

namespace mesrgan {
namespace cpu {
namespace {

Isa detect() {
#ifdef MESRGAN_HAVE_X86_KERNELS
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return Isa::kBase;
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512vl")) return Isa::kAvx2;
  return Isa::kAvx512;
#else
  return Isa::kBase;
#endif
}

// MESRGAN_CPU_ISA caps the detected set; unset or any other value leaves it.
Isa capped(Isa have) {
  const char* env = std::getenv("MESRGAN_CPU_ISA");
  const std::string want = env ? env : "";
  if (want == "base") return Isa::kBase;
  if (want == "avx2" && have > Isa::kAvx2) return Isa::kAvx2;
  return have;
}

}  // namespace

Isa cpu_isa_available() {
  static const Isa isa = detect();
  return isa;
}

Isa cpu_isa() {
  static const Isa isa = capped(cpu_isa_available());
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "base";
  }
}

bool cpu_is_intel() {
#ifdef MESRGAN_HAVE_X86_KERNELS
  static const bool intel = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("intel") != 0;
  }();
  return intel;
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace mesrgan
