// Recycled memory for the large CPU outputs of the mesrgan ops.
//
// A fresh output of tens of MB can cost more than the convolution that fills it: glibc serves every
// allocation above its mmap threshold (at most 32 MiB) with a new mapping, so each call takes one
// page fault per page, each zeroing its page, and an munmap when the tensor dies. Measured on the
// 2-core dev VM: x.clone() of a (16, 128, 64, 64) float32 tensor (32 MiB) took 13.5 ms, a copy into
// an existing tensor 2.5 ms. The CUDA side of PyTorch has a caching allocator for this reason; its
// CPU side has none. This is a small one, for our outputs only:
//   * outputs of at least kMinBytes come from 2 MiB aligned blocks (advised for transparent huge
//     pages, unless MESRGAN_NO_THP is set); smaller ones from torch's own allocator;
//   * when such a tensor dies, its block is kept for the next output of the same rounded size;
//     the idle blocks stay under MESRGAN_CPU_CACHE_MB (default 1024; 0 turns the cache off), the
//     oldest going back to the system first;
//   * torch.ops.mesrgan._cpu_cache_info() reports it, _cpu_cache_clear() frees the idle blocks
//     (mesrgan.ops.cpu_cache_info() / empty_cpu_cache() in Python).
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <iterator>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#ifdef __linux__
#include <pthread.h>
#include <sys/mman.h>
#endif

#include "depthwise_conv3x3.h"

namespace mesrgan {
namespace {

constexpr size_t kAlign = size_t(2) << 20;     // one transparent huge page
constexpr size_t kMinBytes = size_t(4) << 20;  // below this, torch's allocator (and glibc's reuse) is fine

bool thp_off() {
  static const bool off = std::getenv("MESRGAN_NO_THP") != nullptr;
  return off;
}

// Transparent huge pages for [p, p + n): where the kernel's THP mode is "madvise", this cuts the
// page-fault cost of first touching a fresh buffer several-fold (a no-op elsewhere).
void advise_huge(void* p, size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (thp_off()) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t start = (a + kAlign - 1) & ~(kAlign - 1), end = (a + n) & ~(kAlign - 1);
  if (end > start) madvise(reinterpret_cast<void*>(start), end - start, MADV_HUGEPAGE);
#else
  (void)p;
  (void)n;
#endif
}

struct Block {
  void* ptr;
  size_t bytes;
};

class Cache {
 public:
  Cache() {
    const char* env = std::getenv("MESRGAN_CPU_CACHE_MB");
    long long mb = 1024;
    if (env != nullptr && *env != '\0') {
      char* end = nullptr;
      mb = std::strtoll(env, &end, 10);
      TORCH_CHECK(end != env && *end == '\0' && mb >= 0,
                  "MESRGAN_CPU_CACHE_MB must be a whole number of MiB >= 0 (0 turns the cache off), got '", env,
                  "'");
    }
    limit_ = static_cast<size_t>(mb) << 20;
  }

  bool enabled() const { return limit_ > 0; }

  Block* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      // The most recently returned block of this size (a few hundred idle blocks at most).
      for (auto it = idle_.rbegin(); it != idle_.rend(); ++it) {
        if ((*it)->bytes == bytes) {
          Block* b = *it;
          idle_.erase(std::next(it).base());
          idle_bytes_ -= bytes;
          ++hits_;
          return b;
        }
      }
      ++misses_;
    }
    void* p = std::aligned_alloc(kAlign, bytes);
    if (p == nullptr) {  // give the idle blocks back and try once more
      clear();
      p = std::aligned_alloc(kAlign, bytes);
    }
    TORCH_CHECK(p != nullptr, "mesrgan: out of memory allocating ", bytes, " bytes for an output");
    advise_huge(p, bytes);
    return new Block{p, bytes};
  }

  // Keeps the block; over the limit, the oldest idle blocks go back to the system first, so the
  // cache follows a workload whose sizes change instead of filling up with sizes of the past.
  void give_back(Block* b) {
    std::vector<Block*> evicted;
    {
      std::lock_guard<std::mutex> lock(mu_);
      idle_.push_back(b);
      idle_bytes_ += b->bytes;
      size_t n = 0;
      while (idle_bytes_ > limit_) {
        idle_bytes_ -= idle_[n]->bytes;
        evicted.push_back(idle_[n++]);
      }
      idle_.erase(idle_.begin(), idle_.begin() + static_cast<std::ptrdiff_t>(n));
    }
    for (Block* e : evicted) {
      std::free(e->ptr);
      delete e;
    }
  }

