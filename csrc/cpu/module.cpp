// lth_sparse._C: the C++ CPU kernels. The public ops (lth_sparse.ops) check
// their arguments once for every backend and call these for CPU tensors.
#include <torch/extension.h>

#include "cpu/mask_cache.h"
#include "cpu/masked.h"
#include "cpu/masked_autograd.h"
#include "cpu/path.h"
#include "cpu/select.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lth_sparse C++ CPU kernels";
  m.def("kth_smallest", &lth_sparse::cpu::kth_smallest, py::arg("tensors"), py::arg("k"),
        "k-th smallest (1-based) value over all elements of a list of floating CPU tensors, "
        "as a 0-dim tensor; equals torch.cat([t.reshape(-1) for t in tensors]).kthvalue(k).values "
        "without concatenating. NaN sorts above +inf; -0.0 == +0.0.");
  m.def("prune_lowest", &lth_sparse::cpu::prune_lowest, py::arg("scores"), py::arg("masks"),
        py::arg("k"),
        "New bool masks (shape of each score tensor): among the entries True in masks (all when "
        "None), exactly the k with the smallest score become False; ties break by position "
        "(earlier tensor, then lower flat index).");
  m.def("_kth_smallest_radix", &lth_sparse::cpu::kth_smallest_radix, py::arg("tensors"), py::arg("k"),
        "kth_smallest by exact radix passes only (the fallback path of kth_smallest; for tests).");
  m.def("apply_mask", &lth_sparse::cpu::apply_mask, py::arg("weight"), py::arg("mask"),
        "torch.where(mask, weight, 0) for a bool mask of the weight's shape, computed on the raw bits.");
  m.def("pruned_are_zero", &lth_sparse::cpu::pruned_are_zero, py::arg("t"), py::arg("mask"),
        "Whether t holds +0.0 (all-zero bits) wherever mask is False (one read pass, stops early).");
  m.def("zero_pruned_", &lth_sparse::cpu::zero_pruned_, py::arg("t"), py::arg("mask"),
        "Sets t to +0.0 where mask is False, in place; returns t.");
  m.def("lerp_relu_", &lth_sparse::cpu::lerp_relu_, py::arg("out"), py::arg("a"), py::arg("b"), py::arg("alphas"),
        py::arg("bias"), py::arg("relu"),
        "out[i] = torch.lerp(a, b, alphas[i]) (+ bias[i]), clamped at 0 when relu, in one pass: a, b (rows, cols) "
        "with a unit column stride and equal strides, out (A, rows, cols) and bias (A, cols) or None contiguous, "
        "all float32 or all float64.");
  m.def("bias_relu_", &lth_sparse::cpu::bias_relu_, py::arg("out"), py::arg("bias"), py::arg("relu"),
        "out[i] += bias[i], clamped at 0 when relu, in place: out (A, rows, cols), bias (A, cols), contiguous.");
  m.def("transpose_2d", &lth_sparse::cpu::transpose_2d, py::arg("x"),
        "x.t().contiguous() for a 2-D CPU tensor, blocked (float32: 8 x 8 AVX2 register transposes).");
  m.def("mask_structure", &lth_sparse::cpu::mask_structure, py::arg("mask"),
        "[row_ptr, col_idx, col_ptr, row_idx] (int32): CSR and CSC of the True entries of "
        "mask seen as (size(0), rest).");
  m.def("spmm_", &lth_sparse::cpu::spmm_, py::arg("out"), py::arg("weight"), py::arg("ptr"), py::arg("idx"),
        py::arg("x"), py::arg("bias"), py::arg("transposed") = false,
        "out (rows, N, P) = S x + bias, S the sparse matrix of the structure (ptr, idx) over the "
        "contiguous weight (its CSR), or over its transpose (CSC, transposed=True); x is (cols, N, P), "
        "contiguous in P; out may have any strides.");
  m.def("sddmm", &lth_sparse::cpu::sddmm, py::arg("row_ptr"), py::arg("col_idx"), py::arg("g"), py::arg("x"),
        "(g x^T) * M as a dense (rows, cols) tensor, computed at the unpruned entries only; "
        "g is (rows, N, P), x is (cols, N, P), both contiguous in P.");
  m.def("masked_linear_dense", &lth_sparse::cpu::masked_linear_dense, py::arg("input"), py::arg("weight"),
        py::arg("mask"), py::arg("bias"),
        "F.linear(input, weight * mask, bias), weight gradient masked: dense GEMMs, backward in C++.");
  m.def("masked_linear_auto", &lth_sparse::cpu::masked_linear_auto, py::arg("input"), py::arg("weight"),
        py::arg("mask"), py::arg("bias"), py::arg("max_density"), py::arg("gemv_max_density"),
        py::arg("min_dense_work"), py::arg("small_dense_work"), py::arg("small_min_columns"), py::arg("allow_plain"),
        "The plain-eager CPU masked_linear in one call (checks, path choice, mask cache), or None for "
        "arguments it does not take (the caller's Python checks then name the fault).");
  m.def("takes_sparse_path",
        [](const at::Tensor& weight, const at::Tensor& mask, int64_t columns, double max_density,
           double gemv_max_density, int64_t min_dense_work, int64_t small_dense_work, int64_t small_min_columns,
           std::optional<double> fixed_max_density) {
          return lth_sparse::cpu::takes_sparse_path(
              weight, mask, columns,
              {max_density, gemv_max_density, min_dense_work, small_dense_work, small_min_columns},
              fixed_max_density);
        },
        py::arg("weight"), py::arg("mask"), py::arg("columns"), py::arg("max_density"), py::arg("gemv_max_density"),
        py::arg("min_dense_work"), py::arg("small_dense_work"), py::arg("small_min_columns"),
        py::arg("fixed_max_density") = py::none(),
        "Whether the CPU masked layer takes its sparse path (the rule masked_linear_auto applies; "
        "fixed_max_density replaces a linear layer's thresholds, as for convs).");
  m.def("mask_kept", [](const at::Tensor& mask) { return lth_sparse::cpu::mask_state(mask, false).kept; },
        py::arg("mask"), "The number of True entries of a bool CPU mask (cached per mask content, see mask_cache.h).");
  m.def("cached_mask_structure",
        [](const at::Tensor& mask) { return lth_sparse::cpu::mask_state(mask, true).structure; },
        py::arg("mask"), "mask_structure(mask), built once per mask content and cached on the mask.");
  m.def("mask_cache_entry", &lth_sparse::cpu::mask_cache_entry, py::arg("mask"),
        "(kept, structure built) of the cache's entry for mask if it matches the mask's bytes, or None (for tests).");
  m.def("mask_cache_stats", []() {
    const auto s = lth_sparse::cpu::mask_cache_stats();
    py::dict d;
    d["entries"] = s.entries;
    d["structures_built"] = s.structures_built;
    d["counts"] = s.counts;
    return d;
  }, "The mask cache: entries alive (each freed with its mask), and structures built and masks counted since "
     "the process started.");
  m.def("storage_use_count", [](const at::Tensor& t) { return t.storage().use_count(); }, py::arg("t"),
        "How many references t's storage has: the tensors sharing it (views included) and the Python "
        "storage objects alive.");
  m.def("kernel_info", []() {
    const auto info = lth_sparse::cpu::kernel_info();
    py::dict d;
    d["openmp"] = info.openmp;
    d["threads"] = info.threads;
    d["simd"] = info.avx2 ? "avx2" : "portable";
    d["sample_size"] = info.sample_size;
    d["chunk_elements"] = info.chunk_elements;
    d["radix_bits"] = info.radix_bits;
    d["algorithm"] = "sampled pivot pair + one counting/collecting pass (radix passes if the sample missed)";
    d["masked_simd"] = lth_sparse::cpu::masked_kernels_use_avx2() ? "avx2+fma" : "portable";
    return d;
  }, "What the CPU kernels were built with and use: OpenMP, threads, select parameters.");
}
