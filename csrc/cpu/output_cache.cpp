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
//   * when such a tensor dies, its block is kept for the next output of the same rounded size,
//     while the idle blocks stay under MESRGAN_CPU_CACHE_MB (default 1024; 0 turns the cache off);
//   * torch.ops.mesrgan._cpu_cache_info() reports it, _cpu_cache_clear() frees the idle blocks
//     (mesrgan.ops.cpu_cache_info() / empty_cpu_cache() in Python).
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
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
      auto it = idle_.find(bytes);
      if (it != idle_.end() && !it->second.empty()) {
        Block* b = it->second.back();
        it->second.pop_back();
        idle_bytes_ -= bytes;
        ++hits_;
        return b;
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

  void give_back(Block* b) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (idle_bytes_ + b->bytes <= limit_) {
        idle_[b->bytes].push_back(b);
        idle_bytes_ += b->bytes;
        return;
      }
    }
    std::free(b->ptr);
    delete b;
  }

  void clear() {
    std::vector<Block*> all;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& kv : idle_) all.insert(all.end(), kv.second.begin(), kv.second.end());
      idle_.clear();
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
    int64_t blocks = 0;
    for (auto& kv : idle_) blocks += static_cast<int64_t>(kv.second.size());
    return {static_cast<int64_t>(idle_bytes_), blocks, hits_, misses_, static_cast<int64_t>(limit_)};
  }

 private:
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<Block*>> idle_;  // rounded size -> idle blocks
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

at::Tensor empty_output_cpu(const at::Tensor& like, Layout layout) {
  const auto fmt = layout == Layout::NHWC ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const size_t nbytes = static_cast<size_t>(like.numel()) * like.element_size();
  if (nbytes < kMinBytes || !cache().enabled()) {
    at::Tensor t = at::empty(like.sizes(), like.options().memory_format(fmt));
    if (nbytes >= 2 * kAlign) advise_huge(t.data_ptr(), nbytes);
    return t;
  }
  return at::detail::empty_generic(like.sizes(), &allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   like.scalar_type(), fmt);
}

TORCH_LIBRARY_FRAGMENT(mesrgan, m) {
  // [idle bytes, idle blocks, hits, misses, limit in bytes] of the CPU output cache.
  m.def("_cpu_cache_info() -> int[]", &cpu_cache_info);
  // Frees the idle blocks (tensors alive keep theirs, and give them back when they die).
  m.def("_cpu_cache_clear() -> ()", &cpu_cache_clear);
}

}  // namespace mesrgan
