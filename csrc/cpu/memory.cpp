// empty_pooled: the buffer pool of memory.h offered to Python, for the large intermediates that
// PyTorch ops write (the SO(2) maps' GEMM outputs). A fresh E x K x C output of torch.mm costs its
// page faults inside the GEMM, on both threads at once: at E = 30,000 a 146 MB output took 2.5x as
// long as the same GEMM into reused pages.
#include <torch/extension.h>

#include "memory.h"

namespace eqscale {

at::Tensor empty_pooled(const at::Tensor& like, at::IntArrayRef size) {
  TORCH_CHECK(like.device().is_cpu(), "empty_pooled: like must be a CPU tensor, got ", like.device());
  for (int64_t s : size) TORCH_CHECK(s >= 0, "empty_pooled: size must be non-negative, got ", size);
  return empty_huge(size, like.options());
}

}  // namespace eqscale

TORCH_LIBRARY_IMPL(eqscale, CPU, m) { m.impl("empty_pooled", &eqscale::empty_pooled); }
