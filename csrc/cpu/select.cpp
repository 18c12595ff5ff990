// Global selection across many CPU tensors, without concatenating them:
// kth_smallest (the global pruning threshold) and prune_lowest (the masks that
// prune exactly k entries, ties broken by position).
//
// Keys. Each float is read as its bit pattern and mapped to a signed integer of
// the same width whose order is the float order: the magnitude bits for x >= 0,
// their negation for x < 0. -0.0 and +0.0 both map to 0; every NaN maps to the
// largest integer, above +inf (the order of torch.sort / kthvalue).
//
// Select: one pass over the data in the usual case.
//   1. Sample S = 65536 stratified positions of the global index (deterministic)
//      and take from their keys a pivot pair lo <= hi around the sample rank
//      that corresponds to k, with a margin of 4 standard deviations.
//   2. One multi-threaded pass over all tensors, chunk by chunk: count the keys
//      < lo, <= lo, in (lo, hi) and <= hi, and collect the keys in (lo, hi)
//      (about 1% of the data) in per-thread buffers. The float32 kernel is AVX2
//      (8 keys per step, candidates left-packed without a branch) where the CPU
//      has it; the portable kernel counts branch-free and rescans the blocks
//      that hold a candidate.
//   3. The counts place the k-th key: on a pivot (done), among the collected
//      keys (one 11-bit histogram pass over them, then nth_element over one
//      bucket), or outside the bracket when the sample missed (rare: about
//      6e-5 for unstructured data). Then 11-bit histogram passes over the data,
//      restricted to the key range known to hold it, narrow it down until it
//      fits a buffer (1 to 3 passes for float32), and one more pass gathers it.
//   Inputs of at most kExactBelow elements skip all this: gather, nth_element.
//
// prune_lowest: select the k-th key T among the active entries, with
// c = #(< T) and e = #(== T); then one write pass: an active entry is pruned
// when its key is < T, or == T and among the first k - c ties in position
// order. When all e ties go (the usual case), that is key <= T. Otherwise the
// write pass prunes key <= T and counts the ties of each chunk on the way; an
// exclusive scan over the chunks (listed in position order) gives each chunk
// the rank of its first tie, and only the chunks holding ties that stay are
// rewritten.

#include "cpu/select.h"
#include "select_host.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#ifdef LTH_SPARSE_OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LTH_SPARSE_X86_AVX2 1  // AVX2 kernels are compiled, and used where the CPU has AVX2
#else
#define LTH_SPARSE_X86_AVX2 0
#endif

namespace lth_sparse {
namespace cpu {
namespace {

constexpr int64_t kChunk = int64_t{1} << 16;       // elements per unit of parallel work
constexpr int64_t kSampleSize = int64_t{1} << 16;  // positions sampled for the pivots
constexpr int64_t kExactBelow = int64_t{1} << 18;  // up to this many elements: gather all, nth_element
constexpr int64_t kGatherMax = int64_t{1} << 15;   // a key range this full is gathered and nth_element'd
constexpr int kRadixBits = 11;                     // histogram digit: 2048 bins, 16 KiB per thread
constexpr double kBracketSigmas = 4.0;
constexpr int kBlock = 32;         // portable counting loop: a block with a candidate is rescanned
static_assert(kBlock < 128, "block counts of 16-bit keys are kept in int16");
constexpr int64_t kPackSlack = 8;  // candidate-buffer room past capacity for one vector store

// Float bits read through an integer pointer: may_alias keeps that defined.
typedef int16_t __attribute__((may_alias)) aliased_int16;
typedef int32_t __attribute__((may_alias)) aliased_int32;
typedef int64_t __attribute__((may_alias)) aliased_int64;

template <typename scalar_t>
struct KeyTraits;
template <>
struct KeyTraits<float> {
  using Key = int32_t;
  using Raw = aliased_int32;
  static constexpr Key kMagnitude = 0x7fffffff, kInf = 0x7f800000, kNaN = 0x7fc00000;
};
template <>
struct KeyTraits<double> {
  using Key = int64_t;
  using Raw = aliased_int64;
  static constexpr Key kMagnitude = 0x7fffffffffffffffLL, kInf = 0x7ff0000000000000LL,
                       kNaN = 0x7ff8000000000000LL;
};
template <>
struct KeyTraits<at::Half> {
  using Key = int16_t;
  using Raw = aliased_int16;
  static constexpr Key kMagnitude = 0x7fff, kInf = 0x7c00, kNaN = 0x7e00;
};
template <>
struct KeyTraits<at::BFloat16> {
  using Key = int16_t;
  using Raw = aliased_int16;
  static constexpr Key kMagnitude = 0x7fff, kInf = 0x7f80, kNaN = 0x7fc0;
};

template <typename scalar_t>
using KeyOf = typename KeyTraits<scalar_t>::Key;
template <typename scalar_t>
using RawOf = typename KeyTraits<scalar_t>::Raw;

// Order-preserving key of a float's bits (see the top of the file).
// Branch-free: the sign of real data is random, and a branch on it would be
// mispredicted half the time.
template <typename scalar_t>
inline KeyOf<scalar_t> to_key(KeyOf<scalar_t> bits) {
  using T = KeyTraits<scalar_t>;
  using Key = KeyOf<scalar_t>;
  const Key magnitude = static_cast<Key>(bits & T::kMagnitude);
  // 0 or -1; a compare, not an arithmetic shift, which AVX2 lacks for 64-bit lanes
  const Key sign = static_cast<Key>(-static_cast<Key>(bits < 0));
  const Key key = static_cast<Key>((magnitude ^ sign) - sign);       // -magnitude if negative
  const Key nan = static_cast<Key>(-static_cast<Key>(magnitude > T::kInf));
  return static_cast<Key>((key & ~nan) | (std::numeric_limits<Key>::max() & nan));
}

// The float bits of a key (+0.0 for 0, a quiet NaN for the NaN key).
template <typename scalar_t>
inline KeyOf<scalar_t> from_key(KeyOf<scalar_t> key) {
  using Key = KeyOf<scalar_t>;
  if (key == std::numeric_limits<Key>::max()) return KeyTraits<scalar_t>::kNaN;
  if (key < 0) return static_cast<Key>(static_cast<Key>(-key) | std::numeric_limits<Key>::min());
  return key;
}

// ---------------------------------------------------------------------------
// The inputs as one global index space, cut into chunks that never straddle a
// tensor; chunks are listed in position order.

struct Segment {
  const void* scores;
  const uint8_t* mask;  // nullptr: all entries active
  uint8_t* out;         // prune_lowest's output for this tensor
  int64_t numel;
  int64_t offset;  // global index of the first element
};

struct Chunk {
  int32_t segment;
  int64_t begin;
  int64_t end;
};

struct Layout {
  std::vector<at::Tensor> held;           // contiguous copies of non-contiguous inputs
  std::vector<Segment> segments;          // the non-empty tensors, in order
  std::vector<int32_t> segment_of_input;  // -1 for a 0-size tensor
  std::vector<Chunk> chunks;
  int64_t total = 0;
  bool masked = false;

