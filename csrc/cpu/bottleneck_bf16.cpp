// The fused block on bfloat16: float32 arithmetic, bfloat16 in memory.
//
// Forward: band by band inside the tile pipeline, into a new tensor or into a dense block's buffer
// (forward_out). No full-size float32 tensor exists. Two forms:
//   - CPUs with AVX512_BF16 (forward_chunk_bf16): every stage reads bfloat16 and rounds its output
//     to bfloat16 as it stores it, as PyTorch's bfloat16 convolutions do: the expand GEMM
//     (gemm_bf16.h, vdpbf16ps) reads x's rows in place and stores the hidden rows; the depthwise
//     (bottleneck_dw_bf16.h) reads those and stores its output; the project GEMM reads that and
//     stores the block's output in place, the skip (x widened) added in its epilogue.
//   - otherwise (or MESRGAN_CPU_ISA=avx2 / base; forward_chunk_float): x's rows are widened into
//     per-thread float32 scratch and the float32 block's GEMMs and tile kernels run; the result is,
//     bit for bit, the float32 block's rounded.
// Measured (AMD EPYC Zen 4: avx512_bf16, no AMX; 1 thread, thread CPU time, on a loaded 2-core VM;
// MESRGAN-paper's five dense layers at LR 32 batch 16 and LR 128 batch 1, benchmarks.bf16_block_rates;
// vdpbf16ps peak about 116 GMAC/s, oneDNN's bfloat16 3x3 convolutions 105-115): float32 hidden rows,
// a float32 depthwise tile kernel, a rounding pass and a narrowing pass made 111 ms (73 GMAC/s; with
// stage timers: expand 69-97, depthwise 18-19, project 98-108); the form above takes 84-86 ms
// (about 96 GMAC/s; expand 98-110, depthwise 37-43, project 104-112). Before the bfloat16 GEMM,
// bf16 / fp32 block time was 1.06x (NCHW) and 1.16x (channels_last) with whole-tensor copies; 0.58x /
// 0.60x with its first form.
//
// Backward (bottleneck_bf16_backward.cpp): band by band too, the float32 backward's chunks on
// bfloat16 memory, with float32 scratch for a band's rows only; with AVX512_BF16 all five GEMMs run
// vdpbf16ps (the weight gradients taking the band's pixels in pairs). Measured on the same machine
// (1 thread, loaded VM, medians; 2 threads in brackets): the backward op on the shape above went
// from 1.30x its float32 time (whole-tensor copies) to 0.66x; forward + backward under autocast from
// 0.99x (0.89x) PyTorch's bfloat16 path to 0.80x (0.63x). With the forward above, a whole
// MESRGAN-paper training step is level with PyTorch's path (0.99-1.01x, 2 threads, quiet machine; its
// layers' wide c_in make the recomputed expand GEMM weigh more) and lite's 0.82x, so impl="auto"
// trains with this op where the bfloat16 GEMM runs and the CPU has no AMX (ops/bottleneck.py,
// fused_bf16_training_wins). The backward recomputes the hidden rows in float32 where the forward
// rounds them to bfloat16: its gradients are those of the block within bfloat16 rounding, as the
// tests check against float64.
//
// What the two share (bf16 <-> float32 rows, packed weights, the GEMMs on bfloat16 rows) is in
// bottleneck_bf16_band.h, defined here. The weights are converted to float32 once per call and, when
// the bfloat16 GEMM runs, packed for it once per call (the forward: 0.03-0.2 ms a call, against
// 0.07-0.4 ms with float32 packs as well).
#include "cpu/bottleneck_bf16.h"

#include <ATen/Parallel.h>

#include "cpu/bf16.h"
#include "cpu/bottleneck_bf16_band.h"
#include "cpu/bottleneck_block_cpu.h"
#include "cpu/bottleneck_dw_bf16.h"
#include "cpu/gemm_bf16.h"
#include "depthwise_conv3x3.h"

