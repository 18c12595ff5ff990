// What the CPU masked layers need to know of a mask, computed once per mask content.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/FunctionRef.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace lth_sparse {
namespace cpu {

struct MaskState {
  int64_t kept = 0;                    // True entries
  std::vector<at::Tensor> structure;   // mask_structure(mask), or empty when not asked for
};

// The number of True entries of a bool CPU mask and, where want_structure(kept) says so, its
// CSR/CSC structure (one lookup: the caller decides from the count whether it needs the structure).
//
// Cached on the mask tensor itself (attached to its TensorImpl, so an entry is freed with the
// last tensor that shares it: the mask, its .data and .detach()), together with a copy of the
// mask's bytes from when it was counted. Every lookup compares the mask's bytes with that copy
// (one memcmp: ~7 us for LeNet's 784x300 fc1, ~1.5% of its forward + backward at 90% sparsity
// and batch 60) and recounts on any difference, so every write is seen, also those that bypass
// torch's version counter (mask.data.copy_(...), a numpy view, a collective writing the storage).
// The count and the structure of one entry always describe the same bytes. Thread-safe among its
// own calls (torch's own metadata changes of the same mask from another thread are not).
MaskState mask_state(const at::Tensor& mask, c10::function_ref<bool(int64_t)> want_structure);
MaskState mask_state(const at::Tensor& mask, bool want_structure);

// For tests and reports.
struct MaskCacheStats {
  int64_t entries;           // alive: attached to a live mask, or held by a running layer
  int64_t structures_built;  // mask_structure calls made by the cache since the process started
  int64_t counts;            // masks counted since the process started
};
MaskCacheStats mask_cache_stats();
// (kept, structure built) of the cache's entry for mask, if it holds one that matches the mask's bytes.
std::optional<std::pair<int64_t, bool>> mask_cache_entry(const at::Tensor& mask);

}  // namespace cpu
}  // namespace lth_sparse
