// Ops that say which CPU kernels run, for tests and benchmarks.
#include <torch/library.h>

#include <string>

#include "cpu/bf16.h"
#include "cpu/gemm_bf16.h"
#include "cpu/gemm_choice.h"
#include "cpu/isa.h"

namespace mesrgan {
namespace {

// The fused block's tile kernels in use: "avx512", "avx2" or "base".
std::string cpu_tile_isa() { return cpu::isa_name(cpu::cpu_isa()); }

// The float32 GEMM in use ("avx512", "avx2" or "blas"); `which` = "own", "avx2", "avx512", "blas" or
// "default" first changes it (the calls already running keep theirs). A kernel the CPU lacks falls
// back to the nearest it has, so the answer says what runs.
std::string cpu_gemm(const std::string& which) {
  TORCH_CHECK_VALUE(which.empty() || which == "own" || which == "avx2" || which == "avx512" || which == "blas" ||
                        which == "default",
                    "_cpu_gemm: which must be 'own', 'avx2', 'avx512', 'blas' or 'default', got '", which, "'");
  if (!which.empty()) cpu::choose_gemm(which);
  return cpu::gemm_name(cpu::gemm_in_use());
}

// The bfloat16 <-> float32 conversion in use: "avx512_bf16", "avx512", "avx2" or "base".
std::string cpu_bf16_convert() { return cpu::bf16_convert_name(); }

// The fused block's bfloat16 forward GEMMs: "avx512_bf16" (vdpbf16ps on bfloat16 operands) or
// "float32" (the float32 GEMMs on widened rows).
std::string cpu_bf16_gemm() { return cpu::gemm::use_gemm_bf16() ? "avx512_bf16" : "float32"; }

}  // namespace

TORCH_LIBRARY_FRAGMENT(mesrgan, m) {
  m.def("_cpu_bf16_convert() -> str", &cpu_bf16_convert);
  m.def("_cpu_bf16_gemm() -> str", &cpu_bf16_gemm);
  m.def("_cpu_tile_isa() -> str", &cpu_tile_isa);
  m.def("_cpu_gemm(str which=\"\") -> str", &cpu_gemm);
}

}  // namespace mesrgan
