// The linear path between two weight sets on the CPU (lth_sparse.nn.path): a layer whose input all
// alphas share computes its two ends' outputs once and each alpha's output as their lerp; a layer
// after it computes each alpha's product and adds that alpha's bias.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace lth_sparse {
namespace cpu {

// out[i, r, c] = lerp(a[r, c], b[r, c], alphas[i]) (+ bias[i, c], or bias[i, r] with bias_per_row), then
// max(., 0) when relu; one pass over out. a, b: (rows, cols) of one float dtype (float32 or float64) with
// unit column stride and the same row strides (the two halves of a product of both ends stacked along
// the outputs); out: (A, rows, cols) contiguous, of their dtype; alphas: (A,) on the CPU, any floating
// dtype; bias: (A, cols), or (A, rows) with bias_per_row, contiguous, of their dtype, or none. The lerp is torch.lerp's (weight below 0.5 in magnitude:
// fma(w, b - a, a), else fma(w - 1, b - a, b)), so without bias and relu out equals
// torch.lerp(a, b, alphas[:, None, None]) to the last bit wherever torch's vectorised kernel computes
// it. NaN stays NaN through the clamp, as in torch.relu. Returns out.
at::Tensor lerp_relu_(at::Tensor out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& alphas,
                      const std::optional<at::Tensor>& bias, bool relu, bool bias_per_row);

// out[i, r, c] += bias[i, c] (bias[i, r] with bias_per_row), then max(., 0) when relu, in place: out (A,
// rows, cols) contiguous, bias (A, cols) or (A, rows) contiguous, both float32 or both float64. Returns out.
at::Tensor bias_relu_(at::Tensor out, const at::Tensor& bias, bool relu, bool bias_per_row);

// For each alpha i in turn: buffer = lerp(a, b, alphas[i]) (+ bias[i, r] along the rows), clamped at 0 when
// relu, then out[i] = weights[i] @ buffer. The first two layers of a feature-major chain of linear layers
// (lth_sparse.ops.interpolate.cpu_linear_chain): each alpha's activations of the first layer are made in a
// buffer small enough to stay in the caches and consumed there by the second layer's product, instead of
// all alphas' being written out and read back. a, b: (rows, cols) as for lerp_relu_; bias: (A, rows) or
// none; weights: (A, out_rows, rows) contiguous; buffer: (rows, cols) contiguous; out: (A, out_rows, cols)
// contiguous; all of one dtype (float32 or float64). Returns out.
at::Tensor lerp_relu_mm_(at::Tensor out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& alphas,
                         const std::optional<at::Tensor>& bias, bool relu, const at::Tensor& weights,
                         at::Tensor buffer);

}  // namespace cpu
}  // namespace lth_sparse
