// Masked-weight products on the CPU (see masked.h).
//
// Dense path: apply_mask / zero_pruned_ work on the raw bits, `bits & -mask`,
// which the compiler vectorises; torch's where/masked_fill on bool masks are
// several times slower on the CPU than this (and than the GEMM they feed).
//
// Sparse path: a layer at 90-99% sparsity does 1-10% of a dense layer's
// multiply-adds, but only if every inner loop stays contiguous. The products
// are computed in a transposed layout where the batch (or batch x positions)
// is the contiguous dimension, so that:
//   forward      out[o, :] = bias[o] + sum_{j in row o}  W[o, j] x[j, :]   (axpy per unpruned weight)
//   input grad   out[j, :] =           sum_{o in col j}  W[o, j] g[o, :]   (the same, over the CSC)
//   weight grad  dW[o, j]  = <g[o, :], x[j, :]> for unpruned (o, j) only   (one dot per unpruned weight)
// Columns are processed in tiles of kTile so that a tile's accumulators stay
// in registers and the tile of x that a thread's rows share stays in cache.
// The index structure (CSR and CSC of the mask) is built once per mask; the
// products read the weight values straight from the dense weight at the
// structure's positions (no gathered copy), so the structure stays valid while
// training changes the values.
#include "cpu/masked.h"

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

namespace lth_sparse {
namespace cpu {
namespace {

constexpr int64_t kTile = 64;              // columns per tile: 64 floats are 8 AVX registers
constexpr int64_t kMinParallelWork = 1 << 17;  // multiply-adds below which one thread does it all
constexpr int64_t kElementwiseGrain = 1 << 16;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LTH_SPARSE_MASKED_AVX2 1
#include <immintrin.h>
bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#else
#define LTH_SPARSE_MASKED_AVX2 0
#endif

template <int kBytes>
struct Bits;
template <>
struct Bits<2> { using type = uint16_t; };
template <>
struct Bits<4> { using type = uint32_t; };
template <>
struct Bits<8> { using type = uint64_t; };

template <typename U>
__attribute__((always_inline)) inline void select_bits(const U* src, const uint8_t* mask, U* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] & static_cast<U>(-static_cast<U>(mask[i] != 0));
}

template <typename U>
void select_bits_portable(const U* src, const uint8_t* mask, U* dst, int64_t n) {
  select_bits(src, mask, dst, n);
}

#if LTH_SPARSE_MASKED_AVX2
template <typename U>
__attribute__((target("avx2"))) void select_bits_avx2(const U* src, const uint8_t* mask, U* dst, int64_t n) {
  select_bits(src, mask, dst, n);
}
#endif

template <typename U>
void select_bits_best(const U* src, const uint8_t* mask, U* dst, int64_t n) {
#if LTH_SPARSE_MASKED_AVX2
  if (cpu_has_avx2_fma()) return select_bits_avx2(src, mask, dst, n);
#endif
  select_bits_portable(src, mask, dst, n);
}

// The OR of src's bits wherever mask is False: zero iff every pruned entry is +0.0.
template <typename U>
__attribute__((always_inline)) inline U pruned_bits(const U* src, const uint8_t* mask, int64_t n) {
  U acc = 0;
#pragma omp simd reduction(| : acc)
  for (int64_t i = 0; i < n; ++i) acc |= src[i] & static_cast<U>(static_cast<U>(mask[i] != 0) - U(1));
  return acc;
}

template <typename U>
U pruned_bits_portable(const U* src, const uint8_t* mask, int64_t n) {
  return pruned_bits(src, mask, n);
}

#if LTH_SPARSE_MASKED_AVX2
template <typename U>
__attribute__((target("avx2"))) U pruned_bits_avx2(const U* src, const uint8_t* mask, int64_t n) {
  return pruned_bits(src, mask, n);
}
#endif

template <typename U>
U pruned_bits_best(const U* src, const uint8_t* mask, int64_t n) {
#if LTH_SPARSE_MASKED_AVX2
  if (cpu_has_avx2_fma()) return pruned_bits_avx2(src, mask, n);
#endif
  return pruned_bits_portable(src, mask, n);
}

void check_mask_of(const at::Tensor& t, const at::Tensor& mask, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && mask.device().is_cpu(), what, ": tensors must be on the CPU");
  TORCH_CHECK(mask.scalar_type() == at::kBool, what, ": mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK(t.sizes() == mask.sizes(), what, ": mask shape ", mask.sizes(), " != ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), what, ": expected a floating tensor, got ", t.scalar_type());
  TORCH_CHECK(t.element_size() == 2 || t.element_size() == 4 || t.element_size() == 8, what,
              ": unsupported dtype ", t.scalar_type());
}

