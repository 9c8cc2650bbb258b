// Helpers shared by the CUDA kernels of depthwise_conv3x3.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "depthwise_conv3x3.h"

namespace mesrgan {
namespace cuda {

// Float32, float16 and bfloat16 only; accumulation is always float32.
#define MESRGAN_DISPATCH_CUDA_TYPES(TYPE, NAME, ...)                     \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

// NaN falls through each activation unchanged, as in F.relu / F.relu6 / F.leaky_relu.
__device__ __forceinline__ float activate(float v, Activation act, float slope) {
  switch (act) {
    case Activation::ReLU:
      return v < 0.f ? 0.f : v;
    case Activation::ReLU6:
      return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
    case Activation::LeakyReLU:
      return v < 0.f ? v * slope : v;
    default:
      return v;
  }
}

// A vector of VEC elements moved with one load / store of VEC * sizeof(T) bytes.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

inline int multiprocessor_count(int device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

inline bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace cuda
}  // namespace mesrgan