  Layout(const std::vector<at::Tensor>& scores, const std::vector<at::Tensor>* masks) {
    masked = masks != nullptr;
    segment_of_input.assign(scores.size(), -1);
    for (size_t i = 0; i < scores.size(); ++i) {
      const int64_t n = scores[i].numel();
      if (n == 0) continue;
      const at::Tensor s = hold(scores[i]);
      const at::Tensor m = masked ? hold((*masks)[i]) : at::Tensor();
      segment_of_input[i] = static_cast<int32_t>(segments.size());
      segments.push_back({s.data_ptr(), masked ? static_cast<const uint8_t*>(m.data_ptr()) : nullptr,
                          nullptr, n, total});
      for (int64_t b = 0; b < n; b += kChunk)
        chunks.push_back({static_cast<int32_t>(segments.size() - 1), b, std::min(n, b + kChunk)});
      total += n;
    }
  }

  // Index of the segment holding global position `pos`.
  int64_t segment_at(int64_t pos) const {
    const auto it = std::upper_bound(segments.begin(), segments.end(), pos,
                                     [](int64_t p, const Segment& s) { return p < s.offset; });
    return (it - segments.begin()) - 1;
  }

 private:
  at::Tensor hold(const at::Tensor& t) {
    held.push_back(t.is_contiguous() ? t : t.contiguous());
    return held.back();
  }
};

int max_threads() {
#ifdef LTH_SPARSE_OPENMP
  return std::max(1, at::get_num_threads());
#else
  return 1;
#endif
}

// Threads for a phase of `parts` parts (chunks of at most kChunk elements): one
// per kPartsPerThread parts at most. The small phases (the sample, the
// candidates of a large input) stay on one thread: a parallel region costs a
// fork and a join, and far more when another process holds a core.
int threads_for(int64_t parts) {
  constexpr int64_t kPartsPerThread = 32;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(max_threads(), parts / kPartsPerThread)));
}

// Runs f(thread, i) for i in [0, n) on `threads` threads (dynamic schedule);
// f must not throw. Per-thread state is indexed by `thread`.
template <typename F>
void parallel_over(int64_t n, int threads, const F& f) {
#ifdef LTH_SPARSE_OPENMP
  if (threads > 1 && n > 1) {
#pragma omp parallel num_threads(threads)
    {
      const int thread = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < n; ++i) f(thread, i);
    }
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) f(0, i);
}

template <typename Key>
struct Selection {
  Key key;        // the k-th smallest key among active entries
  int64_t less;   // active entries with a smaller key
  int64_t equal;  // active entries with this key
};

// ---------------------------------------------------------------------------
// Sources of keys for the histogram passes: the data itself (through to_key
// and the masks), or the candidates collected by the bracket pass. Both are
// cut into parts visited in parallel; a part hands its keys over in blocks,
// f(const Key* keys, int64_t count), so that the consumer runs a tight loop.

template <typename scalar_t, bool kMasked>
struct DataKeys {
  static constexpr int64_t kKeysPerBlock = 512;
  const Layout& layout;
  int64_t parts() const { return static_cast<int64_t>(layout.chunks.size()); }
  template <typename F>
  void for_each_block(int64_t part, const F& f) const {
    using Key = KeyOf<scalar_t>;
    const Chunk& ch = layout.chunks[part];
    const Segment& s = layout.segments[ch.segment];
    const RawOf<scalar_t>* bits = static_cast<const RawOf<scalar_t>*>(s.scores);
    Key keys[kKeysPerBlock];
    for (int64_t b = ch.begin; b < ch.end; b += kKeysPerBlock) {
      const int64_t n = std::min(kKeysPerBlock, ch.end - b);
      int64_t count = 0;
      for (int64_t i = 0; i < n; ++i) {  // the active keys, compacted without a branch
        keys[count] = to_key<scalar_t>(bits[b + i]);
        count += kMasked ? s.mask[b + i] : 1;
      }
      f(static_cast<const Key*>(keys), count);
    }
  }
};