// dst = src where mask else +0.0, over contiguous buffers of `bytes`-sized elements.
void masked_select_bits(const void* src, const bool* mask, void* dst, int64_t n, int64_t bytes) {
  const auto* m = reinterpret_cast<const uint8_t*>(mask);
  at::parallel_for(0, n, kElementwiseGrain, [&](int64_t begin, int64_t end) {
    const int64_t len = end - begin;
    switch (bytes) {
      case 2:
        select_bits_best(static_cast<const uint16_t*>(src) + begin, m + begin, static_cast<uint16_t*>(dst) + begin, len);
        break;
      case 4:
        select_bits_best(static_cast<const uint32_t*>(src) + begin, m + begin, static_cast<uint32_t*>(dst) + begin, len);
        break;
      default:
        select_bits_best(static_cast<const uint64_t*>(src) + begin, m + begin, static_cast<uint64_t*>(dst) + begin, len);
    }
  });
}

// ---------------------------------------------------------------------------
// Transposed copies: the sparse products need the batch contiguous, and
// x.t().contiguous() is a strided copy torch does one element at a time
// (35 us for a 60 x 784 float32 input; this takes a few).

template <typename T>
void transpose_block(const T* src, int64_t s_r, int64_t s_c, T* dst, int64_t ld, int64_t r0, int64_t r1, int64_t c0,
                     int64_t c1) {
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t r = r0; r < r1; ++r) dst[c * ld + r] = src[r * s_r + c * s_c];
}

#if LTH_SPARSE_MASKED_AVX2
// dst[c * ld_dst + r] = src[r * ld_src + c] for an 8 x 8 block, in registers.
__attribute__((target("avx2"))) inline void transpose8x8_f32(const float* src, int64_t ld_src, float* dst,
                                                             int64_t ld_dst) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld_src);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int h = 0; h < 8; h += 4) {
    r[h] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ld_dst, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// Columns [c0, c1) of a row-major (rows, ld_src) float32 matrix, transposed.
__attribute__((target("avx2"))) void transpose_columns_f32(const float* src, int64_t rows, int64_t ld_src, float* dst,
                                                           int64_t c0, int64_t c1) {
  const int64_t r8 = rows - rows % 8;
  int64_t c = c0;
  for (; c + 8 <= c1; c += 8) {
    for (int64_t r = 0; r < r8; r += 8) transpose8x8_f32(src + r * ld_src + c, ld_src, dst + c * rows + r, rows);
    transpose_block(src, ld_src, int64_t{1}, dst, rows, r8, rows, c, c + 8);
  }
  transpose_block(src, ld_src, int64_t{1}, dst, rows, int64_t{0}, rows, c, c1);
}
#endif

// ---------------------------------------------------------------------------
// Sparse products. A "column space" operand is a 3-D view (rows, N, P) whose
// last dimension is contiguous; tiles never cross from one n to the next.

struct View {
  char* data;
  int64_t s_row, s_n, s_p;  // strides in elements
};

template <typename T>
struct Spmm {
  const T* w;          // the dense weight: entry (r, j) of the sparse matrix is w[r * w_r + j * w_j]
  int64_t w_r, w_j;    // (ld, 1) for W itself (CSR), (1, ld) for its transpose (CSC)
  const int32_t* ptr;
  const int32_t* idx;
  const T* x;
  int64_t x_row, x_n;  // strides of x (its p stride is 1)
  T* out;
  int64_t o_row, o_n, o_p;
  const T* bias;
  int64_t N, P;
};

template <typename T, int64_t kWidth>
__attribute__((always_inline)) inline void spmm_tile(const Spmm<T>& a, int64_t r, int64_t n, int64_t p0,
                                                     int64_t width) {
  T acc[kWidth > 0 ? kWidth : kTile];
  const int64_t len = kWidth > 0 ? kWidth : width;
  const T init = a.bias != nullptr ? a.bias[r] : T(0);
  for (int64_t i = 0; i < len; ++i) acc[i] = init;
  const T* xbase = a.x + n * a.x_n + p0;
  const T* wr = a.w + r * a.w_r;
  for (int32_t e = a.ptr[r]; e < a.ptr[r + 1]; ++e) {
    const int64_t j = a.idx[e];
    const T v = wr[j * a.w_j];
    const T* xr = xbase + j * a.x_row;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) acc[i] += v * xr[i];
  }
  T* o = a.out + r * a.o_row + n * a.o_n + p0 * a.o_p;
  if (a.o_p == 1) {
    for (int64_t i = 0; i < len; ++i) o[i] = acc[i];
  } else {
    for (int64_t i = 0; i < len; ++i) o[i * a.o_p] = acc[i];
  }
}

