// The activation the depthwise op fuses into its output write: one enum for the schema's checks,
// the CPU kernels (which see no torch headers) and the CUDA kernels.
#pragma once

namespace mesrgan {

enum class Activation : int { None = 0, ReLU = 1, ReLU6 = 2, LeakyReLU = 3 };

}  // namespace mesrgan