template <typename Key>
struct BufferedKeys {
  std::vector<std::pair<const Key*, int64_t>> pieces;  // at most kChunk keys each
  void add(const Key* keys, int64_t n) {
    for (int64_t b = 0; b < n; b += kChunk) pieces.emplace_back(keys + b, std::min(kChunk, n - b));
  }
  int64_t parts() const { return static_cast<int64_t>(pieces.size()); }
  template <typename F>
  void for_each_block(int64_t part, const F& f) const {
    f(pieces[part].first, pieces[part].second);
  }
};

// The rank-th smallest (1-based) key of `source` within [a, b], given that
// [a, b] holds n_range of its keys and `less` keys (of the whole selection)
// lie below a. Histogram passes narrow [a, b] by kRadixBits bits each until
// it holds at most kGatherMax keys, which one more pass gathers.
template <typename Key, typename Source>
Selection<Key> range_select(const Source& source, Key a, Key b, int64_t rank, int64_t n_range,
                            int64_t less) {
  using U = std::make_unsigned_t<Key>;
  const int threads = threads_for(source.parts());
  while (a != b && n_range > kGatherMax) {
    const U width = static_cast<U>(static_cast<U>(b) - static_cast<U>(a));
    int bit_length = 0;
    for (uint64_t w = width; w != 0; w >>= 1) ++bit_length;
    const int shift = std::max(0, bit_length - kRadixBits);
    const int64_t buckets = static_cast<int64_t>(width >> shift) + 1;
    // kLanes interleaved copies of the histogram, taken in turn, so that runs
    // of keys in one bin do not wait on each other's increments; one spare bin
    // per copy takes the keys outside [a, b] (no branch).
    constexpr int kLanes = 4;
    const int64_t stride = buckets + 1;
    std::vector<std::vector<int64_t>> hist(threads, std::vector<int64_t>(kLanes * stride, 0));
    parallel_over(source.parts(), threads, [&](int t, int64_t part) {
      source.for_each_block(part, [h = hist[t].data(), a, width, shift, stride](const Key* keys,
                                                                                int64_t count) {
        for (int64_t i = 0; i < count; ++i) {
          const U offset = static_cast<U>(static_cast<U>(keys[i]) - static_cast<U>(a));
          const int64_t in_range = -static_cast<int64_t>(offset <= width);  // 0 or -1, no branch
          const int64_t bin = (static_cast<int64_t>(offset >> shift) & in_range) | ((stride - 1) & ~in_range);
          ++h[(i % kLanes) * stride + bin];
        }
      });
    });
    int64_t before = 0, bucket = 0, count = 0;
    for (; bucket < buckets; ++bucket) {
      count = 0;
      for (int t = 0; t < threads; ++t)
        for (int l = 0; l < kLanes; ++l) count += hist[t][l * stride + bucket];
      if (before + count >= rank) break;
      before += count;
    }
    TORCH_INTERNAL_ASSERT(bucket < buckets, "range_select: rank ", rank, " outside the key range");
    rank -= before;
    less += before;
    n_range = count;
    const U first = static_cast<U>(static_cast<U>(bucket) << shift);
    const U last = static_cast<U>(first + static_cast<U>((U{1} << shift) - 1));
    const Key new_a = static_cast<Key>(static_cast<U>(static_cast<U>(a) + first));
    if (last < width) b = static_cast<Key>(static_cast<U>(static_cast<U>(a) + last));
    a = new_a;
  }
  if (a == b) return {a, less, n_range};

  std::vector<std::vector<Key>> gathered(threads);
  parallel_over(source.parts(), threads, [&](int t, int64_t part) {
    const U width = static_cast<U>(static_cast<U>(b) - static_cast<U>(a));
    source.for_each_block(part, [&gathered = gathered[t], a, width](const Key* keys, int64_t count) {
      for (int64_t i = 0; i < count; ++i)  // one well-predicted test: a <= key <= b
        if (static_cast<U>(static_cast<U>(keys[i]) - static_cast<U>(a)) <= width) gathered.push_back(keys[i]);
    });
  });
  std::vector<Key> keys;
  keys.reserve(n_range);
  for (const auto& g : gathered) keys.insert(keys.end(), g.begin(), g.end());
  TORCH_INTERNAL_ASSERT(static_cast<int64_t>(keys.size()) == n_range, "range_select: lost keys");
  const auto nth = keys.begin() + (rank - 1);
  std::nth_element(keys.begin(), nth, keys.end());
  const Key key = *nth;
  int64_t below = 0, equal = 0;
  for (const Key x : keys) {
    below += x < key;
    equal += x == key;
  }
  return {key, less + below, equal};
}

// ---------------------------------------------------------------------------
// The bracket pass: counts against a pivot pair, collecting the keys strictly
// between.

template <typename Key>
struct alignas(64) BracketState {
  int64_t lt_lo = 0, le_lo = 0, mid = 0, le_hi = 0, active = 0;
  // The keys in (lo, hi), with kPackSlack slots past `capacity` so that a vector
  // kernel may store a whole vector before checking the count.
  std::unique_ptr<Key[]> candidates;
  int64_t size = 0, capacity = 0;
  bool overflow = false;

  void reserve(int64_t n) {
    candidates.reset(new Key[n + kPackSlack]);  // left untouched until written
    capacity = n;
  }
  void push(Key key) {
    if (size < capacity) {
      candidates[size++] = key;
    } else {
      overflow = true;
    }
  }
};

