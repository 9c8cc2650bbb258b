// CUDA forward of depthwise_conv3x3: convolution + bias + activation in one pass.
//
// NCHW: a block of 32 x 8 threads covers one channel plane's 32 x 32 output tile. The tile plus its
// 1-pixel halo is staged in shared memory (as float); each thread then walks 4 rows of one column
// with a sliding 3 x 3 register window.
// NHWC: threads run across channel packs (16-byte loads of VEC channels where C and the pointers
// allow it), each computing a strip of outputs along W from a sliding 3 x 3 window of packs.
#include <torch/library.h>

#include "cuda/common.cuh"

namespace mesrgan {
namespace cuda {
namespace {

constexpr int kTileW = 32;  // threads in x = tile width
constexpr int kBlockY = 8;  // threads in y
constexpr int kRowsPerThread = 4;
constexpr int kTileH = kBlockY * kRowsPerThread;

template <typename scalar_t>
__global__ void __launch_bounds__(kTileW* kBlockY)
    fwd_nchw_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight,
                    const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, int64_t C, int64_t H, int64_t W,
                    int64_t tiles_w, Activation act, float slope) {
  __shared__ float tile[kTileH + 2][kTileW + 2];
  const int64_t plane = blockIdx.x / tiles_w;
  const int64_t w0 = (blockIdx.x % tiles_w) * kTileW;
  const int64_t h0 = static_cast<int64_t>(blockIdx.y) * kTileH;
  const scalar_t* xp = x + plane * H * W;
  const int tid = threadIdx.y * kTileW + threadIdx.x;
  for (int i = tid; i < (kTileH + 2) * (kTileW + 2); i += kTileW * kBlockY) {
    const int r = i / (kTileW + 2), c = i % (kTileW + 2);
    const int64_t hh = h0 + r - 1, ww = w0 + c - 1;
    tile[r][c] = (hh >= 0 && hh < H && ww >= 0 && ww < W) ? static_cast<float>(xp[hh * W + ww]) : 0.f;
  }
  __syncthreads();

  const int64_t ch = plane % C;
  float k[9];
#pragma unroll
  for (int t = 0; t < 9; ++t) k[t] = static_cast<float>(weight[ch * 9 + t]);
  const float b = bias ? static_cast<float>(bias[ch]) : 0.f;
  const int col = threadIdx.x;
  const int64_t w = w0 + col;
  if (w >= W) return;
  const int r0 = threadIdx.y * kRowsPerThread;
  float a0 = tile[r0][col], a1 = tile[r0][col + 1], a2 = tile[r0][col + 2];
  float b0 = tile[r0 + 1][col], b1 = tile[r0 + 1][col + 1], b2 = tile[r0 + 1][col + 2];
  scalar_t* yp = y + plane * H * W;
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    const float c0 = tile[r0 + r + 2][col], c1 = tile[r0 + r + 2][col + 1], c2 = tile[r0 + r + 2][col + 2];
    const int64_t h = h0 + r0 + r;
    if (h < H) {
      float acc = b;
      acc = fmaf(k[0], a0, acc);
      acc = fmaf(k[1], a1, acc);
      acc = fmaf(k[2], a2, acc);
      acc = fmaf(k[3], b0, acc);
      acc = fmaf(k[4], b1, acc);
      acc = fmaf(k[5], b2, acc);
      acc = fmaf(k[6], c0, acc);
      acc = fmaf(k[7], c1, acc);
      acc = fmaf(k[8], c2, acc);
      yp[h * W + w] = static_cast<scalar_t>(activate(acc, act, slope));
    }
    a0 = b0; a1 = b1; a2 = b2;
    b0 = c0; b1 = c1; b2 = c2;
  }
}

constexpr int kStrip = 4;  // NHWC outputs per thread along W

template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(256)
    fwd_nhwc_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight,
                    const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, int64_t C, int64_t H, int64_t W,
                    int64_t rows, Activation act, float slope) {
  using P = Pack<scalar_t, VEC>;
  const int64_t packs = C / VEC;
  const int64_t strips = (W + kStrip - 1) / kStrip;
  const int64_t total = rows * strips * packs;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pk = idx % packs;
    const int64_t rest = idx / packs;
    const int64_t strip = rest % strips;
    const int64_t row = rest / strips;  // n * H + h
    const int64_t h = row % H;
    const int64_t c0 = pk * VEC;
    float k[9][VEC], b[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
#pragma unroll
      for (int t = 0; t < 9; ++t) k[t][v] = static_cast<float>(weight[(c0 + v) * 9 + t]);
      b[v] = bias ? static_cast<float>(bias[c0 + v]) : 0.f;
    }
    // win[i][j][v]: input row h+i-1, column w+j-1 of the current output w.
    float win[3][3][VEC];
    auto load_col = [&](int j, int64_t ww) {
#pragma unroll
      for (int i = 0; i < 3; ++i) {
        const int64_t hh = h + i - 1;
        if (hh >= 0 && hh < H && ww >= 0 && ww < W) {
          const P p = *reinterpret_cast<const P*>(x + ((row + i - 1) * W + ww) * C + c0);
#pragma unroll
          for (int v = 0; v < VEC; ++v) win[i][j][v] = static_cast<float>(p.v[v]);
        } else {
#pragma unroll
          for (int v = 0; v < VEC; ++v) win[i][j][v] = 0.f;
        }
      }
    };
    const int64_t w_begin = strip * kStrip;
    load_col(0, w_begin - 1);
    load_col(1, w_begin);
#pragma unroll
    for (int s = 0; s < kStrip; ++s) {
      const int64_t w = w_begin + s;
      if (w >= W) break;
      load_col(2, w + 1);
      P out;
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        float acc = b[v];
#pragma unroll
        for (int i = 0; i < 3; ++i)
#pragma unroll
          for (int j = 0; j < 3; ++j) acc = fmaf(k[i * 3 + j][v], win[i][j][v], acc);
        out.v[v] = static_cast<scalar_t>(activate(acc, act, slope));
      }
      *reinterpret_cast<P*>(y + (row * W + w) * C + c0) = out;
#pragma unroll
      for (int i = 0; i < 3; ++i)
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          win[i][0][v] = win[i][1][v];
          win[i][1][v] = win[i][2][v];
        }
    }
  }
}

