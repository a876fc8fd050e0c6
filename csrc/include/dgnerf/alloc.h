// Large CPU outputs on transparent huge pages.
//
// A fresh multi-hundred-MB output (e.g. dL/dfeatures, [R,S,C]) costs more in first-touch page faults
// than in arithmetic (measured in docs/mlp_notes.md). Asking the kernel for 2 MiB pages on the buffer
// (madvise MADV_HUGEPAGE, honoured when /sys/kernel/mm/transparent_hugepage/enabled is "madvise" or
// "always") cuts the faults 512-fold. Only the 2 MiB-aligned interior of the tensor's own allocation is advised; elsewhere
// (non-Linux, small tensors, CUDA) this is plain at::empty.
#pragma once
#include <ATen/ATen.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cstdint>

namespace dgnerf {

inline at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
  if (t.device().is_cpu() && bytes >= 8 * kHuge) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1);
    const uintptr_t end = (p + bytes) & ~(kHuge - 1);
    if (end > begin) {
      // Advice only: on failure (THP disabled) the pages are simply 4 KiB ones.
      (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
    }
  }
#endif
  return t;
}

}  // namespace dgnerf