// (always_inline: the AVX2 wrappers below compile this body for AVX2.)
template <typename scalar_t, bool kMasked>
__attribute__((always_inline)) inline void bracket_chunk(const RawOf<scalar_t>* bits, const uint8_t* mask,
                                                         int64_t n, KeyOf<scalar_t> lo, KeyOf<scalar_t> hi,
                                                         BracketState<KeyOf<scalar_t>>& st) {
  using Key = KeyOf<scalar_t>;
  auto collect = [&](int64_t begin, int64_t end) {
    if (st.capacity - st.size < end - begin) {  // the buffer could fill up: push one by one
      for (int64_t i = begin; i < end; ++i) {
        const Key key = to_key<scalar_t>(bits[i]);
        if ((!kMasked || mask[i]) && key > lo && key < hi) st.push(key);
      }
      return;
    }
    Key* const out = st.candidates.get();
    int64_t size = st.size;
    for (int64_t i = begin; i < end; ++i) {  // store every key, keep the candidates: no branch
      const Key key = to_key<scalar_t>(bits[i]);
      out[size] = key;
      size += (!kMasked || mask[i]) & (key > lo) & (key < hi);
    }
    st.size = size;
  };
  int64_t lt_lo = 0, le_lo = 0, mid = 0, le_hi = 0, active = 0;
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    // Block counts as wide as the keys (at least 32 bits), so that they vectorise in the keys' lanes.
    using Count = std::conditional_t<sizeof(Key) == 4, int32_t, Key>;
    Count b_lt_lo = 0, b_le_lo = 0, b_mid = 0, b_le_hi = 0, b_active = 0;
    // GCC 12 does not vectorise the unmasked 64-bit loop when it holds all
    // four counts (it merges the compares of lo); two loops it does.
    constexpr bool kSplit = sizeof(Key) == 8 && !kMasked;
    for (int j = 0; j < kBlock; ++j) {
      const Key key = to_key<scalar_t>(bits[i + j]);
      const Count a = kMasked ? static_cast<Count>(mask[i + j]) : Count{1};
      b_lt_lo = static_cast<Count>(b_lt_lo + (a & static_cast<Count>(key < lo)));
      b_le_hi = static_cast<Count>(b_le_hi + (a & static_cast<Count>(key <= hi)));
      b_active = static_cast<Count>(b_active + a);
      if constexpr (!kSplit) {
        b_le_lo = static_cast<Count>(b_le_lo + (a & static_cast<Count>(key <= lo)));
        b_mid = static_cast<Count>(b_mid + (a & static_cast<Count>(key > lo) & static_cast<Count>(key < hi)));
      }
    }
    if constexpr (kSplit) {
      for (int j = 0; j < kBlock; ++j) {
        const Key key = to_key<scalar_t>(bits[i + j]);
        b_le_lo = static_cast<Count>(b_le_lo + static_cast<Count>(key <= lo));
        b_mid = static_cast<Count>(b_mid + (static_cast<Count>(key > lo) & static_cast<Count>(key < hi)));
      }
    }
    lt_lo += b_lt_lo;
    le_lo += b_le_lo;
    le_hi += b_le_hi;
    active += b_active;
    if (b_mid) {
      mid += b_mid;
      collect(i, i + kBlock);
    }
  }
  for (int64_t j = i; j < n; ++j) {
    const Key key = to_key<scalar_t>(bits[j]);
    const int a = kMasked ? mask[j] : 1;
    lt_lo += a & (key < lo);
    le_lo += a & (key <= lo);
    mid += a & (key > lo) & (key < hi);
    le_hi += a & (key <= hi);
    active += a;
  }
  collect(i, n);
  st.lt_lo += lt_lo;
  st.le_lo += le_lo;
  st.mid += mid;
  st.le_hi += le_hi;
  st.active += active;
}

// prune_lowest's write pass over one chunk: out = active && key > threshold
// (all ties pruned); returns the number of active ties (key == threshold) when
// asked to count them.
template <typename scalar_t, bool kMasked, bool kCountTies>
__attribute__((always_inline)) inline int64_t keep_above_chunk(const RawOf<scalar_t>* bits,
                                                               const uint8_t* mask, uint8_t* __restrict out,
                         int64_t n, KeyOf<scalar_t> threshold) {
  using Key = KeyOf<scalar_t>;
  int64_t ties = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t active = kMasked ? mask[i] : 1;
    const Key key = to_key<scalar_t>(bits[i]);
    out[i] = active & (key > threshold);
    if (kCountTies) ties += active & (key == threshold);
  }
  return ties;
}

// Rewrites a chunk's output keeping its ties of rank >= need (in position
// order; tie_rank: the rank of the chunk's first tie among all ties).
template <typename scalar_t, bool kMasked>
void keep_late_ties_chunk(const RawOf<scalar_t>* bits, const uint8_t* mask, uint8_t* out, int64_t n,
                          KeyOf<scalar_t> threshold, int64_t tie_rank, int64_t need) {
  for (int64_t i = 0; i < n; ++i) {
    if ((!kMasked || mask[i]) && to_key<scalar_t>(bits[i]) == threshold) out[i] = tie_rank++ >= need;
  }
}

// ---------------------------------------------------------------------------
// AVX2 kernels for float32 (the common case), used where the CPU has AVX2.

#if LTH_SPARSE_X86_AVX2
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  return has;
}

