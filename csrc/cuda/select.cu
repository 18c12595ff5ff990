// Global selection across many CUDA tensors, without concatenating them:
// kth_smallest (the global pruning threshold) and prune_lowest (the masks that
// prune exactly k entries, ties broken by position). The CUDA twin of
// csrc/cpu/select.cpp; same contract, same key order.
//
// Keys. Each float's bits become an unsigned integer of the same width whose
// order is the float order: 2^(W-1) + magnitude for x >= 0, 2^(W-1) - magnitude
// for x < 0; -0.0 and +0.0 both map to 2^(W-1); every NaN maps to 2^W - 1,
// above +inf (the order of torch.sort / kthvalue).
//
// Layout. The tensors are described by a table of segments (data, mask and
// output pointers, numel, first tile), copied to the device once per call
// together with the select state. The global index space is cut into tiles of
// kTile elements that never straddle a tensor, numbered in position order; a
// block walks the tiles (block-stride) and finds a tile's tensor by binary
// search over the table. Every pass covers all tensors in one launch.
//
// Select: radix select on kDigitBits-bit digits, most significant first
// (float32: 3 passes of 11, 11, 10 bits; float16/bfloat16: 2; float64: 6).
// A pass histograms, in shared memory, the digit of every active key whose
// higher digits match the prefix chosen so far, and adds the block's histogram
// to a global one; a one-block kernel then scans it and moves the prefix, the
// rank left and the count below into the state, on the device: no host
// synchronisation between passes (the masked prune_lowest synchronises once at
// the end, to report k above the number of active entries).
//
// prune_lowest: after the select, the state holds the threshold key T, the
// active keys below it and the ties (== T); the first `rank` ties in position
// order are pruned. When that is all of them, one write pass: keep active keys
// > T. Otherwise a pass counts the ties per tile, a cumulative sum over the
// tiles (position order) gives each tile its first tie's rank, and the write
// pass ranks the ties inside a tile with block-wide exclusive scans.

// Only c10's CUDA headers: ATen/cuda/CUDAContext.h would pull in cuBLAS and
// cuSPARSE headers, which a minimal toolkit (enough for this file) lacks.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "select_host.h"