template <typename T>
__attribute__((always_inline)) inline void spmm_rows(const Spmm<T>& a, int64_t r0, int64_t r1) {
  // Tile-major: the rows of this thread share each tile of x while it is in cache.
  for (int64_t n = 0; n < a.N; ++n) {
    for (int64_t p0 = 0; p0 < a.P; p0 += kTile) {
      const int64_t width = std::min(kTile, a.P - p0);
      for (int64_t r = r0; r < r1; ++r) {
        if (width == kTile)
          spmm_tile<T, kTile>(a, r, n, p0, width);
        else
          spmm_tile<T, 0>(a, r, n, p0, width);
      }
    }
  }
}

template <typename T>
void spmm_rows_portable(const Spmm<T>& a, int64_t r0, int64_t r1) {
  spmm_rows(a, r0, r1);
}

#if LTH_SPARSE_MASKED_AVX2
template <typename T>
__attribute__((target("avx2,fma"))) void spmm_rows_avx2(const Spmm<T>& a, int64_t r0, int64_t r1) {
  spmm_rows(a, r0, r1);
}
#endif


#if LTH_SPARSE_MASKED_AVX2
// float32 with AVX2: a tile of up to 64 columns is NV vectors of 8 accumulators
// held in registers for the whole row (the last one partial when the width is
// not a multiple of 8; its lanes past the width are loaded as zero and never stored).
template <int NV, bool kPartial>
__attribute__((target("avx2,fma"))) void spmm_tile_f32(const Spmm<float>& a, int64_t r, int64_t n, int64_t p0,
                                                      __m256i tail, float* dst) {
  __m256 acc[NV];
  const __m256 init = _mm256_set1_ps(a.bias != nullptr ? a.bias[r] : 0.0f);
  for (int k = 0; k < NV; ++k) acc[k] = init;
  const float* xbase = a.x + n * a.x_n + p0;
  const int32_t* idx = a.idx;
  const int64_t x_row = a.x_row;
  const float* wr = a.w + r * a.w_r;
  const int64_t w_j = a.w_j;
  const int32_t end = a.ptr[r + 1];
  for (int32_t e = a.ptr[r]; e < end; ++e) {
    const int64_t j = idx[e];
    const __m256 v = _mm256_set1_ps(wr[j * w_j]);
    const float* xr = xbase + j * x_row;
    for (int k = 0; k < NV; ++k) {
      const __m256 xv = (kPartial && k == NV - 1) ? _mm256_maskload_ps(xr + 8 * k, tail) : _mm256_loadu_ps(xr + 8 * k);
      acc[k] = _mm256_fmadd_ps(v, xv, acc[k]);
    }
  }
  for (int k = 0; k < NV; ++k) {
    if (kPartial && k == NV - 1)
      _mm256_maskstore_ps(dst + 8 * k, tail, acc[k]);
    else
      _mm256_storeu_ps(dst + 8 * k, acc[k]);
  }
}

using SpmmTileF32 = void (*)(const Spmm<float>&, int64_t, int64_t, int64_t, __m256i, float*);

template <int... NV>
constexpr std::array<SpmmTileF32, 2 * sizeof...(NV)> spmm_tile_table(std::integer_sequence<int, NV...>) {
  return {spmm_tile_f32<NV + 1, false>..., spmm_tile_f32<NV + 1, true>...};
}