// Left-pack permutations: lanes[m] moves the lanes set in the 8-bit mask m to the front.
struct PackTable {
  int32_t lanes[256][8];
};
constexpr PackTable make_pack_table() {
  PackTable t{};
  for (int m = 0; m < 256; ++m) {
    int j = 0;
    for (int lane = 0; lane < 8; ++lane)
      if (m & (1 << lane)) t.lanes[m][j++] = lane;
  }
  return t;
}
alignas(32) constexpr PackTable kPackTable = make_pack_table();

// to_key<float> on 8 lanes.
__attribute__((target("avx2"))) inline __m256i f32_keys(__m256i bits) {
  const __m256i magnitude = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff));
  const __m256i negated = _mm256_sub_epi32(_mm256_setzero_si256(), magnitude);
  const __m256i key = _mm256_castps_si256(_mm256_blendv_ps(
      _mm256_castsi256_ps(magnitude), _mm256_castsi256_ps(negated), _mm256_castsi256_ps(bits)));
  const __m256i is_nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7f800000));
  return _mm256_blendv_epi8(key, _mm256_set1_epi32(std::numeric_limits<int32_t>::max()), is_nan);
}

// 8 mask bytes as 8 lanes of 0 / -1.
__attribute__((target("avx2"))) inline __m256i active_lanes(const uint8_t* mask) {
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(mask));
  return _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_cvtepu8_epi32(bytes));
}

__attribute__((target("avx2"))) inline int64_t lane_sum(__m256i v) {
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), v);
  int64_t s = 0;
  for (const int32_t x : lanes) s += x;
  return s;
}

// bracket_chunk<float>, 8 keys per step; the candidates are stored
// unconditionally, left-packed by a permutation looked up from the lane mask
// (a chunk that might not fit in the buffer goes to the checked kernel).
template <bool kMasked>
__attribute__((target("avx2,popcnt"))) void bracket_chunk_f32_avx2(const aliased_int32* bits,
                                                                   const uint8_t* mask, int64_t n,
                                                                   int32_t lo, int32_t hi,
                                                                   BracketState<int32_t>& st) {
  if (st.capacity - st.size < n) {  // the buffer could fill up: take the checked path
    bracket_chunk<float, kMasked>(bits, mask, n, lo, hi, st);
    return;
  }
  const __m256i zero = _mm256_setzero_si256();
  const __m256i vlo = _mm256_set1_epi32(lo), vhi = _mm256_set1_epi32(hi);
  __m256i n_lt_lo = zero, n_gt_lo = zero, n_gt_hi = zero, n_active = zero;
  int32_t* const out = st.candidates.get();
  int64_t size = st.size, mid = 0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i key = f32_keys(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits + i)));
    __m256i lt_lo = _mm256_cmpgt_epi32(vlo, key);
    __m256i gt_lo = _mm256_cmpgt_epi32(key, vlo);
    __m256i gt_hi = _mm256_cmpgt_epi32(key, vhi);
    __m256i in_mid = _mm256_and_si256(gt_lo, _mm256_cmpgt_epi32(vhi, key));
    if (kMasked) {
      const __m256i active = active_lanes(mask + i);
      lt_lo = _mm256_and_si256(lt_lo, active);
      gt_lo = _mm256_and_si256(gt_lo, active);
      gt_hi = _mm256_and_si256(gt_hi, active);
      in_mid = _mm256_and_si256(in_mid, active);
      n_active = _mm256_sub_epi32(n_active, active);
    }
    n_lt_lo = _mm256_sub_epi32(n_lt_lo, lt_lo);
    n_gt_lo = _mm256_sub_epi32(n_gt_lo, gt_lo);
    n_gt_hi = _mm256_sub_epi32(n_gt_hi, gt_hi);
    const int lanes = _mm256_movemask_ps(_mm256_castsi256_ps(in_mid));
    const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPackTable.lanes[lanes]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + size), _mm256_permutevar8x32_epi32(key, perm));
    const int found = _mm_popcnt_u32(static_cast<unsigned>(lanes));
    size += found;
    mid += found;
  }
  const int64_t active = kMasked ? lane_sum(n_active) : i;
  st.size = size;
  st.lt_lo += lane_sum(n_lt_lo);
  st.le_lo += active - lane_sum(n_gt_lo);
  st.le_hi += active - lane_sum(n_gt_hi);
  st.mid += mid;
  st.active += active;
  if (i < n) bracket_chunk<float, kMasked>(bits + i, kMasked ? mask + i : nullptr, n - i, lo, hi, st);
}

// keep_above_chunk<float>, 32 entries per step.
template <bool kMasked, bool kCountTies>
__attribute__((target("avx2"))) int64_t keep_above_f32_avx2(const aliased_int32* bits,
                                                            const uint8_t* mask, uint8_t* out,
                                                            int64_t n, int32_t threshold) {
  const __m256i vthreshold = _mm256_set1_epi32(threshold);
  // packs interleave 128-bit halves; this puts the 4-byte groups back in order.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m256i ones = _mm256_set1_epi8(1);
  __m256i n_ties = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i gt[4];
    for (int j = 0; j < 4; ++j) {
      const __m256i key =
          f32_keys(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits + i + 8 * j)));
      gt[j] = _mm256_cmpgt_epi32(key, vthreshold);
      if (kCountTies) {
        __m256i tie = _mm256_cmpeq_epi32(key, vthreshold);
        if (kMasked) tie = _mm256_and_si256(tie, active_lanes(mask + i + 8 * j));
        n_ties = _mm256_sub_epi32(n_ties, tie);
      }
    }
    const __m256i bytes =
        _mm256_packs_epi16(_mm256_packs_epi32(gt[0], gt[1]), _mm256_packs_epi32(gt[2], gt[3]));
    __m256i keep = _mm256_and_si256(_mm256_permutevar8x32_epi32(bytes, order), ones);
    if (kMasked) keep = _mm256_and_si256(keep, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(mask + i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), keep);
  }
  int64_t ties = kCountTies ? lane_sum(n_ties) : 0;
  if (i < n)
    ties += keep_above_chunk<float, kMasked, kCountTies>(bits + i, kMasked ? mask + i : nullptr,
                                                         out + i, n - i, threshold);
  return ties;
}

