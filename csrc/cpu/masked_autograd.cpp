// masked_linear on the CPU as C++ autograd Functions: the eager path of the C++ backend.
//
// A Python autograd Function costs 60-100 us per forward + backward on this
// path (argument handling, a Python backward, a dozen small torch calls), as
// much as the whole product of a LeNet layer at batch 60. These run the same
// kernels (masked.cpp) with the backward in C++, so a masked layer costs what
// its products cost. masked_linear_auto is the whole plain-eager layer in one
// call: it checks the arguments (anything unusual goes back to Python, whose
// checks name the argument), applies the policy of lth_sparse/ops/_cpu.py
// (its constants come in as arguments) and takes the mask's count and
// structure from the mask cache (mask_cache.cpp): ~3 us over F.linear, where
// the same steps in Python cost ~40 us.
#include "cpu/masked_autograd.h"

#include <torch/csrc/autograd/custom_function.h>

#include "cpu/mask_cache.h"
#include "cpu/masked.h"

namespace lth_sparse {
namespace cpu {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// The number of rows of t seen as (rows, t.size(-1)).
int64_t leading(const at::Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return rows;
}

// Dense path: the GEMMs on the masked weight, formed once and kept for the backward
// (or the weight itself, when it holds zeros wherever the mask prunes).
struct MaskedLinearDense : public torch::autograd::Function<MaskedLinearDense> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor& mask, const std::optional<at::Tensor>& bias) {
    at::Tensor masked = pruned_are_zero(weight, mask) ? weight : apply_mask(weight, mask);
    ctx->save_for_backward({input, masked, mask});
    ctx->saved_data["has_bias"] = bias.has_value();
    return at::linear(input, masked, bias);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& masked = saved[1];
    const at::Tensor& mask = saved[2];
    const int64_t out_features = masked.size(0), in_features = masked.size(1);
    const int64_t rows = leading(input);
    const at::Tensor g = grads[0].reshape({rows, out_features});
    at::Tensor grad_input, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0)) grad_input = g.mm(masked).reshape(input.sizes());
    if (ctx->needs_input_grad(1)) grad_weight = zero_pruned_(g.t().mm(input.reshape({rows, in_features})), mask);
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(3)) grad_bias = g.sum(0);
    return {grad_input, grad_weight, at::Tensor(), grad_bias};
  }
};

// Sparse path: CSR/CSC products over the weight in place; the transposed input is kept for the weight gradient.
struct MaskedLinearSparse : public torch::autograd::Function<MaskedLinearSparse> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor& mask, const std::optional<at::Tensor>& bias,
                            const std::vector<at::Tensor>& structure) {
    const int64_t out_features = weight.size(0), in_features = weight.size(1);
    const int64_t rows = leading(input);
    const at::Tensor w = weight.contiguous();
    at::Tensor xt = transpose_2d(input.reshape({rows, in_features})).unsqueeze(1);
    at::Tensor out = at::empty({rows, out_features}, input.options());
    spmm_(out.t().unsqueeze(1), w, structure[0], structure[1], xt,
          bias.has_value() ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt, false);
    ctx->save_for_backward({input, w, mask, xt});
    ctx->saved_data["structure"] = structure;
    ctx->saved_data["has_bias"] = bias.has_value();
    std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
    shape.back() = out_features;
    return out.view(shape);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& xt = saved[3];
    const auto structure = ctx->saved_data["structure"].toTensorVector();
    const int64_t out_features = weight.size(0), in_features = weight.size(1);
    const int64_t rows = xt.size(2);
    const at::Tensor g = grads[0].reshape({rows, out_features});
    at::Tensor grad_input, grad_weight, grad_bias;
    at::Tensor gt = transpose_2d(g).unsqueeze(1);
    if (ctx->needs_input_grad(0)) {
      grad_input = at::empty({rows, in_features}, g.options());
      spmm_(grad_input.t().unsqueeze(1), weight, structure[2], structure[3], gt, std::nullopt, true);
      grad_input = grad_input.view(input.sizes());
    }
    if (ctx->needs_input_grad(1)) grad_weight = sddmm(structure[0], structure[1], gt, xt);
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(3)) grad_bias = g.sum(0);
    return {grad_input, grad_weight, at::Tensor(), grad_bias, at::Tensor()};
  }
};

