// See path.h.
#include "cpu/path.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace lth_sparse {
namespace cpu {
namespace {

constexpr int64_t kElementwiseGrain = 1 << 15;  // elements of out per task

// What one row of out gets: lerp (Kind::kLerp: from a, b, with the coefficient and base of torch.lerp)
// or its own values (Kind::kInPlace), plus a bias (Bias::kColumn: one per column, the bias row),
// clamped at 0 with Relu. Plain loops the compiler vectorises;
// the AVX-512 and AVX2 clones below run where the CPU has them.
enum class Kind { kLerpFromA, kLerpFromB, kInPlace };
enum class Bias { kNone, kColumn };

template <typename T, Kind K, Bias B, bool Relu>
__attribute__((always_inline)) inline void row(const T* a, const T* b, const T* bias, T* dst, int64_t n, T coeff) {
  for (int64_t c = 0; c < n; ++c) {
    T v;
    if constexpr (K == Kind::kInPlace) {
      v = dst[c];
    } else {
      v = std::fma(coeff, b[c] - a[c], K == Kind::kLerpFromA ? a[c] : b[c]);
    }
    if constexpr (B == Bias::kColumn) v += bias[c];
    if constexpr (Relu) v = v < T(0) ? T(0) : v;  // NaN stays NaN, as in torch.relu
    dst[c] = v;
  }
}

// rows of out from r0 on; bias: the alpha's bias row
#define LTH_SPARSE_ROWS_BODY                 \
  for (int64_t r = 0; r < rows; ++r) row<T, K, B, Relu>(a + r * ld, b + r * ld, bias, dst + r * cols, cols, coeff);

template <typename T, Kind K, Bias B, bool Relu>
void rows_generic(const T* a, const T* b, const T* bias, T* dst, int64_t rows, int64_t cols, int64_t ld, T coeff) {
  LTH_SPARSE_ROWS_BODY
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LTH_SPARSE_PATH_X86 1
template <typename T, Kind K, Bias B, bool Relu>
__attribute__((target("avx512f"))) void rows_avx512(const T* a, const T* b, const T* bias, T* dst, int64_t rows,
                                                    int64_t cols, int64_t ld, T coeff) {
  LTH_SPARSE_ROWS_BODY
}
template <typename T, Kind K, Bias B, bool Relu>
__attribute__((target("avx2,fma"))) void rows_avx2(const T* a, const T* b, const T* bias, T* dst, int64_t rows,
                                                   int64_t cols, int64_t ld, T coeff) {
  LTH_SPARSE_ROWS_BODY
}
#else
#define LTH_SPARSE_PATH_X86 0
#endif
#undef LTH_SPARSE_ROWS_BODY

template <typename T, Kind K, Bias B, bool Relu>
void rows_best(const T* a, const T* b, const T* bias, T* dst, int64_t rows, int64_t cols, int64_t ld, T coeff) {
#if LTH_SPARSE_PATH_X86
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx512) return rows_avx512<T, K, B, Relu>(a, b, bias, dst, rows, cols, ld, coeff);
  if (avx2) return rows_avx2<T, K, B, Relu>(a, b, bias, dst, rows, cols, ld, coeff);
#endif
  rows_generic<T, K, B, Relu>(a, b, bias, dst, rows, cols, ld, coeff);
}

template <typename T, Kind K, Bias B>
void rows_relu(bool relu, const T* a, const T* b, const T* bias, T* dst, int64_t rows, int64_t cols, int64_t ld,
               T coeff) {
  relu ? rows_best<T, K, B, true>(a, b, bias, dst, rows, cols, ld, coeff)
       : rows_best<T, K, B, false>(a, b, bias, dst, rows, cols, ld, coeff);
}

template <typename T, Kind K>
void rows_for(Bias bias_kind, bool relu, const T* a, const T* b, const T* bias, T* dst, int64_t rows, int64_t cols,
              int64_t ld, T coeff) {
  bias_kind == Bias::kColumn ? rows_relu<T, K, Bias::kColumn>(relu, a, b, bias, dst, rows, cols, ld, coeff)
                             : rows_relu<T, K, Bias::kNone>(relu, a, b, bias, dst, rows, cols, ld, coeff);
}

// Over (alpha, block of rows) tasks: out (A, rows, cols); a, b (rows, cols) with row stride ld, or null
// (in place); alphas as the layer's dtype sees them (empty in place); bias (A, cols), or null.
template <typename T>
void run(T* out, const T* a, const T* b, const std::vector<double>& alphas, const T* bias, Bias bias_kind,
         int64_t num_alphas, int64_t rows, int64_t cols, int64_t ld, bool relu) {
  const int64_t rows_per_task = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, cols));
  const int64_t tasks_per_alpha = (rows + rows_per_task - 1) / rows_per_task;
  at::parallel_for(0, num_alphas * tasks_per_alpha, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / tasks_per_alpha;
      const int64_t r0 = (task % tasks_per_alpha) * rows_per_task;
      const int64_t n = std::min(rows, r0 + rows_per_task) - r0;
      T* dst = out + (i * rows + r0) * cols;
      const T* bias_at = bias_kind == Bias::kColumn ? bias + i * cols : nullptr;
      if (a == nullptr) {
        rows_for<T, Kind::kInPlace>(bias_kind, relu, nullptr, nullptr, bias_at, dst, n, cols, 0, T(0));
        continue;
      }
      const T w = static_cast<T>(alphas[i]);
      const bool from_a = std::abs(w) < T(0.5);
      const T* pa = a + r0 * ld;
      const T* pb = b + r0 * ld;
      if (from_a) {
        rows_for<T, Kind::kLerpFromA>(bias_kind, relu, pa, pb, bias_at, dst, n, cols, ld, w);
      } else {
        rows_for<T, Kind::kLerpFromB>(bias_kind, relu, pa, pb, bias_at, dst, n, cols, ld, w - T(1));
      }
    }
  });
}

