// Masked-weight products on the CPU: the mask applied without torch's slow
// bool kernels, and sparse (CSR/CSC) products for highly pruned weights.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace lth_sparse {
namespace cpu {

// Whether the masked kernels run their AVX2+FMA versions on this CPU.
bool masked_kernels_use_avx2();

// weight with its pruned entries (mask False) replaced by +0.0: torch.where(mask, weight, 0).
at::Tensor apply_mask(const at::Tensor& weight, const at::Tensor& mask);

// Whether t holds +0.0 (all-zero bits) wherever mask is False: then t is its own masked weight.
// One read pass that stops at the first pruned nonzero; false for non-contiguous tensors.
bool pruned_are_zero(const at::Tensor& t, const at::Tensor& mask);

// Sets t's entries to +0.0 where mask is False, in place (bumping t's version counter); returns t.
at::Tensor zero_pruned_(at::Tensor t, const at::Tensor& mask);

// x.t().contiguous() for a 2-D x of any strides (float32 in 8 x 8 register blocks).
at::Tensor transpose_2d(const at::Tensor& x);

// The index structure of a bool mask seen as a matrix (size(0) x the rest), int32:
// {row_ptr (rows+1), col_idx (nnz), col_ptr (cols+1), row_idx (nnz)}: CSR and
// CSC of the True entries, indices ascending within a row and within a column.
std::vector<at::Tensor> mask_structure(const at::Tensor& mask);

// The products of a sparse masked layer. Operands are 3-D views (rows, N, P)
// of "column space" (N, P): a linear layer's batch is (1, B), a conv's unfolded
// positions are (N, H_out * W_out). The last dimension of x and g must be
// contiguous; out may have any strides, so results land in the layout the
// caller needs. The sparse matrix is the structure (ptr, idx) over the dense
// weight W (seen as size(0) x the rest), whose values are read in place: CSR
// for W*M, or CSC with transposed = true for (W*M)^T.
//
//   spmm_(out, weight, ptr, idx, x, bias, transposed)
//                                          out = S x + bias[:, None], S = W*M or (W*M)^T, sparse
//   sddmm(row_ptr, col_idx, g, x)          (g x^T) * M as a dense (rows x cols) tensor, zero where
//                                          pruned, computed at the unpruned entries only
void spmm_(at::Tensor out, const at::Tensor& weight, const at::Tensor& ptr, const at::Tensor& idx,
           const at::Tensor& x, const std::optional<at::Tensor>& bias, bool transposed);
at::Tensor sddmm(const at::Tensor& row_ptr, const at::Tensor& col_idx, const at::Tensor& g,
                 const at::Tensor& x);

}  // namespace cpu
}  // namespace lth_sparse
