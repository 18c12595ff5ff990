// The linear path between two weight sets on the CPU (lth_sparse.nn.path): a layer whose input all
// alphas share computes its two ends' outputs once and each alpha's output as their lerp; a layer
// after it computes each alpha's product and adds that alpha's bias.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace lth_sparse {
namespace cpu {

// out[i, r, c] = lerp(a[r, c], b[r, c], alphas[i]) (+ bias[i, c]), then
// max(., 0) when relu; one pass over out. a, b: (rows, cols) of one float dtype (float32 or float64) with
// unit column stride and the same row strides (the two halves of a product of both ends stacked along
// the outputs); out: (A, rows, cols) contiguous, of their dtype; alphas: (A,) on the CPU, any floating
// dtype; bias: (A, cols) contiguous, of their dtype, or none. The lerp is torch.lerp's (weight below 0.5 in magnitude:
// fma(w, b - a, a), else fma(w - 1, b - a, b)), so without bias and relu out equals
// torch.lerp(a, b, alphas[:, None, None]) to the last bit wherever torch's vectorised kernel computes
// it. NaN stays NaN through the clamp, as in torch.relu. Returns out.
at::Tensor lerp_relu_(at::Tensor out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& alphas,
                      const std::optional<at::Tensor>& bias, bool relu);

// out[i, r, c] += bias[i, c], then max(., 0) when relu, in place: out (A, rows, cols) contiguous, bias (A, cols)
// contiguous, both float32 or both float64. Returns out.
at::Tensor bias_relu_(at::Tensor out, const at::Tensor& bias, bool relu);

}  // namespace cpu
}  // namespace lth_sparse