__attribute__((target("avx2,fma"))) void spmm_rows_f32_avx2(const Spmm<float>& a, int64_t r0, int64_t r1) {
  static constexpr auto table = spmm_tile_table(std::make_integer_sequence<int, kTile / 8>{});
  for (int64_t n = 0; n < a.N; ++n) {
    for (int64_t p0 = 0; p0 < a.P; p0 += kTile) {
      const int64_t width = std::min(kTile, a.P - p0);
      const int64_t nv = (width + 7) / 8;
      const int rest = static_cast<int>(width % 8);
      const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(rest), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      const SpmmTileF32 tile = table[(rest != 0) * (kTile / 8) + nv - 1];
      if (a.o_p == 1) {
        for (int64_t r = r0; r < r1; ++r) tile(a, r, n, p0, tail, a.out + r * a.o_row + n * a.o_n + p0);
        continue;
      }
      // A transposed output (a linear layer's (batch, out)): 8 rows into a
      // buffer, stored as runs of 8 neighbours instead of one scattered float each.
      alignas(32) float buf[8][kTile];
      for (int64_t rb = r0; rb < r1; rb += 8) {
        const int64_t rows = std::min<int64_t>(8, r1 - rb);
        for (int64_t i = 0; i < rows; ++i) tile(a, rb + i, n, p0, tail, buf[i]);
        float* o = a.out + rb * a.o_row + n * a.o_n + p0 * a.o_p;
        for (int64_t c = 0; c < width; ++c)
          for (int64_t i = 0; i < rows; ++i) o[c * a.o_p + i * a.o_row] = buf[i][c];
      }
    }
  }
}


__attribute__((target("avx2,fma"))) inline float hsum_f32(__m256 s) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

// Four dot products of one row g with four rows x[0..3], sharing each load of g.
__attribute__((target("avx2,fma"))) inline void dot4_f32(const float* g, const float* const* x, int64_t len,
                                                        float* out) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    s0 = _mm256_fmadd_ps(gv, _mm256_loadu_ps(x[0] + i), s0);
    s1 = _mm256_fmadd_ps(gv, _mm256_loadu_ps(x[1] + i), s1);
    s2 = _mm256_fmadd_ps(gv, _mm256_loadu_ps(x[2] + i), s2);
    s3 = _mm256_fmadd_ps(gv, _mm256_loadu_ps(x[3] + i), s3);
  }
  if (i < len) {
    const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(len - i)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 gv = _mm256_maskload_ps(g + i, tail);
    s0 = _mm256_fmadd_ps(gv, _mm256_maskload_ps(x[0] + i, tail), s0);
    s1 = _mm256_fmadd_ps(gv, _mm256_maskload_ps(x[1] + i, tail), s1);
    s2 = _mm256_fmadd_ps(gv, _mm256_maskload_ps(x[2] + i, tail), s2);
    s3 = _mm256_fmadd_ps(gv, _mm256_maskload_ps(x[3] + i, tail), s3);
  }
  out[0] = hsum_f32(s0);
  out[1] = hsum_f32(s1);
  out[2] = hsum_f32(s2);
  out[3] = hsum_f32(s3);
}

// sddmm rows for float32: the unpruned entries of a row four at a time.
__attribute__((target("avx2,fma"))) void sddmm_rows_f32_avx2(const struct Sddmm& a, int64_t r0, int64_t r1);
#endif  // LTH_SPARSE_MASKED_AVX2

struct Sddmm {
  const int32_t* ptr;
  const int32_t* idx;
  const void* g;
  int64_t g_row, g_n;
  const void* x;
  int64_t x_row, x_n;
  void* out;
  int64_t ld_out;
  int64_t N, P;
};

template <typename T>
__attribute__((always_inline)) inline T dot_portable(const T* a, const T* b, int64_t len) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < len; ++i) s += a[i] * b[i];
  return s;
}

