// Host side shared by the two global-select kernels, csrc/cpu/select.cpp and
// csrc/cuda/select.cu: the checks of their arguments, the dispatch over the
// score dtypes, and prune_lowest's output masks. Each kernel keeps its own
// layout of the inputs (CPU chunks, CUDA tiles); what is here reads only what
// both layouts have: `segments` (each with the `out` pointer of its tensor's
// output mask), `segment_of_input` (-1 for a 0-size tensor) and `total`.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace lth_sparse {
namespace select_host {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// `tensors` (named `name` in errors): non-empty, one supported floating dtype, all on one device of
// type `device_type`; `expected` says what the kernel takes ("a CPU tensor for the C++ CPU kernel").
inline void check_scores(const std::vector<at::Tensor>& tensors, const char* op, const char* name,
                         at::DeviceType device_type, const char* expected) {
  TORCH_CHECK(!tensors.empty(), op, ": ", name, " must be a non-empty list of tensors");
  const at::ScalarType dtype = tensors[0].scalar_type();
  TORCH_CHECK(is_supported_float(dtype), op, ": ", name,
              " must be float32, float64, float16 or bfloat16, got ", dtype);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.defined(), op, ": ", name, "[", i, "] is undefined");
    TORCH_CHECK(t.device().type() == device_type, op, ": ", name, "[", i, "] must be ", expected,
                ", got device ", t.device());
    TORCH_CHECK(t.device() == tensors[0].device(), op, ": all ", name, " must be on one device; ", name, "[",
                i, "] is on ", t.device(), " but ", name, "[0] is on ", tensors[0].device());
    TORCH_CHECK(t.scalar_type() == dtype, op, ": all ", name, " must share one dtype; ", name, "[", i,
                "] is ", t.scalar_type(), " but ", name, "[0] is ", dtype);
  }
}

// prune_lowest's masks: one bool mask per score tensor, of its shape, on its device.
inline void check_masks(const std::vector<at::Tensor>& scores, const std::vector<at::Tensor>& masks) {
  TORCH_CHECK(masks.size() == scores.size(), "prune_lowest: masks must hold one mask per score tensor, got ",
              masks.size(), " masks for ", scores.size(), " score tensors");
  for (size_t i = 0; i < scores.size(); ++i) {
    const at::Tensor& m = masks[i];
    TORCH_CHECK(m.defined(), "prune_lowest: masks[", i, "] is undefined");
    TORCH_CHECK(m.scalar_type() == at::kBool, "prune_lowest: masks[", i, "] must be bool, got ",
                m.scalar_type());
    TORCH_CHECK(m.sizes() == scores[i].sizes(), "prune_lowest: masks[", i,
                "] must have the shape of scores[", i, "] ", scores[i].sizes(), ", got ", m.sizes());
    TORCH_CHECK(m.device() == scores[i].device(), "prune_lowest: masks[", i, "] is on ", m.device(),
                " but scores[", i, "] is on ", scores[i].device());
  }
}

// kth_smallest's k: 1-based, at most the `total` number of elements.
inline void check_kth(int64_t k, int64_t total, const char* op) {
  TORCH_CHECK(k >= 1 && k <= total, op, ": k must be in [1, ", total,
              "] (1-based, at most the total number of elements), got k=", k);
}

// prune_lowest's k: from 0 to the `total` number of entries the layout holds (the active entries are
// counted, and checked against k, by the select itself).
inline void check_prune_count(int64_t k, int64_t total) {
  TORCH_CHECK(k >= 0, "prune_lowest: k must be >= 0, got k=", k);
  TORCH_CHECK(k <= total, "prune_lowest: k=", k, " is above the number of active (unpruned) entries (at most ",
              total, ")");
}

// f(scalar_t{}) for the score dtype `t`: float, double, at::Half or at::BFloat16.
template <typename F>
void dispatch_float(at::ScalarType t, const F& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default: TORCH_CHECK(false, "unsupported dtype ", t);
  }
}

// prune_lowest's result, one bool mask per score tensor, of its shape and device. With k == 0 (nothing
// to prune) they are complete: contiguous copies of `masks`, or all True. Otherwise they are uninitialised
// and each non-empty tensor's segment of `layout` gets its mask's data as `out`, for the kernel to write.
template <typename Layout>
std::vector<at::Tensor> new_masks(const std::vector<at::Tensor>& scores,
                                  const std::optional<std::vector<at::Tensor>>& masks, int64_t k,
                                  Layout& layout) {
  std::vector<at::Tensor> out;
  out.reserve(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) {
    const auto options = scores[i].options().dtype(at::kBool);
    if (k == 0) {
      out.push_back(masks.has_value() ? (*masks)[i].clone(at::MemoryFormat::Contiguous)
                                      : at::ones(scores[i].sizes(), options));
      continue;
    }
    out.push_back(at::empty(scores[i].sizes(), options));
    if (layout.segment_of_input[i] >= 0)
      layout.segments[layout.segment_of_input[i]].out = static_cast<uint8_t*>(out.back().data_ptr());
  }
  return out;
}

}  // namespace select_host
}  // namespace lth_sparse