namespace lth_sparse {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kItemsPerThread = 16;
constexpr int64_t kTile = int64_t{kThreads} * kItemsPerThread;  // elements per tile
constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;
constexpr int kBinsPerThread = kBins / kThreads;
static_assert(kBins % kThreads == 0, "the bucket scan gives each thread the same number of bins");

template <typename scalar_t>
struct KeyTraits;
template <>
struct KeyTraits<float> {
  using U = uint32_t;
  static constexpr U kMagnitude = 0x7fffffffu, kInf = 0x7f800000u, kNaN = 0x7fc00000u;
};
template <>
struct KeyTraits<double> {
  using U = uint64_t;
  static constexpr U kMagnitude = 0x7fffffffffffffffull, kInf = 0x7ff0000000000000ull,
                     kNaN = 0x7ff8000000000000ull;
};
template <>
struct KeyTraits<at::Half> {
  using U = uint16_t;
  static constexpr U kMagnitude = 0x7fff, kInf = 0x7c00, kNaN = 0x7e00;
};
template <>
struct KeyTraits<at::BFloat16> {
  using U = uint16_t;
  static constexpr U kMagnitude = 0x7fff, kInf = 0x7f80, kNaN = 0x7fc0;
};

template <typename scalar_t>
using UOf = typename KeyTraits<scalar_t>::U;

template <typename scalar_t>
constexpr int kKeyBits = 8 * sizeof(UOf<scalar_t>);

// Keys are computed in 32-bit registers (64-bit for float64): GPUs do 64-bit
// integer arithmetic in two instructions.
template <typename scalar_t>
using KeyOf = std::conditional_t<sizeof(UOf<scalar_t>) == 8, uint64_t, uint32_t>;

// Order-preserving unsigned key of a float's bits (see the top of the file).
template <typename scalar_t>
__device__ __forceinline__ KeyOf<scalar_t> to_key(UOf<scalar_t> bits) {
  using T = KeyTraits<scalar_t>;
  using Key = KeyOf<scalar_t>;
  constexpr Key kBias = Key{1} << (kKeyBits<scalar_t> - 1);
  const Key magnitude = bits & T::kMagnitude;
  if (magnitude > T::kInf) return (kBias << 1) - 1;  // NaN: the largest key
  return (bits & ~T::kMagnitude) ? kBias - magnitude : kBias + magnitude;
}

// The float bits of a key (+0.0 for zero, a quiet NaN for the NaN key).
template <typename scalar_t>
__device__ __forceinline__ UOf<scalar_t> from_key(uint64_t key) {
  using T = KeyTraits<scalar_t>;
  using U = UOf<scalar_t>;
  constexpr uint64_t kBias = uint64_t{1} << (kKeyBits<scalar_t> - 1);
  if (key == (kBias << 1) - 1) return T::kNaN;
  if (key >= kBias) return static_cast<U>(key - kBias);
  return static_cast<U>((kBias - key) | kBias);  // magnitude with the sign bit
}

struct Segment {
  const void* scores;
  const uint8_t* mask;  // nullptr: all entries active
  uint8_t* out;         // prune_lowest's output
  int64_t numel;
  int64_t first_tile;
};

// Where the select stands; lives on the device and is updated between passes.
struct SelectState {
  unsigned long long prefix;       // the key bits chosen so far
  unsigned long long prefix_mask;  // which bits those are
  long long rank;    // 1-based rank of the wanted key among the keys matching the prefix
  long long less;    // active keys below every key matching the prefix
  long long count;   // active keys matching the prefix (after the last pass: the ties of T)
  long long active;  // active keys in all (counted by the first pass)
  int error;         // 1: rank above the number of active keys
};

struct Table {
  const Segment* segments;
  int num_segments;
  int64_t num_tiles;
};

// The tile's tensor and element range [begin, end).
__device__ __forceinline__ const Segment& tile_segment(const Table& table, int64_t tile, int64_t& begin,
                                                       int64_t& end) {
  int lo = 0, hi = table.num_segments - 1;
  while (lo < hi) {  // the last segment whose first_tile <= tile
    const int mid = (lo + hi + 1) / 2;
    if (table.segments[mid].first_tile <= tile) lo = mid; else hi = mid - 1;
  }
  const Segment& s = table.segments[lo];
  begin = (tile - s.first_tile) * kTile;
  end = min(begin + kTile, s.numel);
  return s;
}

template <typename scalar_t, bool kMasked>
__device__ __forceinline__ bool load_key(const Segment& s, int64_t i, KeyOf<scalar_t>& key) {
  key = to_key<scalar_t>(static_cast<const UOf<scalar_t>*>(s.scores)[i]);
  return !kMasked || s.mask[i];
}

// One radix pass: histogram of the digit (key >> shift) & (2^bits - 1) of the
// active keys whose higher bits match the state's prefix.
template <typename scalar_t, bool kMasked>
__global__ void __launch_bounds__(kThreads) histogram_kernel(Table table, const SelectState* state,
                                                             int shift, int bits,
                                                             unsigned long long* hist) {
  __shared__ unsigned int block_hist[kBins];
  for (int b = threadIdx.x; b < kBins; b += kThreads) block_hist[b] = 0;
  __syncthreads();
  using Key = KeyOf<scalar_t>;
  const Key prefix = static_cast<Key>(state->prefix), prefix_mask = static_cast<Key>(state->prefix_mask);
  const Key digit_mask = static_cast<Key>((Key{1} << bits) - 1);
  for (int64_t tile = blockIdx.x; tile < table.num_tiles; tile += gridDim.x) {
    int64_t begin, end;
    const Segment& s = tile_segment(table, tile, begin, end);
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      Key key;
      if (load_key<scalar_t, kMasked>(s, i, key) && (key & prefix_mask) == prefix)
        atomicAdd(&block_hist[(key >> shift) & digit_mask], 1u);
    }
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kBins; b += kThreads)
    if (block_hist[b]) atomicAdd(&hist[b], static_cast<unsigned long long>(block_hist[b]));
}