template <typename T, typename Dot>
__attribute__((always_inline)) inline void sddmm_rows(const Sddmm& a, int64_t r0, int64_t r1, Dot dot) {
  const T* g = static_cast<const T*>(a.g);
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  for (int64_t r = r0; r < r1; ++r) std::fill(out + r * a.ld_out, out + (r + 1) * a.ld_out, T(0));
  constexpr int64_t kChunk = 1024;  // positions per pass: a row of g and the x rows it meets stay cached
  for (int64_t n = 0; n < a.N; ++n) {
    for (int64_t p0 = 0; p0 < a.P; p0 += kChunk) {
      const int64_t len = std::min(kChunk, a.P - p0);
      for (int64_t r = r0; r < r1; ++r) {
        const T* gr = g + r * a.g_row + n * a.g_n + p0;
        T* o = out + r * a.ld_out;
        for (int32_t e = a.ptr[r]; e < a.ptr[r + 1]; ++e) {
          const int64_t j = a.idx[e];
          const T* xr = x + j * a.x_row + n * a.x_n + p0;
          o[j] += dot(gr, xr, len);
        }
      }
    }
  }
}

template <typename T>
void sddmm_rows_portable(const Sddmm& a, int64_t r0, int64_t r1) {
  sddmm_rows<T>(a, r0, r1, dot_portable<T>);
}

#if LTH_SPARSE_MASKED_AVX2
__attribute__((target("avx2,fma"))) void sddmm_rows_f32_avx2(const Sddmm& a, int64_t r0, int64_t r1) {
  const float* g = static_cast<const float*>(a.g);
  const float* x = static_cast<const float*>(a.x);
  float* out = static_cast<float*>(a.out);
  for (int64_t r = r0; r < r1; ++r) std::fill(out + r * a.ld_out, out + (r + 1) * a.ld_out, 0.0f);
  constexpr int64_t kChunk = 1024;
  for (int64_t n = 0; n < a.N; ++n) {
    for (int64_t p0 = 0; p0 < a.P; p0 += kChunk) {
      const int64_t len = std::min(kChunk, a.P - p0);
      for (int64_t r = r0; r < r1; ++r) {
        const float* gr = g + r * a.g_row + n * a.g_n + p0;
        float* o = out + r * a.ld_out;
        const float* xbase = x + n * a.x_n + p0;
        int32_t e = a.ptr[r];
        const int32_t end = a.ptr[r + 1];
        for (; e + 4 <= end; e += 4) {
          const float* rows[4] = {xbase + a.idx[e] * a.x_row, xbase + a.idx[e + 1] * a.x_row,
                                  xbase + a.idx[e + 2] * a.x_row, xbase + a.idx[e + 3] * a.x_row};
          float d[4];
          dot4_f32(gr, rows, len, d);
          for (int k = 0; k < 4; ++k) o[a.idx[e + k]] += d[k];
        }
        for (; e < end; ++e) {
          const float* rows[4] = {xbase + a.idx[e] * a.x_row, gr, gr, gr};
          float d[4];
          dot4_f32(gr, rows, len, d);
          o[a.idx[e]] += d[0];
        }
      }
    }
  }
}
#endif

#if LTH_SPARSE_MASKED_AVX2
template <typename T>
__attribute__((target("avx2,fma"))) void sddmm_rows_avx2(const Sddmm& a, int64_t r0, int64_t r1) {
  sddmm_rows<T>(a, r0, r1, dot_portable<T>);
}
#endif

// The fastest kernels that this CPU runs.
template <typename T>
void spmm_rows_best(const Spmm<T>& a, int64_t r0, int64_t r1) {
#if LTH_SPARSE_MASKED_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_has_avx2_fma()) return spmm_rows_f32_avx2(a, r0, r1);
  }
  if (cpu_has_avx2_fma()) return spmm_rows_avx2(a, r0, r1);
#endif
  spmm_rows_portable(a, r0, r1);
}

template <typename T>
void sddmm_rows_best(const Sddmm& a, int64_t r0, int64_t r1) {
#if LTH_SPARSE_MASKED_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_has_avx2_fma()) return sddmm_rows_f32_avx2(a, r0, r1);
  }
  if (cpu_has_avx2_fma()) return sddmm_rows_avx2<T>(a, r0, r1);
#endif
  sddmm_rows_portable<T>(a, r0, r1);
}

// Rows per parallel task so that a task has at least kMinParallelWork multiply-adds.
int64_t row_grain(int64_t rows, int64_t nnz, int64_t columns) {
  const int64_t per_row = std::max<int64_t>(1, nnz / std::max<int64_t>(1, rows) * columns);
  return std::max<int64_t>(1, kMinParallelWork / per_row);
}

