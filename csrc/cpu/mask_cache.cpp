// The mask cache of the CPU masked layers (see mask_cache.h).
//
// It lives in C++ so that a masked layer's forward can look its mask up without Python: the
// plain-eager path of masked_linear (masked_linear_auto) checks, chooses its path and runs in one
// call. A Python dict keyed on id() with weakref callbacks cost ~5 us a call in lookups and
// bookkeeping; this costs a hash lookup.
#include "cpu/mask_cache.h"

#include <c10/util/intrusive_ptr.h>

#include <mutex>
#include <unordered_map>

#include "cpu/masked.h"

namespace lth_sparse {
namespace cpu {
namespace {

struct Entry {
  c10::weak_intrusive_ptr<c10::TensorImpl> ref;  // keeps the address from being reused while cached
  uint32_t version;
  const void* data;
  int64_t kept;
  std::vector<at::Tensor> structure;
};

struct Cache {
  std::mutex mutex;
  std::unordered_map<const c10::TensorImpl*, Entry> entries;
  int64_t structures_built = 0;
  int64_t counts = 0;

  void sweep() {
    for (auto it = entries.begin(); it != entries.end();) {
      it = it->second.ref.expired() ? entries.erase(it) : std::next(it);
    }
  }
};

// Never destroyed: entries hold tensors, which must not be freed during interpreter shutdown.
Cache& cache() {
  static Cache* instance = new Cache();
  return *instance;
}

int64_t count_kept(const at::Tensor& mask) {
  return mask.numel() == 0 ? 0 : at::count_nonzero(mask).item<int64_t>();
}

// Whether the entry still describes the mask: the same version and the same memory.
bool current(const Entry& entry, const at::Tensor& mask) {
  return entry.version == mask.unsafeGetTensorImpl()->version_counter().current_version() &&
         entry.data == mask.data_ptr();
}

void check_mask(const at::Tensor& mask) {
  TORCH_CHECK(mask.defined() && mask.scalar_type() == at::kBool && mask.device().is_cpu(),
              "mask cache: expected a bool CPU tensor");
}

}  // namespace

MaskState mask_state(const at::Tensor& mask, bool want_structure) {
  check_mask(mask);
  Cache& c = cache();
  if (mask.is_inference()) {
    MaskState state{count_kept(mask), {}};
    if (want_structure) state.structure = mask_structure(mask);
    std::lock_guard<std::mutex> lock(c.mutex);
    c.counts += 1;
    c.structures_built += want_structure;
    return state;
  }
  c10::TensorImpl* impl = mask.unsafeGetTensorImpl();
  const uint32_t version = impl->version_counter().current_version();
  const void* data = mask.data_ptr();
  std::lock_guard<std::mutex> lock(c.mutex);
  auto it = c.entries.find(impl);
  if (it == c.entries.end()) {
    c.sweep();
    it = c.entries.emplace(impl, Entry{c10::weak_intrusive_ptr<c10::TensorImpl>(mask.getIntrusivePtr()),
                                       version, data, count_kept(mask), {}}).first;
    c.counts += 1;
  } else if (!current(it->second, mask)) {
    it->second = Entry{std::move(it->second.ref), version, data, count_kept(mask), {}};
    c.counts += 1;
  }
  Entry& entry = it->second;
  if (want_structure && entry.structure.empty()) {
    entry.structure = mask_structure(mask);
    c.structures_built += 1;
  }
  return MaskState{entry.kept, want_structure ? entry.structure : std::vector<at::Tensor>{}};
}

MaskCacheStats mask_cache_stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  int64_t live = 0;
  for (const auto& kv : c.entries) live += !kv.second.ref.expired();
  return {live, c.structures_built, c.counts};
}

std::optional<std::pair<int64_t, bool>> mask_cache_entry(const at::Tensor& mask) {
  check_mask(mask);
  if (mask.is_inference()) return std::nullopt;
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  auto it = c.entries.find(mask.unsafeGetTensorImpl());
  if (it == c.entries.end() || !current(it->second, mask)) return std::nullopt;
  return std::make_pair(it->second.kept, !it->second.structure.empty());
}

}  // namespace cpu
}  // namespace lth_sparse