// Scans a pass's histogram and moves the state to the bucket holding the
// wanted rank. One block.
__global__ void __launch_bounds__(kThreads) choose_bucket_kernel(const unsigned long long* hist,
                                                                 SelectState* state, int shift, int bits,
                                                                 bool first_pass) {
  using Scan = cub::BlockScan<long long, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ long long total;
  const long long rank = state->rank;  // read by every thread before any thread writes the state
  long long counts[kBinsPerThread];
  long long sum = 0;
  for (int j = 0; j < kBinsPerThread; ++j) {
    counts[j] = static_cast<long long>(hist[threadIdx.x * kBinsPerThread + j]);
    sum += counts[j];
  }
  long long before, block_total;
  Scan(scan_storage).ExclusiveSum(sum, before, block_total);
  if (threadIdx.x == 0) total = block_total;
  __syncthreads();
  if (first_pass && threadIdx.x == 0) {
    state->active = total;
    if (rank > total) state->error = 1;
  }
  if (rank > total) return;  // reported through `error`; the state is left as it is
  for (int j = 0; j < kBinsPerThread; ++j) {
    if (before < rank && before + counts[j] >= rank) {
      const unsigned long long bucket = threadIdx.x * kBinsPerThread + j;
      const unsigned long long digit_mask = ((1ull << bits) - 1) << shift;
      state->prefix |= bucket << shift;
      state->prefix_mask |= digit_mask;
      state->rank = rank - before;
      state->less += before;
      state->count = counts[j];
    }
    before += counts[j];
  }
}

template <typename scalar_t>
__global__ void write_value_kernel(const SelectState* state, UOf<scalar_t>* out) {
  *out = from_key<scalar_t>(state->prefix);
}

// prune_lowest: the active ties (key == T) of each tile, when some ties stay.
template <typename scalar_t, bool kMasked>
__global__ void __launch_bounds__(kThreads) count_ties_kernel(Table table, const SelectState* state,
                                                              long long* tile_ties) {
  using Reduce = cub::BlockReduce<long long, kThreads>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  using Key = KeyOf<scalar_t>;
  const bool all_ties_go = state->rank == state->count;
  const Key threshold = static_cast<Key>(state->prefix);
  for (int64_t tile = blockIdx.x; tile < table.num_tiles; tile += gridDim.x) {
    long long ties = 0;
    if (!all_ties_go) {
      int64_t begin, end;
      const Segment& s = tile_segment(table, tile, begin, end);
      for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
        Key key;
        ties += load_key<scalar_t, kMasked>(s, i, key) && key == threshold;
      }
      ties = Reduce(reduce_storage).Sum(ties);
      __syncthreads();  // reduce_storage is reused by the next tile
    }
    if (threadIdx.x == 0) tile_ties[tile] = ties;
  }
}

