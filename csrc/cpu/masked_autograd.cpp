// masked_linear on the CPU as C++ autograd nodes: the eager path of the C++ backend.
//
// A Python autograd Function costs 60-100 us per forward + backward on this
// path (argument handling, a Python backward, a dozen small torch calls), as
// much as the whole product of a LeNet layer at batch 60. These run the same
// kernels (masked.cpp) with the backward in C++, so a masked layer costs what
// its products cost. masked_linear_auto is the whole plain-eager layer in one
// call: it checks the arguments (anything unusual goes back to Python, whose
// checks name the argument), applies the policy of lth_sparse/ops/_cpu.py
// (its constants come in as arguments) and takes the mask's count and
// structure from the mask cache (mask_cache.cpp): ~3 us over F.linear, plus
// the cache's comparison of the mask's bytes (~7 us on LeNet's 784x300 fc1),
// where the same steps in Python cost ~40 us.
//
// The backward nodes are written as torch's own generated ones are (a Node
// subclass, SavedVariables, the history set on the output), not through
// torch::autograd::Function: its CppNode wrapper (a context with a string-keyed
// map, the outputs wrapped and checked one by one) cost ~10 us a step here,
// against none for a Node, measured on a 100->10 layer inside a small network.
// What a Function gave, these keep: the saved tensors' version checks (an
// in-place change before the backward raises), saved-tensor hooks, anomaly
// mode's traces, release after the backward. Forward-mode AD is not theirs:
// masked_linear_auto leaves dual tensors to the Python path.
#include "cpu/masked_autograd.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include "cpu/mask_cache.h"
#include "cpu/masked.h"

namespace lth_sparse {
namespace cpu {
namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// The number of rows of t seen as (rows, t.size(-1)).
int64_t leading(const at::Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return rows;
}

// The bias as a tensor, undefined when absent: the third input of the backward nodes.
at::Tensor bias_or_undefined(const std::optional<at::Tensor>& bias) {
  return bias.has_value() ? *bias : at::Tensor();
}

bool has_forward_grad(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  return torch::autograd::isFwGradDefined(input) || torch::autograd::isFwGradDefined(weight) ||
         torch::autograd::isFwGradDefined(bias);
}

// Attach `node` as the output's gradient function when any of input, weight, bias needs a
// gradient (grad mode on); `save` then stores what the backward reads.
template <typename NodeT, typename Save>
void record(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
            const std::optional<at::Tensor>& bias, Save&& save) {
  TORCH_CHECK(!has_forward_grad(input, weight, bias),
              "masked_linear (C++ CPU path): forward-mode AD is not supported (lth_sparse.ops.masked_linear is)");
  const at::Tensor b = bias_or_undefined(bias);
  if (!torch::autograd::compute_requires_grad(input, weight, b)) return;
  auto node = c10::make_intrusive<NodeT>();
  node->set_next_edges(torch::autograd::collect_next_edges(input, weight, b));
  save(*node);
  torch::autograd::set_history(out, node);
}

// The backward with differentiable torch ops, for a backward that is itself differentiated
// (create_graph=True: double backward, Hessian-vector products). The kernels above write raw
// memory, which autograd would not see. Slower; the values are the same.
variable_list differentiable_backward(const Node& node, const at::Tensor& grad, const at::Tensor& input,
                                      const at::Tensor& weight, const at::Tensor& mask) {
  variable_list out(3);
  const int64_t out_features = weight.size(0), in_features = weight.size(1);
  const int64_t rows = leading(input);
  const at::Tensor g = grad.reshape({rows, out_features});
  if (node.should_compute_output(0)) {
    out[0] = g.mm(at::where(mask, weight, at::zeros({}, weight.options()))).reshape(input.sizes());
  }
  if (node.should_compute_output(1)) out[1] = g.t().mm(input.reshape({rows, in_features})) * mask;
  if (node.should_compute_output(2)) out[2] = g.sum(0);
  return out;
}

// Dense path: the GEMMs on the masked weight, formed once and kept for the backward
// (or the weight itself, when it holds zeros wherever the mask prunes).
struct MaskedLinearDenseBackward : public Node {
  SavedVariable input_, weight_, mask_;
  SavedVariable masked_copy_;  // the masked weight, when it is a copy (the weight held pruned values)
  bool has_masked_copy_ = false;

  variable_list apply(variable_list&& grads) override {
    variable_list out(3);
    if (!grads[0].defined()) return out;
    const at::Tensor input = input_.unpack();
    const at::Tensor mask = mask_.unpack();
    if (at::GradMode::is_enabled()) return differentiable_backward(*this, grads[0], input, weight_.unpack(), mask);
    // with a masked copy, the weight itself is not read (nor version-checked): it may change after the forward
    const at::Tensor masked = has_masked_copy_ ? masked_copy_.unpack() : weight_.unpack();
    const int64_t out_features = masked.size(0), in_features = masked.size(1);
    const int64_t rows = leading(input);
    const at::Tensor g = grads[0].reshape({rows, out_features});
    if (should_compute_output(0)) out[0] = g.mm(masked).reshape(input.sizes());
    if (should_compute_output(1)) out[1] = zero_pruned_(g.t().mm(input.reshape({rows, in_features})), mask);
    if (should_compute_output(2)) out[2] = g.sum(0);
    return out;
  }
  std::string name() const override { return "MaskedLinearDenseBackward"; }
  void release_variables() override {
    input_.reset_data();
    weight_.reset_data();
    mask_.reset_data();
    masked_copy_.reset_data();
  }
};

at::Tensor dense_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
                         const std::optional<at::Tensor>& bias) {
  const bool clean = pruned_are_zero(weight, mask);
  const at::Tensor masked = clean ? weight : apply_mask(weight, mask);
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = at::linear(input, masked, bias);
  }
  record<MaskedLinearDenseBackward>(out, input, weight, bias, [&](MaskedLinearDenseBackward& node) {
    node.input_ = SavedVariable(input, false);
    node.weight_ = SavedVariable(weight, false);
    node.mask_ = SavedVariable(mask, false);
    if (!clean) {
      node.masked_copy_ = SavedVariable(masked, false);
      node.has_masked_copy_ = true;
    }
  });
  return out;
}