// Whether every index is in [0, bound): one branch-free pass (vectorised), one check after.
bool indices_in_range(const int32_t* idx, int64_t n, int64_t bound) {
  uint32_t worst = 0;  // negative indices become huge as unsigned
#pragma omp simd reduction(max : worst)
  for (int64_t e = 0; e < n; ++e) worst = std::max(worst, static_cast<uint32_t>(idx[e]));
  return n == 0 || static_cast<int64_t>(worst) < bound;
}

bool non_decreasing(const int32_t* p, int64_t n) {
  int32_t bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t r = 0; r < n; ++r) bad |= p[r] > p[r + 1];
  return bad == 0;
}

void check_structure(const at::Tensor& ptr, const at::Tensor& idx, int64_t rows, const char* what) {
  TORCH_CHECK(ptr.scalar_type() == at::kInt && idx.scalar_type() == at::kInt, what,
              ": the structure must be int32 (from mask_structure)");
  TORCH_CHECK(ptr.is_contiguous() && idx.is_contiguous() && ptr.dim() == 1 && idx.dim() == 1, what,
              ": the structure must be contiguous 1-D tensors");
  TORCH_CHECK(ptr.numel() == rows + 1, what, ": ptr has ", ptr.numel(), " entries for ", rows, " rows");
  TORCH_CHECK(ptr.data_ptr<int32_t>()[rows] == idx.numel(), what, ": ptr and idx disagree");
  const int32_t* p = ptr.data_ptr<int32_t>();
  TORCH_CHECK(p[0] == 0, what, ": ptr must start at 0");
  TORCH_CHECK(non_decreasing(p, rows), what, ": ptr must be non-decreasing");
}

void check_column_space(const at::Tensor& t, const char* name, int64_t rows, int64_t N, int64_t P) {
  TORCH_CHECK(t.dim() == 3, name, " must be 3-D (rows, N, P), got ", t.sizes());
  TORCH_CHECK(t.size(0) == rows && t.size(1) == N && t.size(2) == P, name, " has shape ", t.sizes(),
              ", expected (", rows, ", ", N, ", ", P, ")");
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
}

}  // namespace

bool masked_kernels_use_avx2() {
#if LTH_SPARSE_MASKED_AVX2
  return cpu_has_avx2_fma();
#else
  return false;
#endif
}

at::Tensor apply_mask(const at::Tensor& weight, const at::Tensor& mask) {
  check_mask_of(weight, mask, "apply_mask");
  const at::Tensor w = weight.contiguous();
  const at::Tensor m = mask.contiguous();
  at::Tensor out = at::empty_like(w, at::MemoryFormat::Contiguous);
  masked_select_bits(w.data_ptr(), m.data_ptr<bool>(), out.data_ptr(), w.numel(), w.element_size());
  return out;
}

at::Tensor zero_pruned_(at::Tensor t, const at::Tensor& mask) {
  check_mask_of(t, mask, "zero_pruned_");
  // refused before any write, as masked_fill_ refuses it
  TORCH_CHECK(!t.is_inference() || c10::InferenceMode::is_enabled(),
              "zero_pruned_: Inplace update to inference tensor outside InferenceMode is not allowed");
  if (!t.is_contiguous()) return t.masked_fill_(mask.logical_not(), 0);
  const at::Tensor m = mask.contiguous();
  masked_select_bits(t.data_ptr(), m.data_ptr<bool>(), t.data_ptr(), t.numel(), t.element_size());
  // an in-place change, as masked_fill_ would record it: autograd and the structure cache see it
  torch::autograd::impl::bump_version(t);
  return t;
}

bool pruned_are_zero(const at::Tensor& t, const at::Tensor& mask) {
  check_mask_of(t, mask, "pruned_are_zero");
  if (!t.is_contiguous() || !mask.is_contiguous()) return false;
  const auto* m = reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>());
  const int64_t n = t.numel();
  const int64_t bytes = t.element_size();
  std::atomic<bool> dirty{false};
  at::parallel_for(0, n, kElementwiseGrain, [&](int64_t begin, int64_t end) {
    constexpr int64_t kBlock = 4096;  // a weight that is not clean is usually found in the first block
    for (int64_t b = begin; b < end && !dirty.load(std::memory_order_relaxed); b += kBlock) {
      const int64_t len = std::min(kBlock, end - b);
      bool found;
      switch (bytes) {
        case 2: found = pruned_bits_best(static_cast<const uint16_t*>(t.data_ptr()) + b, m + b, len) != 0; break;
        case 4: found = pruned_bits_best(static_cast<const uint32_t*>(t.data_ptr()) + b, m + b, len) != 0; break;
        default: found = pruned_bits_best(static_cast<const uint64_t*>(t.data_ptr()) + b, m + b, len) != 0;
      }
      if (found) dirty.store(true, std::memory_order_relaxed);
    }
  });
  return !dirty.load();
}

