// Global selection across many CPU tensors (see select.cpp for the algorithm).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace lth_sparse {
namespace cpu {

// The k-th smallest (1-based) value over all elements of `tensors`, as a 0-dim
// tensor of their dtype: torch.cat([t.reshape(-1) for t in tensors]).kthvalue(k).values,
// computed without concatenating. NaN orders above +inf; -0.0 equals +0.0.
at::Tensor kth_smallest(const std::vector<at::Tensor>& tensors, int64_t k);

// New bool masks (one per score tensor, of its shape): among the entries True in
// `masks` (all entries when absent), exactly the k with the smallest score become
// False. Ties break by position: an earlier tensor first, then a lower flat index.
std::vector<at::Tensor> prune_lowest(const std::vector<at::Tensor>& scores,
                                     const std::optional<std::vector<at::Tensor>>& masks,
                                     int64_t k);

// kth_smallest computed by the exact radix passes alone (no sampled bracket):
// the path taken when a sampled bracket misses; exposed so tests can reach it.
at::Tensor kth_smallest_radix(const std::vector<at::Tensor>& tensors, int64_t k);

struct KernelInfo {
  bool openmp;
  int threads;
  bool avx2;  // the AVX2 float32 kernels are in use
  int64_t sample_size;
  int64_t chunk_elements;
  int radix_bits;
};
KernelInfo kernel_info();

}  // namespace cpu
}  // namespace lth_sparse