// prune_lowest's output: keep active keys > T, and the ties of rank >= need
// (need = state->rank; ranks in position order, from the tiles' cumulative tie
// counts and a block scan inside the tile).
template <typename scalar_t, bool kMasked>
__global__ void __launch_bounds__(kThreads) write_masks_kernel(Table table, const SelectState* state,
                                                               const long long* tile_ties_inclusive) {
  using Scan = cub::BlockScan<long long, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  using Key = KeyOf<scalar_t>;
  const Key threshold = static_cast<Key>(state->prefix);
  const long long need = state->rank;
  const bool all_ties_go = need == state->count;
  for (int64_t tile = blockIdx.x; tile < table.num_tiles; tile += gridDim.x) {
    int64_t begin, end;
    const Segment& s = tile_segment(table, tile, begin, end);
    if (all_ties_go) {
      for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
        Key key;
        s.out[i] = load_key<scalar_t, kMasked>(s, i, key) && key > threshold;
      }
      continue;
    }
    long long rank = tile == 0 ? 0 : tile_ties_inclusive[tile - 1];  // ties before this tile
    // Rounds of kThreads consecutive elements: block-uniform trip count, so every thread scans.
    for (int64_t round = begin; round < end; round += kThreads) {
      const int64_t i = round + threadIdx.x;
      Key key = 0;
      const bool active = i < end && load_key<scalar_t, kMasked>(s, i, key);
      const long long tie = active && key == threshold;
      long long tie_before, round_ties;
      Scan(scan_storage).ExclusiveSum(tie, tie_before, round_ties);
      __syncthreads();  // scan_storage is reused by the next round
      if (i < end) s.out[i] = active && (key > threshold || (tie && rank + tie_before >= need));
      rank += round_ties;
    }
  }
}

// ---------------------------------------------------------------------------
// Host side.

// The device-side table and state of one call, copied in one transfer.
struct DeviceLayout {
  std::vector<at::Tensor> held;  // contiguous copies of non-contiguous inputs
  std::vector<Segment> segments;
  std::vector<int> segment_of_input;  // -1 for a 0-size tensor
  int64_t total = 0;
  int64_t num_tiles = 0;
  at::Tensor device_buffer;  // [SelectState][Segment...]

  DeviceLayout(const std::vector<at::Tensor>& scores, const std::vector<at::Tensor>* masks) {
    segment_of_input.assign(scores.size(), -1);
    for (size_t i = 0; i < scores.size(); ++i) {
      const int64_t n = scores[i].numel();
      if (n == 0) continue;
      held.push_back(scores[i].contiguous());
      const void* data = held.back().data_ptr();
      const uint8_t* mask = nullptr;
      if (masks) {
        held.push_back((*masks)[i].contiguous());
        mask = static_cast<const uint8_t*>(held.back().data_ptr());
      }
      segment_of_input[i] = static_cast<int>(segments.size());
      segments.push_back({data, mask, nullptr, n, num_tiles});
      num_tiles += (n + kTile - 1) / kTile;
      total += n;
    }
  }

  // Copies the state and the table to the device (through pinned memory, asynchronously).
  void upload(long long k, const at::Device& device) {
    const size_t bytes = sizeof(SelectState) + segments.size() * sizeof(Segment);
    at::Tensor host = at::empty({static_cast<int64_t>(bytes)},
                                at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    SelectState state{0, 0, k, 0, 0, 0, 0};
    std::memcpy(host.data_ptr(), &state, sizeof(state));
    std::memcpy(static_cast<uint8_t*>(host.data_ptr()) + sizeof(SelectState), segments.data(),
                segments.size() * sizeof(Segment));
    device_buffer = host.to(at::TensorOptions().dtype(at::kByte).device(device), /*non_blocking=*/true);
  }
  SelectState* state() const { return static_cast<SelectState*>(device_buffer.data_ptr()); }
  Table table() const {
    return {reinterpret_cast<const Segment*>(static_cast<uint8_t*>(device_buffer.data_ptr()) +
                                             sizeof(SelectState)),
            static_cast<int>(segments.size()), num_tiles};
  }
};

int grid_for(int64_t tiles) {
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(tiles, int64_t{sms} * 8)));
}