at::Tensor transpose_2d(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu(), "transpose_2d: expected a 2-D CPU tensor, got ", x.sizes());
  const int64_t rows = x.size(0), cols = x.size(1);
  at::Tensor out = at::empty({cols, rows}, x.options());
  if (out.numel() == 0) return out;
  const int64_t grain = std::max<int64_t>(8, kElementwiseGrain / std::max<int64_t>(1, rows)) / 8 * 8;
#if LTH_SPARSE_MASKED_AVX2
  if (x.scalar_type() == at::kFloat && x.stride(1) == 1 && cpu_has_avx2_fma()) {
    const float* src = x.data_ptr<float>();
    float* dst = out.data_ptr<float>();
    at::parallel_for(0, cols, grain, [&](int64_t c0, int64_t c1) {
      transpose_columns_f32(src, rows, x.stride(0), dst, c0, c1);
    });
    return out;
  }
#endif
  AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, x.scalar_type(), "transpose_2d", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, cols, grain, [&](int64_t c0, int64_t c1) {
      transpose_block(src, x.stride(0), x.stride(1), dst, rows, int64_t{0}, rows, c0, c1);
    });
  });
  return out;
}

std::vector<at::Tensor> mask_structure(const at::Tensor& mask) {
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.device().is_cpu() && mask.dim() >= 1,
              "mask_structure: expected a bool CPU tensor of at least one dimension");
  const at::Tensor m = mask.contiguous();
  const int64_t rows = m.size(0);
  int64_t cols = 1;
  for (int64_t d = 1; d < m.dim(); ++d) cols *= m.size(d);
  TORCH_CHECK(m.numel() < (int64_t{1} << 31), "mask_structure: at most 2^31 - 1 entries, got ", m.numel());
  const auto* bits = reinterpret_cast<const uint8_t*>(m.data_ptr<bool>());
  const auto opts = at::TensorOptions().dtype(at::kInt);
  at::Tensor row_ptr = at::empty({rows + 1}, opts);
  int32_t* rp = row_ptr.data_ptr<int32_t>();
  rp[0] = 0;
  at::parallel_for(0, rows, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, cols)),
                   [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int32_t count = 0;
      const uint8_t* row = bits + r * cols;
      for (int64_t j = 0; j < cols; ++j) count += row[j] != 0;
      rp[r + 1] = count;
    }
  });
  for (int64_t r = 0; r < rows; ++r) rp[r + 1] += rp[r];
  const int64_t nnz = rp[rows];
  at::Tensor col_idx = at::empty({nnz}, opts);
  int32_t* ci = col_idx.data_ptr<int32_t>();
  at::parallel_for(0, rows, std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, cols)),
                   [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int32_t* dst = ci + rp[r];
      const uint8_t* row = bits + r * cols;
      for (int64_t j = 0; j < cols; ++j)
        if (row[j]) *dst++ = static_cast<int32_t>(j);
    }
  });
  at::Tensor col_ptr = at::zeros({cols + 1}, opts);
  int32_t* cp = col_ptr.data_ptr<int32_t>();
  for (int64_t e = 0; e < nnz; ++e) ++cp[ci[e] + 1];
  for (int64_t j = 0; j < cols; ++j) cp[j + 1] += cp[j];
  at::Tensor row_idx = at::empty({nnz}, opts);
  int32_t* ri = row_idx.data_ptr<int32_t>();
  std::vector<int32_t> cursor(cp, cp + cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int32_t e = rp[r]; e < rp[r + 1]; ++e)
      ri[cursor[ci[e]]++] = static_cast<int32_t>(r);
  return {row_ptr, col_idx, col_ptr, row_idx};
}