namespace mesrgan {
namespace cpu {
namespace bf16 {

void widen_pixels(const uint16_t* src, int64_t ld_src, float* dst, int64_t P, int64_t C) {
  const auto to_float = bf16_convert().to_float;
  if (ld_src == C) return to_float(src, dst, P * C);
  for (int64_t p = 0; p < P; ++p) to_float(src + p * ld_src, dst + p * C, C);
}

void narrow_pixels(const float* src, uint16_t* dst, int64_t ld_dst, int64_t P, int64_t C) {
  const auto from_float = bf16_convert().from_float;
  if (ld_dst == C) return from_float(src, dst, P * C);
  for (int64_t p = 0; p < P; ++p) from_float(src + p * C, dst + p * ld_dst, C);
}

Bf16Weights pack_bf16_weights(const Block<float>& k, bool backward, std::vector<at::Tensor>& keep) {
  Bf16Weights b;
  if (!gemm::use_gemm_bf16()) return b;
  const Dims& d = k.d;
  // W1^T (K = c_in), then W2^T (K = hidden) for the forward or W2 (K = c_out) and W1 (K = hidden) for
  // the backward.
  const int64_t s1 = gemm::packed_size_bf16(d.c_in, d.hidden);
  const int64_t s2 = backward ? gemm::packed_size_bf16(d.c_out, d.hidden) : gemm::packed_size_bf16(d.hidden, d.c_out);
  const int64_t s3 = backward ? gemm::packed_size_bf16(d.hidden, d.c_in) : 0;
  at::Tensor packed = at::empty({s1 + s2 + s3}, at::TensorOptions().dtype(at::kBFloat16));
  uint16_t* p = bits_mut(packed);
  b.expand = gemm::pack_b_bf16(k.w1, d.c_in, d.hidden, 1, d.c_in, p);
  if (backward) {
    b.project_t = gemm::pack_b_bf16(k.w2, d.c_out, d.hidden, d.hidden, 1, p + s1);
    b.expand_t = gemm::pack_b_bf16(k.w1, d.hidden, d.c_in, d.c_in, 1, p + s1 + s2);
  } else {
    b.project = gemm::pack_b_bf16(k.w2, d.hidden, d.c_out, 1, d.hidden, p + s1);
  }
  keep.push_back(packed);
  b.on = true;
  return b;
}

void gemm_bf16(int64_t P, int64_t N, int64_t K, const uint16_t* A, int64_t lda, const gemm::BMatrixBf16& B, float* C,
               Epilogue<float> ep, float slope) {
  ep.slope = slope;
#ifdef MESRGAN_HAVE_X86_KERNELS
  gemm::gemm_bf16_avx512(P, N, K, A, lda, B, C, N, ep);
#else
  TORCH_CHECK(false, "bottleneck_block: no bfloat16 GEMM in this build");
#endif
}

void expand_pixels(const Block<float>& k, const Bf16Weights& wb, const uint16_t* x, int64_t ld_x, int64_t P,
                   float* widened, float* out) {
  const Dims& d = k.d;
  if (wb.on) return gemm_bf16(P, d.hidden, d.c_in, x, ld_x, wb.expand, out, k.expand_epilogue(), k.slope);
  widen_pixels(x, ld_x, widened, P, d.c_in);
  k.matmul(P, d.hidden, d.c_in, widened, d.c_in, 1, bottleneck::mat(k.w1, d.hidden, d.c_in, d.c_in).t(),
           k.own.expand, out, d.hidden, k.expand_epilogue());
}

namespace {

at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat); }  // keeps the memory format
OptTensor f32(const OptTensor& t) { return t.has_value() && t->defined() ? OptTensor(f32(*t)) : t; }

using namespace cpu::bottleneck;

// One call's bfloat16 operands around the float32 Block (whose own x pointer is unused).
struct Bf16Io {
  const uint16_t* x;
  int64_t ld_x;
  uint16_t* y;
  int64_t ld_y;
  const uint16_t* x_row(const Dims& d, int64_t n, int64_t r) const { return x + (n * d.H + r) * d.W * ld_x; }
};

// Per-thread rows of one band. With the bfloat16 GEMM: the expand's output (the hidden window, R + 2
// rows) and the depthwise's (R rows), both bfloat16, and x's rows widened for the skip. With the
// float32 GEMMs: the float32 forward's hidden window and depthwise output, x's rows widened (R + 2
// rows) and the band's float32 output.
struct BandScratch {
  float *h1 = nullptr, *h2 = nullptr, *xf = nullptr, *yf = nullptr;
  uint16_t *h1b = nullptr, *h2b = nullptr;
  BandScratch(const Dims& d, int64_t R, bool bf16_gemm) {
    const int64_t row = d.row_h(), x_size = (R + 2) * d.W * d.c_in;
    if (bf16_gemm) {
      const int64_t hidden_size = ((2 * R + 2) * row + 31) / 32 * 32;  // whole 64-byte lines: xf stays aligned
      h1b = scratch<uint16_t>(hidden_size + 2 * x_size);
      h2b = h1b + (R + 2) * row;
      xf = reinterpret_cast<float*>(h1b + hidden_size);
    } else {
      h1 = scratch<float>((2 * R + 2) * row + x_size + R * d.W * d.c_out);
      h2 = h1 + (R + 2) * row;
      xf = h2 + R * row;
      yf = xf + x_size;
    }
  }
};

#ifdef MESRGAN_HAVE_X86_KERNELS
// forward_chunk of bottleneck_forward.cpp on bfloat16 memory with the bfloat16 GEMM: the expand reads
// x's rows in place and stores the hidden rows rounded to bfloat16, the depthwise reads those and
// stores its output rounded, and the project reads that and stores the block's output rounded, in
// place (a new tensor or a dense block's buffer). Each stage rounds its output as PyTorch's bfloat16
// convolutions do. Why bfloat16 in between: half the bytes through L2 for the hidden rows, which
// the expand writes and the depthwise reads, and no float32 output to narrow afterwards: MESRGAN-paper's
// five dense layers at LR 32 batch 16 and LR 128 batch 1 took 91 ms where float32 hidden rows took
// about 101 (Zen 4, 1 thread, thread CPU time, with stage timers).
void forward_chunk_bf16(const Block<float>& k, const Bf16Weights& wb, const Bf16Io& io, int64_t n, int64_t r0,
                        int64_t r1, int64_t R, const BandScratch& s) {
  const Dims& d = k.d;
  const int64_t row = d.row_h();
  const Epilogue<float> expand_ep = k.expand_epilogue();
  // The hidden rows of image rows [lo, hi) into dst: zeros outside the image (the depthwise's padding).
  auto expand = [&](int64_t lo, int64_t hi, uint16_t* dst) {
    for (int64_t r = lo; r < hi; ++r)
      if (r < 0 || r >= d.H) std::memset(dst + (r - lo) * row, 0, sizeof(uint16_t) * row);
    const int64_t a = std::max<int64_t>(lo, 0), b = std::min(hi, d.H);
    if (b > a)
      gemm::gemm_bf16_avx512_to_bf16((b - a) * d.W, d.hidden, d.c_in, io.x_row(d, n, a), io.ld_x, wb.expand,
                                     dst + (a - lo) * row, d.hidden, expand_ep);
  };
  int64_t base = r0 - 1;  // image row held by h1b's first row
  for (int64_t a = r0; a < r1; a += R) {
    const int64_t b = std::min(a + R, r1);
    if (a == r0) {
      expand(a - 1, b + 1, s.h1b);
    } else {
      std::memmove(s.h1b, s.h1b + (a - 1 - base) * row, sizeof(uint16_t) * 2 * row);
      base = a - 1;
      expand(a + 1, b + 1, s.h1b + 2 * row);
    }
    dw_forward_to_bf16_avx512(s.h1b + (a - 1 - base) * row, k.wt, k.bd, s.h2b, b - a, d.W, d.hidden, k.slope);
    const int64_t P = (b - a) * d.W;
    Epilogue<float> ep;
    ep.bias = k.b2;
    ep.slope = k.slope;
    if (k.skip) {  // x's band rows in float32 (c_in values a pixel)
      widen_pixels(io.x_row(d, n, a), io.ld_x, s.xf, P, d.c_in);
      ep.add = s.xf;
      ep.ld_add = d.c_in;
    }
    gemm::gemm_bf16_avx512_to_bf16(P, d.c_out, d.hidden, s.h2b, d.hidden, wb.project,
                                   io.y + (n * d.H + a) * d.W * io.ld_y, io.ld_y, ep);
  }
}
#endif

// forward_chunk of bottleneck_forward.cpp on bfloat16 memory with the float32 GEMMs: x's rows are
// widened, and the output is rounded as it is stored; in between, the float32 block's arithmetic.
void forward_chunk_float(const Block<float>& k, const Bf16Io& io, int64_t n, int64_t r0, int64_t r1, int64_t R,
                         const BandScratch& s) {
  const Dims& d = k.d;
  const int64_t row = d.row_h();
  auto widen_x = [&](int64_t a, int64_t b) { widen_pixels(io.x_row(d, n, a), io.ld_x, s.xf, (b - a) * d.W, d.c_in); };
  auto expand = [&](int64_t a, int64_t b, float* out) {
    widen_x(a, b);
    k.matmul((b - a) * d.W, d.hidden, d.c_in, s.xf, d.c_in, 1, mat(k.w1, d.hidden, d.c_in, d.c_in).t(), k.own.expand,
             out, d.hidden, k.expand_epilogue());
  };
  int64_t base = r0 - 1;  // image row held by h1's first row
  for (int64_t a = r0; a < r1; a += R) {
    const int64_t b = std::min(a + R, r1);
    if (a == r0) {
      k.rows_inside(a - 1, b + 1, s.h1, expand);
    } else {
      std::memmove(s.h1, s.h1 + (a - 1 - base) * row, sizeof(float) * 2 * row);
      base = a - 1;
      k.rows_inside(a + 1, b + 1, s.h1 + 2 * row, expand);
    }
    k.fn.dw_forward(s.h1 + (a - 1 - base) * row, k.wt, k.bd, s.h2, b - a, d.W, d.hidden, k.slope);
    const int64_t P = (b - a) * d.W;
    Epilogue<float> ep;
    ep.bias = k.b2;
    if (k.skip) {  // x's band rows in float32 (c_in values a pixel)
      widen_x(a, b);
      ep.add = s.xf;
      ep.ld_add = d.c_in;
    }
    k.matmul(P, d.c_out, d.hidden, s.h2, d.hidden, 1, mat(k.w2, d.c_out, d.hidden, d.hidden).t(), k.own.project, s.yf,
             d.c_out, ep);
    narrow_pixels(s.yf, io.y + (n * d.H + a) * d.W * io.ld_y, io.ld_y, P, d.c_out);
  }
}

// y (bfloat16, NHWC, its pixels ld_y apart) = the block of x (bfloat16).
void forward_into(const Nhwc& x, const at::Tensor& w1, const OptTensor& b1, const at::Tensor& wd, const OptTensor& bd,
                  const at::Tensor& w2, const OptTensor& b2, bool skip, double slope, const at::Tensor& y,
                  int64_t ld_y) {
  const Dims d = dims_of(x.t, w1, w2);
  if (y.numel() == 0) return;
  std::vector<at::Tensor> keep;
  const Block<float> k = make_block<float>(d, nullptr, 0, f32(w1), defined_or_empty(f32(b1)), f32(wd),
                                           defined_or_empty(f32(bd)), f32(w2), defined_or_empty(f32(b2)), skip, slope,
                                           false, keep, !gemm::use_gemm_bf16());
  const Bf16Weights wb = pack_bf16_weights(k, false, keep);
  const Bf16Io io{bits(x.t), x.ld, bits_mut(y), ld_y};
  const int64_t R = band_rows(d, 256);  // as the float32 forward
  const int64_t per_image = forward_chunks_per_image(d, R, at::get_num_threads());
  at::parallel_for(0, d.N * per_image, 1, [&](int64_t begin, int64_t end) {
    const BandScratch s(d, R, wb.on);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / per_image, j = t % per_image, r0 = d.H * j / per_image, r1 = d.H * (j + 1) / per_image;
#ifdef MESRGAN_HAVE_X86_KERNELS
      if (wb.on) {
        forward_chunk_bf16(k, wb, io, n, r0, r1, R, s);
        continue;
      }
#endif
      forward_chunk_float(k, io, n, r0, r1, R, s);
    }
  });
}

}  // namespace

at::Tensor forward(const at::Tensor& x_in, const at::Tensor& w1, const OptTensor& b1, const at::Tensor& wd,
                   const OptTensor& bd, const at::Tensor& w2, const OptTensor& b2, bool skip, double slope) {
  const Nhwc x = as_nhwc(x_in);
  const Dims d = dims_of(x.t, w1, w2);
  at::Tensor y = empty_output_cpu({d.N, d.c_out, d.H, d.W}, x.t.options(), Layout::NHWC);
  forward_into(x, w1, b1, wd, bd, w2, b2, skip, slope, y, std::max<int64_t>(d.c_out, 1));
  return in_callers_format(y, x_in);
}

void forward_out(const at::Tensor& x, const at::Tensor& w1, const OptTensor& b1, const at::Tensor& wd,
                 const OptTensor& bd, const at::Tensor& w2, const OptTensor& b2, bool skip, double slope,
                 const at::Tensor& out) {
  forward_into(as_nhwc(x), w1, b1, wd, bd, w2, b2, skip, slope, out, pixel_stride(out));
}

}  // namespace bf16
}  // namespace cpu
}  // namespace mesrgan
