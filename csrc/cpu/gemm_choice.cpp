// The GEMM choice of gemm_choice.h: MESRGAN_CPU_GEMM, the ISA and the CPU's vendor.
#include "cpu/gemm_choice.h"

#include <atomic>
#include <cstdlib>

namespace mesrgan {
namespace cpu {
namespace {

// What was asked for, by MESRGAN_CPU_GEMM or choose_gemm(...).
enum class GemmWant : int { kDefault = 0, kOwn, kAvx2, kAvx512, kBlas };
std::atomic<int> gemm_setting{-1};  // -1: not read from the environment yet

GemmWant parse_gemm_want(const std::string& s) {
  return s == "own" ? GemmWant::kOwn : s == "avx2" ? GemmWant::kAvx2 : s == "avx512" ? GemmWant::kAvx512
         : s == "blas" ? GemmWant::kBlas : GemmWant::kDefault;
}

GemmWant gemm_want() {
  int setting = gemm_setting.load(std::memory_order_relaxed);
  if (setting < 0) {
    const char* env = std::getenv("MESRGAN_CPU_GEMM");
    setting = static_cast<int>(parse_gemm_want(env ? env : ""));
    gemm_setting.store(setting, std::memory_order_relaxed);
  }
  return static_cast<GemmWant>(setting);
}

}  // namespace

// By default our kernel at the tiles' ISA, except on an Intel CPU with AVX-512, where MKL ran at
// 70-85 GMAC/s a core (ours not measured there). On AMD CPUs MKL is slow (it does not take its
// AVX-512 path on them) and ours is faster in both widths: see benchmarks/RESULTS.md.
Gemm gemm_in_use() {
  const GemmWant want = gemm_want();
  if (cpu_isa_available() < Isa::kAvx2 || want == GemmWant::kBlas) return Gemm::kBlas;
  if (want == GemmWant::kAvx2) return Gemm::kAvx2;
  const Gemm widest = cpu_isa() == Isa::kAvx512 ? Gemm::kAvx512 : Gemm::kAvx2;
  if (want == GemmWant::kOwn || want == GemmWant::kAvx512) return widest;
  if (cpu_isa() == Isa::kBase) return Gemm::kBlas;  // MESRGAN_CPU_ISA=base: no AVX kernel unless asked for
  return widest == Gemm::kAvx512 && cpu_is_intel() ? Gemm::kBlas : widest;
}

void choose_gemm(const std::string& which) { gemm_setting.store(static_cast<int>(parse_gemm_want(which))); }

const char* gemm_name(Gemm g) { return g == Gemm::kAvx512 ? "avx512" : g == Gemm::kAvx2 ? "avx2" : "blas"; }

gemm::Kernel gemm_kernel(Gemm g) {
  switch (g) {
#ifdef MESRGAN_HAVE_X86_KERNELS
    case Gemm::kAvx512: return &gemm::gemm_avx512;
    case Gemm::kAvx2: return &gemm::gemm_avx2;
#endif
    default: return nullptr;
  }
}

}  // namespace cpu
}  // namespace mesrgan
