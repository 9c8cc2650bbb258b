// The CPU's instruction sets, as the CPU kernels see them: one enum for every op, so that the
// depthwise op, the fused block's tiles and its GEMM all agree on what the CPU runs.
#pragma once

// Our x86 copies of the kernels (AVX2, AVX-512) are compiled with `#pragma GCC target`, which only
// GCC and Clang know; elsewhere only the baseline copies exist.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MESRGAN_HAVE_X86_KERNELS 1
#endif

namespace mesrgan {
namespace cpu {

// Ordered: each one includes the ones before it.
enum class Isa : int {
  kBase,    // the build's baseline instruction set
  kAvx2,    // AVX2 + FMA
  kAvx512,  // AVX-512 F + VL (with AVX2 + FMA)
};

// The set the kernels run: the widest the CPU has, or less when MESRGAN_CPU_ISA asks for less (for
// testing): "base" or "avx2". Read once per process.
Isa cpu_isa();

// The widest set the CPU has, whatever MESRGAN_CPU_ISA says: a GEMM asked for by name
// (MESRGAN_CPU_GEMM) runs when the CPU has it.
Isa cpu_isa_available();

// "base", "avx2" or "avx512": the names MESRGAN_CPU_ISA and torch.ops.mesrgan._cpu_tile_isa() use.
const char* isa_name(Isa isa);

// Whether the CPU is Intel's (the GEMM choice depends on it).
bool cpu_is_intel();

}  // namespace cpu
}  // namespace mesrgan