// The portable kernels compiled for AVX2 (the compiler vectorises them twice
// as wide as with the baseline SSE2): float64, float16, bfloat16.
template <typename scalar_t, bool kMasked>
__attribute__((target("avx2"))) void bracket_chunk_avx2(const RawOf<scalar_t>* bits, const uint8_t* mask,
                                                        int64_t n, KeyOf<scalar_t> lo, KeyOf<scalar_t> hi,
                                                        BracketState<KeyOf<scalar_t>>& st) {
  bracket_chunk<scalar_t, kMasked>(bits, mask, n, lo, hi, st);
}

template <typename scalar_t, bool kMasked, bool kCountTies>
__attribute__((target("avx2"))) int64_t keep_above_chunk_avx2(const RawOf<scalar_t>* bits,
                                                              const uint8_t* mask, uint8_t* out, int64_t n,
                                                              KeyOf<scalar_t> threshold) {
  return keep_above_chunk<scalar_t, kMasked, kCountTies>(bits, mask, out, n, threshold);
}
#endif  // LTH_SPARSE_X86_AVX2

// The fastest bracket / write kernel that this CPU runs.
template <typename scalar_t, bool kMasked>
void bracket_chunk_best(const RawOf<scalar_t>* bits, const uint8_t* mask, int64_t n, KeyOf<scalar_t> lo,
                        KeyOf<scalar_t> hi, BracketState<KeyOf<scalar_t>>& st) {
#if LTH_SPARSE_X86_AVX2
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (cpu_has_avx2()) return bracket_chunk_f32_avx2<kMasked>(bits, mask, n, lo, hi, st);
  } else {
    if (cpu_has_avx2()) return bracket_chunk_avx2<scalar_t, kMasked>(bits, mask, n, lo, hi, st);
  }
#endif
  bracket_chunk<scalar_t, kMasked>(bits, mask, n, lo, hi, st);
}

template <typename scalar_t, bool kMasked, bool kCountTies>
int64_t keep_above_chunk_best(const RawOf<scalar_t>* bits, const uint8_t* mask, uint8_t* out, int64_t n,
                              KeyOf<scalar_t> threshold) {
#if LTH_SPARSE_X86_AVX2
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (cpu_has_avx2()) return keep_above_f32_avx2<kMasked, kCountTies>(bits, mask, out, n, threshold);
  } else {
    if (cpu_has_avx2()) return keep_above_chunk_avx2<scalar_t, kMasked, kCountTies>(bits, mask, out, n, threshold);
  }
#endif
  return keep_above_chunk<scalar_t, kMasked, kCountTies>(bits, mask, out, n, threshold);
}

// ---------------------------------------------------------------------------
// Select.

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The keys at S stratified positions (one drawn in each of S equal strata of
// the global index) that are active. Random reads: prefetched ahead.
template <typename scalar_t, bool kMasked>
std::vector<KeyOf<scalar_t>> sample_keys(const Layout& layout, int64_t S) {
  using Key = KeyOf<scalar_t>;
  constexpr int64_t kBlocks = 64, kAhead = 16;
  const int64_t n = layout.total;
  const int threads = 1;  // about a millisecond of prefetched reads: not worth a parallel region
  std::vector<std::vector<Key>> drawn(threads);
  parallel_over(kBlocks, threads, [&](int t, int64_t blk) {
    const int64_t first = blk * S / kBlocks, count = (blk + 1) * S / kBlocks - first;
    std::vector<const void*> where(count);  // the address of each sampled key
    std::vector<const uint8_t*> active_at(kMasked ? count : 0);
    int64_t seg = -1;
    for (int64_t j = 0; j < count; ++j) {
      const int64_t i = first + j;
      const double u = static_cast<double>(splitmix64(static_cast<uint64_t>(i)) >> 11) * 0x1.0p-53;
      const int64_t pos = std::min(n - 1, static_cast<int64_t>((static_cast<double>(i) + u) *
                                                               static_cast<double>(n) / S));
      if (seg < 0) seg = layout.segment_at(pos);
      while (pos >= layout.segments[seg].offset + layout.segments[seg].numel) ++seg;
      const Segment& s = layout.segments[seg];
      where[j] = static_cast<const RawOf<scalar_t>*>(s.scores) + (pos - s.offset);
      if (kMasked) active_at[j] = s.mask + (pos - s.offset);
    }
    for (int64_t j = 0; j < count; ++j) {
      if (j + kAhead < count) {
        __builtin_prefetch(where[j + kAhead]);
        if (kMasked) __builtin_prefetch(active_at[j + kAhead]);
      }
      if (!kMasked || *active_at[j])
        drawn[t].push_back(to_key<scalar_t>(*static_cast<const RawOf<scalar_t>*>(where[j])));
    }
  });
  std::vector<Key> sample;
  for (const auto& d : drawn) sample.insert(sample.end(), d.begin(), d.end());
  return sample;
}

// Small inputs: gathers every active key and selects directly.
template <typename scalar_t>
Selection<KeyOf<scalar_t>> exact_select(const Layout& layout, int64_t k, const char* op) {
  using Key = KeyOf<scalar_t>;
  std::vector<Key> keys;
  keys.reserve(layout.total);
  for (const Segment& s : layout.segments) {
    const RawOf<scalar_t>* bits = static_cast<const RawOf<scalar_t>*>(s.scores);
    for (int64_t i = 0; i < s.numel; ++i)
      if (!s.mask || s.mask[i]) keys.push_back(to_key<scalar_t>(bits[i]));
  }
  TORCH_CHECK(k <= static_cast<int64_t>(keys.size()), op, ": k=", k,
              " is above the number of active (unpruned) entries, ", keys.size());
  std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end());
  const Key key = keys[k - 1];
  int64_t less = 0, equal = 0;
  for (const Key x : keys) {
    less += x < key;
    equal += x == key;
  }
  return {key, less, equal};
}

