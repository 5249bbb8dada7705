// Large output tensors for the CPU kernels.
//
// The kernels' outputs (E x K x C edge features, per-edge weight gradients, edge lists) are large,
// fresh and written once. A fresh allocation of that size is a new mapping from the OS (glibc maps
// anything above 32 MiB directly), so every call pays for faulting in and zeroing every page before
// the kernel writes it: a per-edge weight gradient of 130 MB took a quarter of the tensor-product
// convolution's backward that way. empty_huge() therefore hands out buffers from a small pool:
//
//   * a buffer whose tensor is freed goes back to the pool instead of the OS, and the next request
//     of about the same size (the next training step) gets it with its pages already in place;
//   * the pool keeps at most EQSCALE_CPU_POOL_MB megabytes of unused buffers (default: a quarter
//     of the physical memory, at most 4096; 0 turns it off), the oldest returned first when over.
//     One training step of an L = 6 SO(2) convolution (E = 30,000, C = 64) cycles through about
//     2 GB of such outputs: with a 1 GB pool half of them were fresh pages every step, and its
//     forward+backward ran 15% slower;
//   * buffers of 8 MiB and more are 2 MiB aligned and backed by transparent huge pages where the
//     kernel has them in "madvise" mode (the common default): on a 2-core machine a fresh 192 MB
//     tensor took 100 ms to fill with 4 KiB pages against 30-40 ms with 2 MiB pages;
//   * buffers from 256 KiB on are pooled too. glibc serves those from its heap, but the few MB of
//     them a step frees at its end go over its trim threshold, so it returns them to the OS and the
//     next step faults them in again: in the tensor-product convolution's forward+backward at L = 2
//     (N = 1000, node tensors of about 1 MB each) that was 3,600 page faults a step.
//
// The op empty_pooled (memory.cpp) hands the same buffers to Python for the intermediates that
// PyTorch GEMMs write in the SO(2) maps (with a 1 GB pool that measured 8% slower, the pool then
// overflowing; with the present default, 5-20% faster).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <list>
#include <mutex>
#include <string>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace eqscale {

constexpr int64_t kHugePage = int64_t{1} << 21;
// Buffers from this size on are backed by huge pages.
constexpr int64_t kHugeBufferBytes = 4 * kHugePage;
// Buffers from this size on come from the pool.
constexpr int64_t kPooledBufferBytes = int64_t{1} << 18;

// Asks for transparent huge pages on the 2 MiB-aligned part of [data, data + bytes) when it spans
// at least a few of them; a no-op elsewhere.
inline void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = static_cast<uintptr_t>(kHugePage);
  if (bytes < kHugeBufferBytes) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// The pool of unused large buffers (see the top of this file). Never destroyed: tensors that are
// still alive at exit return their buffers through it.
class BufferPool {
 public:
  static BufferPool& instance() {
    static BufferPool* pool = new BufferPool();
    return *pool;
  }

  // A buffer of at least `bytes`: the smallest pooled one of at most twice that size (the most
  // recently returned among equals, whose pages are likeliest still in cache), else a new one.
  void* take(int64_t bytes, int64_t& capacity) {
    {
      std::lock_guard<std::mutex> guard(lock_);
      auto best = free_.end();
      for (auto it = free_.begin(); it != free_.end(); ++it)
        if (it->second >= bytes && it->second <= 2 * bytes && (best == free_.end() || it->second <= best->second))
          best = it;
      if (best != free_.end()) {
        void* data = best->first;
        capacity = best->second;
        free_bytes_ -= capacity;
        free_.erase(best);
        return data;
      }
    }
    const int64_t alignment = bytes >= kHugeBufferBytes ? kHugePage : int64_t{4096};
    capacity = (bytes + alignment - 1) / alignment * alignment;
    void* data = nullptr;
    if (posix_memalign(&data, static_cast<size_t>(alignment), static_cast<size_t>(capacity)) != 0) return nullptr;
    advise_huge_pages(data, capacity);
    return data;
  }

  // Takes a buffer back, or frees it (and the oldest others) beyond the size limit.
  void give(void* data, int64_t capacity) {
    std::lock_guard<std::mutex> guard(lock_);
    free_.emplace_back(data, capacity);
    free_bytes_ += capacity;
    while (free_bytes_ > limit_bytes_ && !free_.empty()) {
      std::free(free_.front().first);
      free_bytes_ -= free_.front().second;
      free_.pop_front();
    }
  }

  bool enabled() const { return limit_bytes_ > 0; }

 private:
  BufferPool() {
    const char* text = std::getenv("EQSCALE_CPU_POOL_MB");
    const int64_t megabytes = text == nullptr ? default_megabytes() : std::atoll(text);
    limit_bytes_ = megabytes > 0 ? megabytes << 20 : 0;
  }

  static int64_t default_megabytes() {
    int64_t megabytes = 4096;
#if defined(__linux__)
    const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page_size > 0) megabytes = std::min<int64_t>(megabytes, (int64_t(pages) * page_size >> 20) / 4);
#endif
    return megabytes;
  }

  std::mutex lock_;
  std::list<std::pair<void*, int64_t>> free_;  // oldest first
  int64_t free_bytes_ = 0;
  int64_t limit_bytes_ = 0;
};

// at::empty for a large kernel output: from the buffer pool (pages already faulted in when reused,
// huge pages from 8 MiB on) for CPU tensors of at least 256 KiB, a plain at::empty otherwise. The
// contents are undefined, as with at::empty.
inline at::Tensor empty_huge(at::IntArrayRef size, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t s : size) numel *= s;
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(options.dtype().toScalarType()));
  BufferPool& pool = BufferPool::instance();
  if (options.device().is_cpu() && bytes >= kPooledBufferBytes && pool.enabled()) {
    int64_t capacity = 0;
    void* data = pool.take(bytes, capacity);
    if (data != nullptr) {
      return at::from_blob(
          data, size, [capacity](void* buffer) { BufferPool::instance().give(buffer, capacity); }, options);
    }
  }
  at::Tensor tensor = at::empty(size, options);
  if (tensor.device().is_cpu()) advise_huge_pages(tensor.data_ptr(), static_cast<int64_t>(tensor.nbytes()));
  return tensor;
}

}  // namespace eqscale