void spmm_(at::Tensor out, const at::Tensor& weight, const at::Tensor& ptr, const at::Tensor& idx,
           const at::Tensor& x, const std::optional<at::Tensor>& bias, bool transposed) {
  TORCH_CHECK(weight.dim() >= 1 && weight.is_contiguous() && weight.device().is_cpu(),
              "spmm_: weight must be a contiguous CPU tensor");
  const int64_t w_rows = weight.size(0);
  int64_t w_cols = 1;
  for (int64_t d = 1; d < weight.dim(); ++d) w_cols *= weight.size(d);
  const int64_t rows = transposed ? w_cols : w_rows;
  const int64_t cols = transposed ? w_rows : w_cols;
  check_structure(ptr, idx, rows, "spmm_");
  TORCH_CHECK(out.size(0) == rows, "spmm_: out has ", out.size(0), " rows, the ", transposed ? "transposed " : "",
              "weight has ", rows, " (entries of ptr: ", ptr.numel(), ")");
  TORCH_CHECK(x.dim() == 3 && out.dim() == 3, "spmm_: x and out must be 3-D (rows, N, P)");
  TORCH_CHECK(x.size(0) == cols, "spmm_: x has ", x.size(0), " rows, the ", transposed ? "transposed " : "",
              "weight has ", cols, " columns (shape)");
  check_column_space(out, "out", rows, x.size(1), x.size(2));
  TORCH_CHECK(x.stride(2) == 1 || x.size(2) <= 1, "spmm_: x must be contiguous in its last dimension");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() && out.scalar_type() == weight.scalar_type(),
              "spmm_: x, out and weight must share one dtype");
  TORCH_CHECK(!bias.has_value() || (bias->is_contiguous() && bias->numel() == rows &&
                                    bias->scalar_type() == weight.scalar_type()),
              "spmm_: bias must be a contiguous (rows,) tensor of the weight's dtype");
  if (out.numel() == 0) return;
  const int32_t* id = idx.data_ptr<int32_t>();
  TORCH_CHECK(indices_in_range(id, idx.numel(), cols), "spmm_: index out of range of x's rows");
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "spmm_", [&] {
    Spmm<scalar_t> a{weight.data_ptr<scalar_t>(), transposed ? 1 : w_cols, transposed ? w_cols : 1,
                     ptr.data_ptr<int32_t>(), id, x.data_ptr<scalar_t>(), x.stride(0), x.stride(1),
                     out.data_ptr<scalar_t>(), out.stride(0), out.stride(1), out.stride(2),
                     bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr, x.size(1), x.size(2)};
    at::parallel_for(0, rows, row_grain(rows, idx.numel(), a.N * a.P), [&](int64_t r0, int64_t r1) {
      spmm_rows_best(a, r0, r1);
    });
  });
}

at::Tensor sddmm(const at::Tensor& row_ptr, const at::Tensor& col_idx, const at::Tensor& g,
                 const at::Tensor& x) {
  TORCH_CHECK(g.dim() == 3 && x.dim() == 3, "sddmm: g and x must be 3-D (rows, N, P)");
  const int64_t rows = g.size(0);
  const int64_t cols = x.size(0);
  check_structure(row_ptr, col_idx, rows, "sddmm");
  check_column_space(x, "x", cols, g.size(1), g.size(2));
  TORCH_CHECK((g.stride(2) == 1 || g.size(2) <= 1) && (x.stride(2) == 1 || x.size(2) <= 1),
              "sddmm: g and x must be contiguous in their last dimension");
  TORCH_CHECK(g.scalar_type() == x.scalar_type(), "sddmm: g and x must share one dtype");
  const int32_t* id = col_idx.data_ptr<int32_t>();
  TORCH_CHECK(indices_in_range(id, col_idx.numel(), cols), "sddmm: column index out of range of x's rows");
  at::Tensor out = at::empty({rows, cols}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "sddmm", [&] {
    Sddmm a{row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(), g.data_ptr<scalar_t>(), g.stride(0),
            g.stride(1), x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), out.data_ptr<scalar_t>(), cols,
            g.size(1), g.size(2)};
    at::parallel_for(0, rows, row_grain(rows, col_idx.numel(), a.N * a.P), [&](int64_t r0, int64_t r1) {
      sddmm_rows_best<scalar_t>(a, r0, r1);
    });
  });
  return out;
}

}  // namespace cpu
}  // namespace lth_sparse