// The k-th smallest active key (1-based) with its counts; checks k against the
// number of active entries (which a masked layout only knows after a pass).
template <typename scalar_t, bool kMasked>
Selection<KeyOf<scalar_t>> select_kth(const Layout& layout, int64_t k, const char* op) {
  using Key = KeyOf<scalar_t>;
  constexpr Key kMin = std::numeric_limits<Key>::min();  // below every real key (-inf is -kInf)
  constexpr Key kMax = std::numeric_limits<Key>::max();  // the NaN key
  const int64_t n = layout.total;
  if (n <= kExactBelow) return exact_select<scalar_t>(layout, k, op);

  // 1. Pivots. About r = k * S / n sampled active keys lie below the k-th
  // active key, give or take sqrt(r) (stratified sampling does no worse than
  // binomial); lo and hi sit kBracketSigmas of that below and above.
  const int64_t S = kSampleSize;
  std::vector<Key> sample = sample_keys<scalar_t, kMasked>(layout, S);
  const int64_t m = static_cast<int64_t>(sample.size());
  const double r = static_cast<double>(k) * static_cast<double>(S) / static_cast<double>(n);
  const double spread = std::sqrt(std::max(0.0, std::min(r, static_cast<double>(m) - r)) + 1.0);
  const double margin = kBracketSigmas * spread + 2.0;
  int64_t i_lo = static_cast<int64_t>(std::floor(r - margin));
  int64_t i_hi = static_cast<int64_t>(std::ceil(r + margin));
  Key lo = kMin, hi = kMax;  // an unset pivot bounds nothing
  if (m > 0) {
    i_lo = std::min(i_lo, m - 1);
    i_hi = std::max<int64_t>(i_hi, 0);
    if (i_lo >= 0) {
      std::nth_element(sample.begin(), sample.begin() + i_lo, sample.end());
      lo = sample[i_lo];
    }
    if (i_hi < m) {
      std::nth_element(sample.begin() + std::max<int64_t>(i_lo, 0), sample.begin() + i_hi, sample.end());
      hi = sample[i_hi];
    }
  }
  // Room for twice the expected number of candidates.
  const int64_t sampled_between = std::max<int64_t>(std::min(i_hi, m) - std::max<int64_t>(i_lo, 0), 1);
  const int64_t capacity = std::min(n, 2 * sampled_between * ((n + S - 1) / S) + 4 * kChunk);

  // 2. One pass: counts against (lo, hi), candidates in between.
  const int threads = threads_for(static_cast<int64_t>(layout.chunks.size()));
  std::vector<BracketState<Key>> states(threads);
  for (auto& st : states) st.reserve(capacity);
  parallel_over(static_cast<int64_t>(layout.chunks.size()), threads, [&](int t, int64_t c) {
    const Chunk& ch = layout.chunks[c];
    const Segment& s = layout.segments[ch.segment];
    bracket_chunk_best<scalar_t, kMasked>(static_cast<const RawOf<scalar_t>*>(s.scores) + ch.begin,
                                          kMasked ? s.mask + ch.begin : nullptr, ch.end - ch.begin,
                                          lo, hi, states[t]);
  });
  int64_t A = 0, B = 0, C = 0, D = 0, active = 0;  // #<lo, #<=lo, #<hi, #<=hi
  bool overflow = false;
  for (const auto& st : states) {
    A += st.lt_lo;
    B += st.le_lo;
    C += st.mid;
    D += st.le_hi;
    active += st.active;
    overflow |= st.overflow;
  }
  C += B;
  TORCH_CHECK(k <= active, op, ": k=", k, " is above the number of active (unpruned) entries, ",
              active);

  // 3. Place the k-th key: below lo | lo | (lo, hi) | hi | above hi.
  const DataKeys<scalar_t, kMasked> data{layout};
  if (k <= A) return range_select<Key>(data, kMin, static_cast<Key>(lo - 1), k, A, 0);
  if (k <= B) return {lo, A, B - A};
  if (k <= C) {
    const Key a = static_cast<Key>(lo + 1), b = static_cast<Key>(hi - 1);
    if (overflow) return range_select<Key>(data, a, b, k - B, C - B, B);
    BufferedKeys<Key> candidates;
    for (const auto& st : states) candidates.add(st.candidates.get(), st.size);
    return range_select<Key>(candidates, a, b, k - B, C - B, B);
  }
  if (k <= D) return {hi, C, D - C};
  return range_select<Key>(data, static_cast<Key>(hi + 1), kMax, k - D, active - D, D);
}

// ---------------------------------------------------------------------------
// prune_lowest