bool is_cpu_strided(const at::Tensor& t) { return t.defined() && t.device().is_cpu() && t.layout() == at::kStrided; }

}  // namespace

bool takes_sparse_path(const at::Tensor& weight, const at::Tensor& mask, int64_t columns, const SparsePolicy& policy,
                       std::optional<double> max_density) {
  const bool sparse_dtype = weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble;
  const int64_t numel = weight.numel();
  if (!sparse_dtype || numel >= (int64_t{1} << 31)) return false;
  const int64_t work = numel * columns;
  if (work < policy.min_dense_work) return false;
  double limit;
  if (max_density.has_value()) {
    limit = *max_density;
  } else if (columns == 1) {
    limit = policy.gemv_max_density;  // a matrix-vector product
  } else if (columns >= policy.small_min_columns && work <= policy.small_dense_work) {
    limit = 1.0;  // a tiny product: any density
  } else {
    limit = policy.max_density;
  }
  const int64_t kept = mask_state(mask, false).kept;  // cached: counted once per mask state
  return static_cast<double>(kept) / static_cast<double>(std::max<int64_t>(1, numel)) <= limit;
}

std::optional<at::Tensor> masked_linear_auto(const at::Tensor& input, const at::Tensor& weight,
                                             const at::Tensor& mask, const std::optional<at::Tensor>& bias,
                                             double max_density, double gemv_max_density,
                                             int64_t min_dense_work, int64_t small_dense_work,
                                             int64_t small_min_columns, bool allow_plain) {
  // Anything unusual goes back to Python, whose checks raise the errors that name the argument.
  if (!is_cpu_strided(input) || !is_cpu_strided(weight) || !is_cpu_strided(mask)) return std::nullopt;
  if (weight.dim() != 2 || !weight.is_floating_point() || mask.scalar_type() != at::kBool) return std::nullopt;
  if (mask.sizes() != weight.sizes() || input.dim() < 1 || input.size(-1) != weight.size(1)) return std::nullopt;
  if (input.scalar_type() != weight.scalar_type()) return std::nullopt;
  const int64_t element = weight.element_size();
  if (element != 2 && element != 4 && element != 8) return std::nullopt;  // float8: the Python Function
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    if (!is_cpu_strided(b) || b.dim() != 1 || b.size(0) != weight.size(0) ||
        b.scalar_type() != weight.scalar_type()) {
      return std::nullopt;
    }
  }
  const MaskState state = mask_state(mask, false);
  if (allow_plain && state.kept == weight.numel()) return at::linear(input, weight, bias);  // nothing pruned
  const SparsePolicy policy{max_density, gemv_max_density, min_dense_work, small_dense_work, small_min_columns};
  if (takes_sparse_path(weight, mask, leading(input), policy, std::nullopt)) {
    return MaskedLinearSparse::apply(input, weight, mask, bias, mask_state(mask, true).structure);
  }
  return MaskedLinearDense::apply(input, weight, mask, bias);
}

at::Tensor masked_linear_dense(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
                               const std::optional<at::Tensor>& bias) {
  return MaskedLinearDense::apply(input, weight, mask, bias);
}

at::Tensor masked_linear_sparse(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
                                const std::optional<at::Tensor>& bias, const std::vector<at::Tensor>& structure) {
  TORCH_CHECK(structure.size() == 4, "masked_linear_sparse: structure must be mask_structure(mask)'s 4 tensors");
  TORCH_CHECK(weight.dim() == 2 && input.dim() >= 1 && input.size(-1) == weight.size(1),
              "masked_linear_sparse: input (*, in) and weight (out, in) do not fit");
  return MaskedLinearSparse::apply(input, weight, mask, bias, structure);
}

}  // namespace cpu
}  // namespace lth_sparse
