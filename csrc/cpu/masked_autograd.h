// masked_linear on the CPU as C++ autograd Functions (the eager path of the C++ backend).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace lth_sparse {
namespace cpu {

// F.linear(input, weight * mask, bias) with the weight gradient masked; the dense GEMMs on the
// masked weight, formed once (kept for the backward), or the weight itself when it already holds
// +0.0 wherever the mask prunes (a masked layer's weight after every optimizer step), which
// saves forming a copy that the GEMMs then read. Differentiable in input, weight and bias.
at::Tensor masked_linear_dense(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
                               const std::optional<at::Tensor>& bias);

// The same through the mask's CSR/CSC structure (mask_structure(mask)): one multiply-add per
// unpruned weight and example in the forward and the input gradient, the weight gradient at the
// unpruned entries only. float32/float64.
at::Tensor masked_linear_sparse(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
                                const std::optional<at::Tensor>& bias, const std::vector<at::Tensor>& structure);

}  // namespace cpu
}  // namespace lth_sparse
