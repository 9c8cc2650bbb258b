// CUDA weight / bias gradient of depthwise_conv3x3:
//   grad_weight[c, i, j] = sum over (n, h, w) of grad_out[n, c, h, w] * x[n, c, h+i-1, w+j-1]
//   grad_bias[c]         = sum over (n, h, w) of grad_out[n, c, h, w]
// One pass over x and grad_out. Each thread keeps 10 float32 accumulators; a block reduces them
// (warp shuffles, then shared memory) and then either adds them to a float32 buffer with one atomic
// per value, or, when torch.use_deterministic_algorithms(True) is on, writes them to a workspace that
// a second small kernel sums in a fixed order (bitwise reproducible).
#include <ATen/Context.h>
#include <torch/library.h>

#include "cuda/common.cuh"

namespace mesrgan {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// NCHW: grid (C, splits). Block (c, s) covers rows [s * rows_per_split, ...) of the N*H rows of
// channel c, flattened with W so that narrow images keep every thread busy.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    bwdw_nchw_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ g, int64_t C, int64_t H, int64_t W,
                     int64_t rows_per_split, int64_t total_rows, float* __restrict__ out, bool deterministic) {
  const int64_t c = blockIdx.x;
  const int64_t r_begin = blockIdx.y * rows_per_split;
  const int64_t r_end = min(total_rows, r_begin + rows_per_split);
  float acc[10];
#pragma unroll
  for (int t = 0; t < 10; ++t) acc[t] = 0.f;
  const int64_t count = (r_end - r_begin) * W;
  for (int64_t e = threadIdx.x; e < count; e += kThreads) {
    const int64_t row = r_begin + e / W;  // n * H + h
    const int64_t w = e % W;
    const int64_t n = row / H, h = row % H;
    const int64_t base = (n * C + c) * H * W;
    const float gv = static_cast<float>(g[base + h * W + w]);
    acc[9] += gv;
#pragma unroll
    for (int i = 0; i < 3; ++i) {
      const int64_t hh = h + i - 1;
      if (hh < 0 || hh >= H) continue;
#pragma unroll
      for (int j = 0; j < 3; ++j) {
        const int64_t ww = w + j - 1;
        if (ww < 0 || ww >= W) continue;
        acc[i * 3 + j] = fmaf(gv, static_cast<float>(x[base + hh * W + ww]), acc[i * 3 + j]);
      }
    }
  }
  __shared__ float partial[kThreads / 32][10];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int t = 0; t < 10; ++t) {
    const float v = warp_sum(acc[t]);
    if (lane == 0) partial[warp][t] = v;
  }
  __syncthreads();
  if (threadIdx.x < 10) {
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < kThreads / 32; ++k) s += partial[k][threadIdx.x];
    if (deterministic) {
      out[(c * gridDim.y + blockIdx.y) * 10 + threadIdx.x] = s;  // workspace (C, splits, 10)
    } else {
      atomicAdd(out + c * 10 + threadIdx.x, s);  // (C, 10)
    }
  }
}

// NHWC: block (32 channels) x (8 position groups); grid (ceil(C / 32), splits). Thread (tx, ty)
// accumulates channel c over positions p = (split * 8 + ty), stepping by 8 * splits.
constexpr int kChan = 32, kGroups = 8;

template <typename scalar_t>
__global__ void __launch_bounds__(kChan* kGroups)
    bwdw_nhwc_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ g, int64_t C, int64_t H, int64_t W,
                     int64_t positions, float* __restrict__ out, bool deterministic) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(kChan) + threadIdx.x;
  float acc[10];
#pragma unroll
  for (int t = 0; t < 10; ++t) acc[t] = 0.f;
  if (c < C) {
    const int64_t step = static_cast<int64_t>(gridDim.y) * kGroups;
    for (int64_t p = static_cast<int64_t>(blockIdx.y) * kGroups + threadIdx.y; p < positions; p += step) {
      const int64_t w = p % W;
      const int64_t h = (p / W) % H;
      const float gv = static_cast<float>(g[p * C + c]);
      acc[9] += gv;
#pragma unroll
      for (int i = 0; i < 3; ++i) {
        const int64_t hh = h + i - 1;
        if (hh < 0 || hh >= H) continue;
#pragma unroll
        for (int j = 0; j < 3; ++j) {
          const int64_t ww = w + j - 1;
          if (ww < 0 || ww >= W) continue;
          const int64_t q = p + (i - 1) * W + (j - 1);  // same image: hh and ww are in range
          acc[i * 3 + j] = fmaf(gv, static_cast<float>(x[q * C + c]), acc[i * 3 + j]);
        }
      }
    }
  }
  __shared__ float partial[kGroups][10][kChan];