// Sparse path: CSR/CSC products over the weight in place; the transposed input is kept for the weight gradient.
struct MaskedLinearSparseBackward : public Node {
  SavedVariable input_, weight_, mask_, xt_;
  std::vector<at::Tensor> structure_;  // the mask's, from the cache: int32 indices, never changed in place
  std::vector<int64_t> input_sizes_;

  variable_list apply(variable_list&& grads) override {
    variable_list out(3);
    if (!grads[0].defined()) return out;
    // unpacked for their version checks too: an in-place change of the weight or the mask
    // since the forward raises here, as for any saved tensor
    const at::Tensor weight = weight_.unpack();
    const at::Tensor xt = xt_.unpack();
    const at::Tensor mask = mask_.unpack();
    if (at::GradMode::is_enabled()) return differentiable_backward(*this, grads[0], input_.unpack(), weight, mask);
    const int64_t out_features = weight.size(0), in_features = weight.size(1);
    const int64_t rows = xt.size(2);
    const at::Tensor g = grads[0].reshape({rows, out_features});
    const at::Tensor gt = transpose_2d(g).unsqueeze(1);
    if (should_compute_output(0)) {
      at::Tensor grad_input = at::empty({rows, in_features}, g.options());
      spmm_(grad_input.t().unsqueeze(1), weight.contiguous(), structure_[2], structure_[3], gt, std::nullopt, true);
      out[0] = grad_input.view(input_sizes_);
    }
    if (should_compute_output(1)) out[1] = sddmm(structure_[0], structure_[1], gt, xt);
    if (should_compute_output(2)) out[2] = g.sum(0);
    return out;
  }
  std::string name() const override { return "MaskedLinearSparseBackward"; }
  void release_variables() override {
    input_.reset_data();
    weight_.reset_data();
    mask_.reset_data();
    xt_.reset_data();
    structure_.clear();
  }
};

at::Tensor sparse_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
                          const std::optional<at::Tensor>& bias, const std::vector<at::Tensor>& structure) {
  const int64_t out_features = weight.size(0), in_features = weight.size(1);
  const int64_t rows = leading(input);
  const at::Tensor w = weight.contiguous();
  at::Tensor out, xt;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    xt = transpose_2d(input.reshape({rows, in_features})).unsqueeze(1);
    at::Tensor flat = at::empty({rows, out_features}, input.options());
    spmm_(flat.t().unsqueeze(1), w, structure[0], structure[1], xt,
          bias.has_value() ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt, false);
    std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
    shape.back() = out_features;
    out = flat.view(shape);
  }
  record<MaskedLinearSparseBackward>(out, input, weight, bias, [&](MaskedLinearSparseBackward& node) {
    node.input_ = SavedVariable(input, false);
    node.weight_ = SavedVariable(weight, false);
    node.mask_ = SavedVariable(mask, false);
    node.xt_ = SavedVariable(xt, false);
    node.structure_ = structure;
    node.input_sizes_.assign(input.sizes().begin(), input.sizes().end());
  });
  return out;
}

bool is_cpu_strided(const at::Tensor& t) { return t.defined() && t.device().is_cpu() && t.layout() == at::kStrided; }

}  // namespace

namespace {

// takes_sparse_path for a mask with `kept` True entries (the caller has its count from the cache).
bool sparse_for_kept(const at::Tensor& weight, int64_t kept, int64_t columns, const SparsePolicy& policy,
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
  return static_cast<double>(kept) / static_cast<double>(std::max<int64_t>(1, numel)) <= limit;
}

}  // namespace

bool takes_sparse_path(const at::Tensor& weight, const at::Tensor& mask, int64_t columns, const SparsePolicy& policy,
                       std::optional<double> max_density) {
  // the count is cached: taken once per mask state
  return sparse_for_kept(weight, mask_state(mask, false).kept, columns, policy, max_density);
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
  const SparsePolicy policy{max_density, gemv_max_density, min_dense_work, small_dense_work, small_min_columns};
  const bool dual = has_forward_grad(input, weight, bias);
  const int64_t columns = leading(input);
  // one lookup (one comparison of the mask's bytes): the count decides whether the structure is needed
  const MaskState state = mask_state(mask, [&](int64_t kept) {
    const bool plain = allow_plain && kept == weight.numel();
    return !plain && !dual && sparse_for_kept(weight, kept, columns, policy, std::nullopt);
  });
  if (allow_plain && state.kept == weight.numel()) return at::linear(input, weight, bias);  // nothing pruned
  if (dual) return std::nullopt;  // dual tensors: the Python path
  if (!state.structure.empty()) return sparse_forward(input, weight, mask, bias, state.structure);
  return dense_forward(input, weight, mask, bias);
}

at::Tensor masked_linear_dense(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
                               const std::optional<at::Tensor>& bias) {
  return dense_forward(input, weight, mask, bias);
}

}  // namespace cpu
}  // namespace lth_sparse