// Radix passes; at the end the state holds the k-th key (prefix), the keys
// below it (less), its ties (count), and its rank among the ties (rank).
template <typename scalar_t, bool kMasked>
void radix_select(const DeviceLayout& layout, const at::Device& device) {
  constexpr int kBits = kKeyBits<scalar_t>;
  constexpr int kPasses = (kBits + kDigitBits - 1) / kDigitBits;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor hist = at::zeros({kPasses, kBins}, at::TensorOptions().dtype(at::kLong).device(device));
  auto* hist_data = reinterpret_cast<unsigned long long*>(hist.data_ptr<int64_t>());
  const int grid = grid_for(layout.num_tiles);
  for (int pass = 0; pass < kPasses; ++pass) {
    const int high = kBits - pass * kDigitBits;  // bits [shift, high) are this pass's digit
    const int shift = std::max(0, high - kDigitBits);
    const int bits = high - shift;
    histogram_kernel<scalar_t, kMasked><<<grid, kThreads, 0, stream>>>(
        layout.table(), layout.state(), shift, bits, hist_data + pass * kBins);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    choose_bucket_kernel<<<1, kThreads, 0, stream>>>(hist_data + pass * kBins, layout.state(), shift,
                                                     bits, pass == 0);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

constexpr const char* kExpected = "a CUDA tensor for the CUDA kernel";

template <typename scalar_t, bool kMasked>
void prune_impl(DeviceLayout& layout, const at::Device& device) {
  radix_select<scalar_t, kMasked>(layout, device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int grid = grid_for(layout.num_tiles);
  at::Tensor tile_ties = at::empty({layout.num_tiles}, at::TensorOptions().dtype(at::kLong).device(device));
  count_ties_kernel<scalar_t, kMasked><<<grid, kThreads, 0, stream>>>(
      layout.table(), layout.state(), reinterpret_cast<long long*>(tile_ties.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor inclusive = at::cumsum(tile_ties, 0);
  write_masks_kernel<scalar_t, kMasked><<<grid, kThreads, 0, stream>>>(
      layout.table(), layout.state(), reinterpret_cast<const long long*>(inclusive.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor kth_smallest(const std::vector<at::Tensor>& tensors, int64_t k) {
  select_host::check_scores(tensors, "kth_smallest", "tensors", at::kCUDA, kExpected);
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  DeviceLayout layout(tensors, nullptr);
  select_host::check_kth(k, layout.total, "kth_smallest");
  layout.upload(k, tensors[0].device());
  at::Tensor out = at::empty({}, tensors[0].options());
  select_host::dispatch_float(tensors[0].scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    radix_select<scalar_t, false>(layout, tensors[0].device());
    write_value_kernel<scalar_t><<<1, 1, 0, c10::cuda::getCurrentCUDAStream()>>>(
        layout.state(), static_cast<UOf<scalar_t>*>(out.data_ptr()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::vector<at::Tensor> prune_lowest(const std::vector<at::Tensor>& scores,
                                     const std::optional<std::vector<at::Tensor>>& masks, int64_t k) {
  select_host::check_scores(scores, "prune_lowest", "scores", at::kCUDA, kExpected);
  if (masks.has_value()) select_host::check_masks(scores, *masks);
  const c10::cuda::CUDAGuard guard(scores[0].device());
  DeviceLayout layout(scores, masks.has_value() ? &*masks : nullptr);
  select_host::check_prune_count(k, layout.total);
  std::vector<at::Tensor> out = select_host::new_masks(scores, masks, k, layout);
  if (k == 0) return out;  // nothing to prune: the masks as they are
  layout.upload(k, scores[0].device());
  select_host::dispatch_float(scores[0].scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    if (masks.has_value()) {
      prune_impl<scalar_t, true>(layout, scores[0].device());
    } else {
      prune_impl<scalar_t, false>(layout, scores[0].device());
    }
  });
  if (masks.has_value()) {  // only here can k exceed the active entries; one synchronisation to say so
    SelectState state;
    C10_CUDA_CHECK(cudaMemcpyAsync(&state, layout.state(), sizeof(state), cudaMemcpyDeviceToHost,
                                   c10::cuda::getCurrentCUDAStream()));
    C10_CUDA_CHECK(cudaStreamSynchronize(c10::cuda::getCurrentCUDAStream()));
    TORCH_CHECK(!state.error, "prune_lowest: k=", k, " is above the number of active (unpruned) entries, ",
                state.active);
  }
  return out;
}

}  // namespace cuda
}  // namespace lth_sparse