#pragma unroll
  for (int t = 0; t < 10; ++t) partial[threadIdx.y][t][threadIdx.x] = acc[t];
  __syncthreads();
  // 10 * 32 sums over the 8 groups, spread over the block's 256 threads.
  for (int k = threadIdx.y * kChan + threadIdx.x; k < 10 * kChan; k += kChan * kGroups) {
    const int t = k / kChan, cl = k % kChan;
    const int64_t cc = blockIdx.x * static_cast<int64_t>(kChan) + cl;
    if (cc >= C) continue;
    float s = 0.f;
#pragma unroll
    for (int q = 0; q < kGroups; ++q) s += partial[q][t][cl];
    if (deterministic) {
      out[(cc * gridDim.y + blockIdx.y) * 10 + t] = s;
    } else {
      atomicAdd(out + cc * 10 + t, s);
    }
  }
}

// Deterministic mode: sums the (C, splits, 10) workspace over splits in order.
__global__ void sum_splits_kernel(const float* __restrict__ ws, int64_t C, int64_t splits, float* __restrict__ out) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;  // c * 10 + t
  if (k >= C * 10) return;
  const int64_t c = k / 10, t = k % 10;
  float s = 0.f;
  for (int64_t q = 0; q < splits; ++q) s += ws[(c * splits + q) * 10 + t];
  out[k] = s;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> depthwise_conv3x3_backward_weight_cuda(const at::Tensor& x_in,
                                                                          const at::Tensor& grad_out_in,
                                                                          bool need_bias) {
  check_backward_weight_args(x_in, grad_out_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  Layout layout;
  const at::Tensor g = as_kernel_layout(grad_out_in, &layout);
  const at::Tensor x = in_layout(x_in, layout);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor sums = at::zeros({C, 10}, f32);
  const int64_t positions = N * H * W;
  if (positions > 0 && C > 0) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
    const int64_t sms = multiprocessor_count(x.get_device());
    at::Tensor ws;
    int64_t splits;
    MESRGAN_DISPATCH_CUDA_TYPES(x.scalar_type(), "depthwise_conv3x3_backward_weight_cuda", [&] {
      if (layout == Layout::NCHW) {
        // Enough blocks to fill the GPU about 4 times over, each with at least ~8 elements a thread.
        const int64_t rows = N * H;
        const int64_t want = std::max<int64_t>(1, (4 * sms + C - 1) / C);
        const int64_t min_rows = std::max<int64_t>(1, (8 * kThreads + W - 1) / W);
        const int64_t rows_per_split = std::max(min_rows, (rows + want - 1) / want);
        splits = (rows + rows_per_split - 1) / rows_per_split;
        TORCH_CHECK(splits <= 65535, "depthwise_conv3x3_backward_weight: too many row splits");
        float* out = sums.data_ptr<float>();
        if (deterministic) {
          ws = at::empty({C, splits, 10}, f32);
          out = ws.data_ptr<float>();
        }
        bwdw_nchw_kernel<scalar_t><<<dim3(C, splits), kThreads, 0, stream>>>(
            x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), C, H, W, rows_per_split, rows, out, deterministic);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      } else {
        const int64_t cblocks = (C + kChan - 1) / kChan;
        const int64_t want = std::max<int64_t>(1, (4 * sms + cblocks - 1) / cblocks);
        splits = std::min<int64_t>(want, std::max<int64_t>(1, (positions + kGroups * 8 - 1) / (kGroups * 8)));
        splits = std::min<int64_t>(splits, 65535);
        float* out = sums.data_ptr<float>();
        if (deterministic) {
          ws = at::empty({C, splits, 10}, f32);
          out = ws.data_ptr<float>();
        }
        bwdw_nhwc_kernel<scalar_t><<<dim3(cblocks, splits), dim3(kChan, kGroups), 0, stream>>>(
            x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), C, H, W, positions, out, deterministic);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
    if (deterministic) {
      const int64_t n = C * 10;
      sum_splits_kernel<<<(n + 255) / 256, 256, 0, stream>>>(ws.data_ptr<float>(), C, splits, sums.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  return split_sums(sums, x.scalar_type(), need_bias);
}

TORCH_LIBRARY_IMPL(mesrgan, CUDA, m) {
  m.impl("depthwise_conv3x3_backward_weight", &depthwise_conv3x3_backward_weight_cuda);
}

}  // namespace cuda
}  // namespace mesrgan
