// lth_sparse._cuda: the CUDA kernels. The public ops (lth_sparse.ops) check
// their arguments once for every backend and call these for CUDA tensors.
#include <torch/extension.h>

#include <optional>
#include <vector>

namespace lth_sparse {
namespace cuda {
// csrc/cuda/select.cu
at::Tensor kth_smallest(const std::vector<at::Tensor>& tensors, int64_t k);
std::vector<at::Tensor> prune_lowest(const std::vector<at::Tensor>& scores,
                                     const std::optional<std::vector<at::Tensor>>& masks, int64_t k);
}  // namespace cuda
}  // namespace lth_sparse

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lth_sparse CUDA kernels";
  m.def("kth_smallest", &lth_sparse::cuda::kth_smallest, py::arg("tensors"), py::arg("k"),
        "k-th smallest (1-based) value over all elements of a list of floating CUDA tensors, "
        "as a 0-dim tensor; equals torch.cat([t.reshape(-1) for t in tensors]).kthvalue(k).values "
        "without concatenating. NaN sorts above +inf; -0.0 == +0.0.");
  m.def("prune_lowest", &lth_sparse::cuda::prune_lowest, py::arg("scores"), py::arg("masks"), py::arg("k"),
        "New bool masks (shape of each score tensor): among the entries True in masks (all when "
        "None), exactly the k with the smallest score become False; ties break by position "
        "(earlier tensor, then lower flat index).");
  m.def("kernel_info", []() {
    py::dict d;
    d["algorithm"] = "multi-tensor radix select, one launch per pass over all tensors";
    d["digit_bits"] = 11;
    d["passes"] = py::dict(py::arg("float32") = 3, py::arg("float16") = 2, py::arg("bfloat16") = 2,
                           py::arg("float64") = 6);
    d["tile_elements"] = 4096;
    d["threads_per_block"] = 256;
    d["host_syncs"] = "none (prune_lowest with masks: one, to check k against the active count)";
    return d;
  }, "How the CUDA select kernels work: digit width, passes per dtype, tiling.");
}