template <typename scalar_t, int VEC>
void launch_nhwc(const at::Tensor& x, const at::Tensor& w, const scalar_t* bp, at::Tensor& y, Activation act,
                 float slope, cudaStream_t stream) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t total = N * H * ((W + kStrip - 1) / kStrip) * (C / VEC);
  const int threads = 256;
  const int64_t max_blocks = static_cast<int64_t>(multiprocessor_count(x.get_device())) * 32;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, max_blocks);
  fwd_nhwc_kernel<scalar_t, VEC><<<blocks, threads, 0, stream>>>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bp,
                                                                 y.data_ptr<scalar_t>(), C, H, W, N * H, act, slope);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
__global__ void activation_backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ y,
                                           scalar_t* __restrict__ r, int64_t n, Activation act, float slope) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gv = static_cast<float>(g[i]), yv = static_cast<float>(y[i]);
    float out = gv;
    if (act == Activation::ReLU) out = yv > 0.f ? gv : 0.f;
    else if (act == Activation::ReLU6) out = (yv > 0.f && yv < 6.f) ? gv : 0.f;
    else if (act == Activation::LeakyReLU) out = yv > 0.f ? gv : gv * slope;
    r[i] = static_cast<scalar_t>(out);
  }
}

}  // namespace

at::Tensor depthwise_conv3x3_activation_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& out_in,
                                                      const std::string& activation, double negative_slope) {
  check_activation_backward_args(grad_out_in, out_in);
  const c10::cuda::CUDAGuard guard(grad_out_in.device());
  const Activation act = parse_activation(activation);
  Layout layout;
  const at::Tensor g = as_kernel_layout(grad_out_in, &layout);
  const at::Tensor y = in_layout(out_in, layout);
  at::Tensor r = at::empty_like(g);
  const int64_t n = r.numel();
  if (n == 0) return r;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(g.get_device()).stream();
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, static_cast<int64_t>(multiprocessor_count(g.get_device())) * 32);
  MESRGAN_DISPATCH_CUDA_TYPES(g.scalar_type(), "depthwise_conv3x3_activation_backward_cuda", [&] {
    activation_backward_kernel<scalar_t><<<blocks, 256, 0, stream>>>(
        g.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), n, act,
        static_cast<float>(negative_slope));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return r;
}

at::Tensor depthwise_conv3x3_cuda(const at::Tensor& x_in, const at::Tensor& weight_in,
                                  const c10::optional<at::Tensor>& bias_in, const std::string& activation,
                                  double negative_slope) {
  check_forward_args(x_in, weight_in, bias_in, activation, negative_slope);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Activation act = parse_activation(activation);
  Layout layout;
  const at::Tensor x = as_kernel_layout(x_in, &layout);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor y = at::empty_like(x);
  if (y.numel() == 0) return y;
  const at::Tensor w = weight_in.contiguous();
  const bool has_bias = bias_in.has_value() && bias_in->defined();
  const at::Tensor bias = has_bias ? bias_in->contiguous() : at::Tensor();
  const float slope = static_cast<float>(negative_slope);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();

  MESRGAN_DISPATCH_CUDA_TYPES(x.scalar_type(), "depthwise_conv3x3_cuda", [&] {
    const scalar_t* bp = has_bias ? bias.data_ptr<scalar_t>() : nullptr;
    if (layout == Layout::NCHW) {
      const int64_t tiles_w = (W + kTileW - 1) / kTileW;
      const int64_t tiles_h = (H + kTileH - 1) / kTileH;
      TORCH_CHECK(N * C * tiles_w <= INT32_MAX && tiles_h <= 65535, "depthwise_conv3x3: input of shape ", x.sizes(),
                  " is too large for the CUDA NCHW kernel's grid");
      const dim3 grid(static_cast<unsigned>(N * C * tiles_w), static_cast<unsigned>(tiles_h));
      const dim3 block(kTileW, kBlockY);
      fwd_nchw_kernel<scalar_t><<<grid, block, 0, stream>>>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bp,
                                                            y.data_ptr<scalar_t>(), C, H, W, tiles_w, act, slope);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      // 4 channels a thread: 16-byte loads in float32, 8-byte in 16-bit types (whose 8-channel packs
      // would need ~160 registers a thread for the window and weights).
      constexpr int kVec = 4;
      if (C % kVec == 0 && aligned_to(x.data_ptr(), sizeof(scalar_t) * kVec) &&
          aligned_to(y.data_ptr(), sizeof(scalar_t) * kVec)) {
        launch_nhwc<scalar_t, kVec>(x, w, bp, y, act, slope, stream);
      } else {
        launch_nhwc<scalar_t, 1>(x, w, bp, y, act, slope, stream);
      }
    }
  });
  return y;
}

TORCH_LIBRARY_IMPL(mesrgan, CUDA, m) {
  m.impl("depthwise_conv3x3", &depthwise_conv3x3_cuda);
  m.impl("depthwise_conv3x3_activation_backward", &depthwise_conv3x3_activation_backward_cuda);
}

}  // namespace cuda
}  // namespace mesrgan
