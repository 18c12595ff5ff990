// masked_linear on the CPU with C++ autograd nodes (the eager path of the C++ backend).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace lth_sparse {
namespace cpu {

// The constants of lth_sparse.ops._cpu that choose the sparse path (see its module docstring).
struct SparsePolicy {
  double max_density;       // a linear layer's threshold density
  double gemv_max_density;  // at one column (batch 1)
  int64_t min_dense_work;   // never below this many multiply-adds
  int64_t small_dense_work; // at most this many multiply-adds over ...
  int64_t small_min_columns;  // ... at least this many columns: any density
};

// Whether a layer with this weight and bool mask, over `columns` columns (a linear layer's batch,
// a conv's batch x positions), takes the sparse path: float32/float64, at least min_dense_work
// multiply-adds, and density at most max_density when given (convs), else a linear layer's
// threshold: gemv_max_density at one column, any density for a tiny product, policy.max_density.
// The one rule, for masked_linear_auto and lth_sparse.ops._cpu.use_sparse.
bool takes_sparse_path(const at::Tensor& weight, const at::Tensor& mask, int64_t columns, const SparsePolicy& policy,
                       std::optional<double> max_density);

// The plain-eager CPU masked_linear in one call: checks, the path choice of lth_sparse.ops._cpu
// (nothing pruned and allow_plain: at::linear itself; else the sparse path where
// takes_sparse_path says so, the dense path otherwise), the mask's count and structure from the
// mask cache. nullopt for anything it does not take (a device, dtype, layout or shape that is
// off, float8, dual tensors), which the caller then runs through Python, whose checks name the
// argument at fault.
std::optional<at::Tensor> masked_linear_auto(const at::Tensor& input, const at::Tensor& weight,
                                             const at::Tensor& mask, const std::optional<at::Tensor>& bias,
                                             double max_density, double gemv_max_density,
                                             int64_t min_dense_work, int64_t small_dense_work,
                                             int64_t small_min_columns, bool allow_plain);

// F.linear(input, weight * mask, bias) with the weight gradient masked; the dense GEMMs on the
// masked weight, formed once (kept for the backward), or the weight itself when it already holds
// +0.0 wherever the mask prunes (a masked layer's weight after every optimizer step), which
// saves forming a copy that the GEMMs then read. Differentiable in input, weight and bias.
at::Tensor masked_linear_dense(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
                               const std::optional<at::Tensor>& bias);

}  // namespace cpu
}  // namespace lth_sparse
