// lth_sparse._C: the C++ CPU kernels. The public ops (lth_sparse.ops) check
// their arguments once for every backend and call these for CPU tensors.
#include <torch/extension.h>

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
    return d;
  }, "What the CPU kernels were built with and use: OpenMP, threads, select parameters.");
}