  void clear() {
    std::vector<Block*> all;
    {
      std::lock_guard<std::mutex> lock(mu_);
      all.swap(idle_);
      idle_bytes_ = 0;
    }
    for (Block* b : all) {
      std::free(b->ptr);
      delete b;
    }
  }

  void reset_lock_after_fork() { new (&mu_) std::mutex(); }

  std::vector<int64_t> info() {
    std::lock_guard<std::mutex> lock(mu_);
    return {static_cast<int64_t>(idle_bytes_), static_cast<int64_t>(idle_.size()), hits_, misses_,
            static_cast<int64_t>(limit_)};
  }

 private:
  std::mutex mu_;
  std::vector<Block*> idle_;  // oldest first
  size_t idle_bytes_ = 0;
  size_t limit_ = 0;
  int64_t hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors may outlive static destruction at interpreter exit.
Cache& cache() {
  static Cache* c = [] {
    Cache* made = new Cache();
#ifdef __linux__
    // A child forked while another thread held the lock (a DataLoader worker, say) must not
    // inherit it held: the child starts with a fresh, unlocked mutex.
    pthread_atfork(nullptr, nullptr, [] { cache().reset_lock_after_fork(); });
#endif
    return made;
  }();
  return *c;
}

void release(void* ctx) { cache().give_back(static_cast<Block*>(ctx)); }

class CachingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes || !cache().enabled()) return c10::GetCPUAllocator()->allocate(n);
    Block* b = cache().take((n + kAlign - 1) / kAlign * kAlign);
    return {b->ptr, b, &release, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};

CachingAllocator& allocator() {
  static CachingAllocator* a = new CachingAllocator();
  return *a;
}

std::vector<int64_t> cpu_cache_info() { return cache().info(); }
void cpu_cache_clear() { cache().clear(); }

}  // namespace

at::Tensor empty_output_cpu(at::IntArrayRef sizes, const at::TensorOptions& options, Layout layout) {
  const auto fmt = layout == Layout::NHWC ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const size_t nbytes = static_cast<size_t>(c10::multiply_integers(sizes)) * options.dtype().itemsize();
  if (nbytes < kMinBytes || !cache().enabled()) {
    at::Tensor t = at::empty(sizes, options.memory_format(fmt));
    if (nbytes >= 2 * kAlign) advise_huge(t.data_ptr(), nbytes);
    return t;
  }
  return at::detail::empty_generic(sizes, &allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), fmt);
}

at::Tensor empty_output_cpu(const at::Tensor& like, Layout layout) {
  return empty_output_cpu(like.sizes(), like.options(), layout);
}

namespace {

// An uninitialised channels_last (N, channels, H, W) tensor with like's N, H, W and dtype, from the
// cache: a dense block's feature and gradient buffers (mesrgan/ops/dense.py).
at::Tensor cpu_empty_nhwc(const at::Tensor& like, int64_t channels) {
  TORCH_CHECK_VALUE(like.dim() == 4 && like.device().is_cpu() && channels >= 0,
                    "_cpu_empty_nhwc: like must be a 4-D CPU tensor and channels >= 0, got ", like.sizes(), " on ",
                    like.device(), " and ", channels);
  return empty_output_cpu({like.size(0), channels, like.size(2), like.size(3)}, like.options(), Layout::NHWC);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mesrgan, m) {
  m.def("_cpu_empty_nhwc(Tensor like, int channels) -> Tensor", &cpu_empty_nhwc);
  // [idle bytes, idle blocks, hits, misses, limit in bytes] of the CPU output cache.
  m.def("_cpu_cache_info() -> int[]", &cpu_cache_info);
  // Frees the idle blocks (tensors alive keep theirs, and give them back when they die).
  m.def("_cpu_cache_clear() -> ()", &cpu_cache_clear);
}

}  // namespace mesrgan
