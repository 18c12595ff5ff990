// What the CPU masked layers need to know of a mask, computed once per mask state.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace lth_sparse {
namespace cpu {

struct MaskState {
  int64_t kept = 0;                    // True entries
  std::vector<at::Tensor> structure;   // mask_structure(mask), or empty when not asked for
};

// The number of True entries of a bool CPU mask and, with want_structure, its CSR/CSC structure.
//
// Cached against the mask tensor itself (its TensorImpl, held weakly), its version counter and its
// data pointer, so any in-place change made through torch (copy_, indexing, set_, through a view
// or the base) is seen, but a write that bypasses the version counter (mask.data[...] = ..., a
// numpy view) is not. Inference tensors have no version counter: never cached. An entry is
// dropped at the first insertion after its mask died. Thread-safe.
MaskState mask_state(const at::Tensor& mask, bool want_structure);

// For tests and reports.
struct MaskCacheStats {
  int64_t entries;           // live and not yet swept
  int64_t structures_built;  // mask_structure calls made by the cache since the process started
  int64_t counts;            // masks counted since the process started
};
MaskCacheStats mask_cache_stats();
// (kept, structure built) of the cache's entry for mask, if it holds a current one.
std::optional<std::pair<int64_t, bool>> mask_cache_entry(const at::Tensor& mask);

}  // namespace cpu
}  // namespace lth_sparse