template <typename scalar_t, bool kMasked>
void prune_impl(const Layout& layout, int64_t k) {
  const auto sel = select_kth<scalar_t, kMasked>(layout, k, "prune_lowest");
  const int64_t need = k - sel.less;  // ties to prune, the first in position order: 1..sel.equal
  const int64_t n_chunks = static_cast<int64_t>(layout.chunks.size());
  const int threads = threads_for(n_chunks);
  auto chunk_args = [&](int64_t c) {
    const Chunk& ch = layout.chunks[c];
    const Segment& s = layout.segments[ch.segment];
    return std::make_tuple(static_cast<const RawOf<scalar_t>*>(s.scores) + ch.begin,
                           kMasked ? s.mask + ch.begin : nullptr, s.out + ch.begin, ch.end - ch.begin);
  };
  if (need == sel.equal) {  // every tie goes: prune key <= T
    parallel_over(n_chunks, threads, [&](int, int64_t c) {
      const auto [bits, mask, out, n] = chunk_args(c);
      keep_above_chunk_best<scalar_t, kMasked, false>(bits, mask, out, n, sel.key);
    });
    return;
  }
  // Some ties stay. Prune key <= T, counting the ties of each chunk on the way;
  // then an exclusive scan over the chunks (in position order) gives each its
  // first tie's rank, and only the chunks holding ties of rank >= need are
  // rewritten.
  std::vector<int64_t> first_tie(n_chunks + 1, 0);
  parallel_over(n_chunks, threads, [&](int, int64_t c) {
    const auto [bits, mask, out, n] = chunk_args(c);
    first_tie[c + 1] = keep_above_chunk_best<scalar_t, kMasked, true>(bits, mask, out, n, sel.key);
  });
  for (int64_t c = 0; c < n_chunks; ++c) first_tie[c + 1] += first_tie[c];
  std::vector<int64_t> late;
  for (int64_t c = 0; c < n_chunks; ++c)
    if (first_tie[c + 1] > need && first_tie[c + 1] > first_tie[c]) late.push_back(c);
  parallel_over(static_cast<int64_t>(late.size()), threads_for(static_cast<int64_t>(late.size())),
                [&](int, int64_t j) {
                  const int64_t c = late[j];
                  const auto [bits, mask, out, n] = chunk_args(c);
                  keep_late_ties_chunk<scalar_t, kMasked>(bits, mask, out, n, sel.key, first_tie[c], need);
                });
}

// ---------------------------------------------------------------------------
// Results.

template <typename scalar_t>
at::Tensor scalar_tensor_of_key(KeyOf<scalar_t> key, const at::TensorOptions& options) {
  at::Tensor out = at::empty({}, options);
  *static_cast<RawOf<scalar_t>*>(out.data_ptr()) = from_key<scalar_t>(key);
  return out;
}

constexpr const char* kExpected = "a CPU tensor for the C++ CPU kernel";

}  // namespace

at::Tensor kth_smallest(const std::vector<at::Tensor>& tensors, int64_t k) {
  select_host::check_scores(tensors, "kth_smallest", "tensors", at::kCPU, kExpected);
  const Layout layout(tensors, nullptr);
  select_host::check_kth(k, layout.total, "kth_smallest");
  at::Tensor out;
  select_host::dispatch_float(tensors[0].scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto sel = select_kth<scalar_t, false>(layout, k, "kth_smallest");
    out = scalar_tensor_of_key<scalar_t>(sel.key, tensors[0].options());
  });
  return out;
}

at::Tensor kth_smallest_radix(const std::vector<at::Tensor>& tensors, int64_t k) {
  select_host::check_scores(tensors, "kth_smallest_radix", "tensors", at::kCPU, kExpected);
  const Layout layout(tensors, nullptr);
  select_host::check_kth(k, layout.total, "kth_smallest_radix");
  at::Tensor out;
  select_host::dispatch_float(tensors[0].scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    using Key = KeyOf<scalar_t>;
    const auto sel = range_select<Key>(DataKeys<scalar_t, false>{layout}, std::numeric_limits<Key>::min(),
                                       std::numeric_limits<Key>::max(), k, layout.total, 0);
    out = scalar_tensor_of_key<scalar_t>(sel.key, tensors[0].options());
  });
  return out;
}

std::vector<at::Tensor> prune_lowest(const std::vector<at::Tensor>& scores,
                                     const std::optional<std::vector<at::Tensor>>& masks,
                                     int64_t k) {
  select_host::check_scores(scores, "prune_lowest", "scores", at::kCPU, kExpected);
  if (masks.has_value()) select_host::check_masks(scores, *masks);
  Layout layout(scores, masks.has_value() ? &*masks : nullptr);
  select_host::check_prune_count(k, layout.total);
  std::vector<at::Tensor> out = select_host::new_masks(scores, masks, k, layout);
  if (k == 0) return out;  // nothing to prune: the masks as they are
  select_host::dispatch_float(scores[0].scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    if (layout.masked) {
      prune_impl<scalar_t, true>(layout, k);
    } else {
      prune_impl<scalar_t, false>(layout, k);
    }
  });
  return out;
}

KernelInfo kernel_info() {
#ifdef LTH_SPARSE_OPENMP
  const bool openmp = true;
#else
  const bool openmp = false;
#endif
#if LTH_SPARSE_X86_AVX2
  const bool avx2 = cpu_has_avx2();
#else
  const bool avx2 = false;
#endif
  return {openmp, max_threads(), avx2, kSampleSize, kChunk, kRadixBits};
}

}  // namespace cpu
}  // namespace lth_sparse
