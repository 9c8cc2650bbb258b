// The CPU kernels of both ops, one row per instruction set, picked once for cpu_isa(). Adding a
// kernel for a new instruction set is a new translation unit (compiled under its own
// `#pragma GCC target`), its declarations in the *_decl.h header, and a row in dispatch.cpp.
#pragma once
#include <cstdint>

#include "cpu/bottleneck_tiles_decl.h"
#include "cpu/isa.h"
#include "cpu/kernels_decl.h"

namespace mesrgan {
namespace cpu {

// The depthwise op's kernels (kernels.h); the signatures are the baseline copy's.
template <typename T>
struct DepthwiseKernels {
  decltype(&base::fwd_nchw<T>) fwd_nchw;
  decltype(&base::fwd_nhwc<T>) fwd_nhwc;
  decltype(&base::bwdw_nchw<T>) bwdw_nchw;
  decltype(&base::bwdw_nhwc<T>) bwdw_nhwc;
  decltype(&base::act_bwd<T>) act_bwd;
};

// The fused block's tile kernels (bottleneck_tiles.h): its depthwise and epilogues.
template <typename T>
struct TileKernels {
  decltype(&base::tiles::dw_forward<T>) dw_forward;
  decltype(&base::tiles::dw_backward_input<T>) dw_backward_input;
  decltype(&base::tiles::dw_backward_weight<T>) dw_backward_weight;
  decltype(&base::tiles::bias_leaky<T>) bias_leaky;
  decltype(&base::tiles::add_bias_skip<T>) add_bias_skip;
  decltype(&base::tiles::leaky_mask<T>) leaky_mask;
  decltype(&base::tiles::column_sum<T>) column_sum;
};

template <typename T>
struct Kernels {
  DepthwiseKernels<T> depthwise;
  TileKernels<T> tiles;
};

// The row of cpu_isa(), for float and double.
template <typename T>
const Kernels<T>& kernels();

}  // namespace cpu
}  // namespace mesrgan