void check_out(const char* what, const at::Tensor& out) {
  TORCH_CHECK(out.device().is_cpu() && out.dim() == 3 && out.is_contiguous(), what,
              ": out must be a contiguous (A, rows, cols) CPU tensor, got ", out.sizes(), " with strides ",
              out.strides());
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble, what,
              ": float32 or float64 only, got ", out.scalar_type());
}

// The kind of bias: none, or (A, cols), one per column, of dtype.
Bias check_bias(const char* what, const std::optional<at::Tensor>& bias, int64_t num_alphas, int64_t rows,
                int64_t cols, at::ScalarType dtype) {
  if (!bias.has_value()) return Bias::kNone;
  const auto& t = *bias;
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 2 && t.size(0) == num_alphas && t.size(1) == cols &&
                  t.is_contiguous() && t.scalar_type() == dtype,
              what, ": bias must be a contiguous (A, cols) CPU tensor of out's dtype, got ", t.sizes(), " ",
              t.scalar_type(), " for (A, rows, cols) = (", num_alphas, ", ", rows, ", ", cols, ") ", dtype);
  return Bias::kColumn;
}

// The two ends (rows, cols) and the alphas of a lerp, checked; each alpha as the layer's dtype sees it
// (torch.lerp's weight is of the inputs' dtype).
struct Lerp {
  std::vector<double> alphas;
  int64_t rows, cols, ld;
};

Lerp check_lerp(const char* what, const at::Tensor& a, const at::Tensor& b, const at::Tensor& alphas,
                at::ScalarType dtype) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && alphas.device().is_cpu(), what, ": CPU tensors only");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && alphas.dim() == 1, what, ": a, b must be (rows, cols), alphas (A,); got a ",
              a.sizes(), ", b ", b.sizes(), ", alphas ", alphas.sizes());
  TORCH_CHECK(a.sizes() == b.sizes() && a.strides() == b.strides(), what, ": a and b differ in shape or strides: ",
              a.sizes(), a.strides(), " and ", b.sizes(), b.strides());
  TORCH_CHECK(a.size(1) <= 1 || a.stride(1) == 1, what, ": a and b need a unit column stride, got strides ", a.strides());
  TORCH_CHECK(a.scalar_type() == dtype && b.scalar_type() == dtype, what, ": a, b and out must share one dtype, got ",
              a.scalar_type(), ", ", b.scalar_type(), ", ", dtype);
  TORCH_CHECK(at::isFloatingType(alphas.scalar_type()), what, ": alphas must be floating, got ", alphas.scalar_type());
  const auto values = alphas.to(dtype).to(at::kDouble).contiguous();
  const int64_t rows = a.size(0), cols = a.size(1);
  return {std::vector<double>(values.data_ptr<double>(), values.data_ptr<double>() + alphas.size(0)), rows, cols,
          rows > 1 ? a.stride(0) : cols};
}

}  // namespace

at::Tensor lerp_relu_(at::Tensor out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& alphas,
                      const std::optional<at::Tensor>& bias, bool relu) {
  check_out("lerp_relu_", out);
  const Lerp lerp = check_lerp("lerp_relu_", a, b, alphas, out.scalar_type());
  TORCH_CHECK(out.size(0) == alphas.size(0) && out.size(1) == lerp.rows && out.size(2) == lerp.cols, "lerp_relu_: out ",
              out.sizes(), " is not (A, rows, cols) for alphas ", alphas.sizes(), " and a ", a.sizes());
  const Bias bias_kind = check_bias("lerp_relu_", bias, out.size(0), lerp.rows, lerp.cols, out.scalar_type());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lerp_relu_", [&] {
    run<scalar_t>(out.data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), lerp.alphas,
                  bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr, bias_kind, out.size(0), lerp.rows,
                  lerp.cols, lerp.ld, relu);
  });
  return out;
}

at::Tensor bias_relu_(at::Tensor out, const at::Tensor& bias, bool relu) {
  check_out("bias_relu_", out);
  const Bias bias_kind = check_bias("bias_relu_", bias, out.size(0), out.size(1), out.size(2), out.scalar_type());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "bias_relu_", [&] {
    run<scalar_t>(out.data_ptr<scalar_t>(), nullptr, nullptr, {}, bias.const_data_ptr<scalar_t>(), bias_kind,
                  out.size(0), out.size(1), out.size(2), 0, relu);
  });
  return out;
}

}  // namespace cpu
}  // namespace lth_sparse
