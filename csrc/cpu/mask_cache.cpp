// The mask cache of the CPU masked layers (see mask_cache.h).
//
// It lives in C++ so that a masked layer's forward can look its mask up without Python: the
// plain-eager path of masked_linear (masked_linear_auto) checks, chooses its path and runs in one
// call. A Python dict keyed on id() with weakref callbacks cost ~5 us a call in lookups and
// bookkeeping.
//
// Why the bytes are compared: a mask's version counter misses writes that bypass it
// (mask.data.copy_(...), which has a counter of its own, numpy views, collectives writing the
// storage), and a stale count or structure gives silently wrong outputs, the worst failure there
// is. Comparing with a copy is exact (no hash collision to reason about) and costs one memcmp of
// the mask and the copy, 1 byte per weight each.
//
// Why the entry hangs on the TensorImpl (as its c10::BackendMeta, which torch frees with the
// TensorImpl and shares with its shallow copies, .data and .detach()): a map keyed on the
// TensorImpl could only notice a dead mask at a later sweep, holding its copy and its structure
// until then. A mask that already carries another BackendMeta is never cached: it is counted
// (and its structure built) at every lookup.
#include "cpu/mask_cache.h"

#include <ATen/Parallel.h>
#include <c10/core/TensorImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <mutex>

#include "cpu/masked.h"

namespace lth_sparse {
namespace cpu {
namespace {

std::atomic<int64_t> live_entries{0};
std::atomic<int64_t> structures_built{0};
std::atomic<int64_t> counts{0};

// What the cache knows of one mask content. Immutable but for the structure, built on first
// demand from `bytes`, so that it always describes the bytes that `kept` counted.
struct Entry final : c10::BackendMeta {
  std::vector<int64_t> sizes;
  at::Tensor bytes;  // contiguous copy of the mask when it was counted
  int64_t kept;
  std::mutex structure_mutex;
  std::vector<at::Tensor> structure;  // empty until built

  Entry(const at::Tensor& contiguous_mask, int64_t kept_)
      : sizes(contiguous_mask.sizes().vec()), bytes(at::empty(contiguous_mask.sizes(), contiguous_mask.options())),
        kept(kept_) {
    if (bytes.numel() > 0) std::memcpy(bytes.data_ptr(), contiguous_mask.const_data_ptr(), bytes.numel());
    live_entries.fetch_add(1, std::memory_order_relaxed);
  }
  ~Entry() override { live_entries.fetch_sub(1, std::memory_order_relaxed); }

  std::vector<at::Tensor> structure_once() {
    std::lock_guard<std::mutex> lock(structure_mutex);
    if (structure.empty()) {
      structure = mask_structure(bytes);
      structures_built.fetch_add(1, std::memory_order_relaxed);
    }
    return structure;
  }

  bool has_structure() {
    std::lock_guard<std::mutex> lock(structure_mutex);
    return !structure.empty();
  }
};

// Guards reading and replacing the BackendMeta of masks (the intrusive_ptr in the TensorImpl).
std::mutex& attach_mutex() {
  static std::mutex* m = new std::mutex();  // never destroyed: lookups may run during shutdown
  return *m;
}

void check_mask(const at::Tensor& mask) {
  TORCH_CHECK(mask.defined() && mask.scalar_type() == at::kBool && mask.device().is_cpu() &&
                  mask.layout() == at::kStrided,
              "mask cache: expected a bool CPU tensor");
}

// Whether two equally long byte ranges are equal: memcmp, split over threads for large masks.
bool same_bytes(const uint8_t* a, const uint8_t* b, int64_t n) {
  constexpr int64_t kGrain = int64_t{1} << 20;
  if (n <= kGrain) return std::memcmp(a, b, n) == 0;
  std::atomic<bool> differ{false};
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    if (!differ.load(std::memory_order_relaxed) && std::memcmp(a + begin, b + begin, end - begin) != 0) {
      differ.store(true, std::memory_order_relaxed);
    }
  });
  return !differ.load();
}

// Whether the entry describes the mask as it is now: the same shape and the same bytes.
bool matches(const Entry& entry, const at::Tensor& contiguous_mask) {
  if (contiguous_mask.sizes() != c10::IntArrayRef(entry.sizes)) return false;
  const int64_t n = contiguous_mask.numel();
  return n == 0 || same_bytes(static_cast<const uint8_t*>(contiguous_mask.const_data_ptr()),
                              static_cast<const uint8_t*>(entry.bytes.const_data_ptr()), n);
}

// The entry attached to impl, or null; `foreign` says whether impl carries another BackendMeta.
c10::intrusive_ptr<Entry> attached(c10::TensorImpl* impl, bool* foreign) {
  std::lock_guard<std::mutex> lock(attach_mutex());
  const c10::intrusive_ptr<c10::BackendMeta> meta = impl->get_backend_meta_intrusive_ptr();
  auto* entry = dynamic_cast<Entry*>(meta.get());
  if (foreign != nullptr) *foreign = meta && entry == nullptr;
  return entry == nullptr ? c10::intrusive_ptr<Entry>() : c10::intrusive_ptr<Entry>::reclaim_copy(entry);
}

int64_t count_kept(const at::Tensor& contiguous_mask) {
  const auto* bits = static_cast<const uint8_t*>(contiguous_mask.const_data_ptr());
  const int64_t n = contiguous_mask.numel();
  constexpr int64_t kGrain = int64_t{1} << 18;
  return at::parallel_reduce(0, n, kGrain, int64_t{0}, [&](int64_t begin, int64_t end, int64_t acc) {
    int64_t local = 0;
#pragma omp simd reduction(+ : local)
    for (int64_t i = begin; i < end; ++i) local += bits[i] != 0;
    return acc + local;
  }, std::plus<int64_t>());
}

}  // namespace

MaskState mask_state(const at::Tensor& mask, c10::function_ref<bool(int64_t)> want_structure) {
  check_mask(mask);
  const at::Tensor m = mask.contiguous();  // the mask itself, unless a view with other strides
  c10::TensorImpl* impl = mask.unsafeGetTensorImpl();
  bool foreign = false;
  c10::intrusive_ptr<Entry> entry = attached(impl, &foreign);
  if (!entry || !matches(*entry, m)) {
    entry = c10::make_intrusive<Entry>(m, count_kept(m));
    counts.fetch_add(1, std::memory_order_relaxed);
    if (!foreign) {
      std::lock_guard<std::mutex> lock(attach_mutex());
      impl->set_backend_meta(entry);
    }
  }
  MaskState state{entry->kept, {}};
  if (want_structure(state.kept)) state.structure = entry->structure_once();
  return state;
}

MaskState mask_state(const at::Tensor& mask, bool want_structure) {
  return mask_state(mask, [want_structure](int64_t) { return want_structure; });
}

MaskCacheStats mask_cache_stats() {
  return {live_entries.load(), structures_built.load(), counts.load()};
}

std::optional<std::pair<int64_t, bool>> mask_cache_entry(const at::Tensor& mask) {
  check_mask(mask);
  const c10::intrusive_ptr<Entry> entry = attached(mask.unsafeGetTensorImpl(), nullptr);
  if (!entry || !matches(*entry, mask.contiguous())) return std::nullopt;
  return std::make_pair(entry->kept, entry->has_structure());
}

}  // namespace cpu
}  // namespace lth_sparse
