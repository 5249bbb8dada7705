// Large output tensors for the CPU kernels.
//
// The kernels' outputs (E x K x C edge features, per-edge weight gradients, edge lists) are large,
// fresh and written once. With 4 KiB pages their first-touch page faults can cost more than
// filling them: on a 2-core test machine a fresh 192 MB tensor took 100 ms to fill
// against 30-40 ms once it was backed by 2 MiB pages, and the SO(2) convolution's
// forward+backward ran 7-8% faster with its outputs allocated here. Where the kernel has
// transparent huge pages in "madvise" mode (the common default), empty_huge() asks for them
// before anything touches the memory. (Doing the same for the PyTorch-allocated intermediates of
// the SO(2) maps measured 8% slower, so it is not done there.)
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace eqscale {

// Asks for transparent huge pages on the 2 MiB-aligned part of [data, data + bytes) when it spans
// at least a few of them; a no-op elsewhere.
inline void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  if (bytes < static_cast<int64_t>(4 * kHuge)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// at::empty, backed by huge pages where the kernel grants them.
inline at::Tensor empty_huge(at::IntArrayRef size, const at::TensorOptions& options) {
  at::Tensor tensor = at::empty(size, options);
  if (tensor.device().is_cpu()) advise_huge_pages(tensor.data_ptr(), static_cast<int64_t>(tensor.nbytes()));
  return tensor;
}

}  // namespace eqscale
