// The fused block's backward on the CPU, the parts its float (bottleneck_backward.cpp) and bfloat16
// (bottleneck_bf16_backward.cpp) forms share: what to compute, where each weight gradient's partial
// sum lives, and how the rows are cut into chunks and the chunks dealt to groups. The cut depends on
// the shape alone, and each group's partial sum is summed in a fixed order: both forms give the same
// results whatever the thread count.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "cpu/bottleneck_block_cpu.h"

namespace mesrgan {
namespace cpu {
namespace bottleneck {

struct Needs {
  bool x, w1, b1, wd, bd, w2, b2;
  bool lower() const { return x || w1 || b1 || wd || bd; }  // anything below the projection
  bool any() const { return lower() || w2 || b2; }
};

// Offsets of one group's partial gradient sums in its row of the partial-sum matrix.
struct GradLayout {
  int64_t w1, b1, wd, bd, w2, b2, size;
  explicit GradLayout(const Dims& d) {
    w1 = 0;
    b1 = w1 + d.hidden * d.c_in;
    wd = b1 + d.hidden;
    bd = wd + 9 * d.hidden;
    w2 = bd + d.hidden;
    b2 = w2 + d.c_out * d.hidden;
    size = b2 + d.c_out;
  }
};

// Bands of R rows; chunks of rows of one image (per_image of them); the chunks dealt in order to
// `groups` groups, each with one partial sum (few groups keep the partial sums small: each is the size
// of all the weights).
struct BackwardChunks {
  int64_t R, per_image, chunks, groups;
  BackwardChunks(const Dims& d, bool empty) {
    R = empty ? 1 : band_rows(d, 128);
    per_image = empty ? 1 : std::max<int64_t>(1, std::min<int64_t>((4 + d.N - 1) / d.N, d.H / (4 * R)));
    chunks = d.N * per_image;
    groups = std::max<int64_t>(1, std::min<int64_t>(chunks, 8));
  }

  // The groups in parallel; in each thread make_scratch() once, then chunk(scratch, group, n, r0, r1)
  // for each of its groups' chunks in order (image n, rows [r0, r1)).
  template <typename MakeScratch, typename Chunk>
  void for_each(const Dims& d, MakeScratch&& make_scratch, Chunk&& chunk) const {
    at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
      const auto s = make_scratch();
      for (int64_t g = begin; g < end; ++g) {
        for (int64_t t = chunks * g / groups; t < chunks * (g + 1) / groups; ++t) {
          const int64_t n = t / per_image, j = t % per_image;
          chunk(s, g, n, d.H * j / per_image, d.H * (j + 1) / per_image);
        }
      }
    });
  }
};

}  // namespace bottleneck
}  // namespace cpu
}  // namespace mesrgan
