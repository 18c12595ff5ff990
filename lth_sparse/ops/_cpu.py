"""The C++ CPU backend of ``masked_linear`` and ``masked_conv2d``: dense or sparse, by measurement.

Two paths, both exact (the same sums as the reference, up to float rounding):

- **dense**: the GEMM (MKL / oneDNN) on the masked weight, with the mask
  applied by ``_C.apply_mask`` and the weight gradient masked by
  ``_C.zero_pruned_``, several times faster than torch's bool ``where`` /
  ``masked_fill`` that would otherwise cost as much as a small GEMM;
- **sparse**: above a sparsity threshold, the products of the layer use the
  mask's CSR/CSC structure (``csrc/cpu/masked.cpp``): the forward and the
  input gradient do one multiply-add per unpruned weight per example, and the
  weight gradient is computed at the unpruned entries only. A conv layer goes
  through its GEMM: ``F.unfold`` (in chunks of the batch, so the columns stay
  under ``_UNFOLD_BYTES``) and ``F.fold`` for the input gradient.

The count and the structure of a mask are computed once per mask content and
cached on the mask tensor (in C++, ``csrc/cpu/mask_cache.cpp``) with a copy of its
bytes, which every lookup compares with the mask (one ``memcmp``: ~7 us on LeNet's
784x300 fc1, ~1.5% of its forward + backward at batch 60): a mask may be changed any way, through torch
(``copy_``, indexing, ``set_mask``, ``load_state_dict``) or behind its back
(``mask.data.copy_(...)``, a numpy view, a collective), and the next call sees
it. An entry is freed with its mask.

When the sparse path is taken is decided per call by :func:`use_sparse`, from
the layer's density and the multiply-adds of its dense product; the constants
below are the crossovers measured by ``bench/bench_masked_cpu.py`` on a
2-core AMD EPYC (float32, forward + backward).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lth_sparse._dispatch import cpp_extension, register_cpp_report
from lth_sparse.ops._checks import conv_output_size

# The sparse path of a linear layer is taken at or below this density (fraction of weights kept) ...
MAX_DENSITY = 0.25
# ... and of a conv layer at or below this one; None: never chosen by itself (measured slower than
# oneDNN's dense conv at every sparsity up to 99% on Conv-4 layers, see bench/bench_masked_cpu.py:
# unfolding and folding the input cost more than the multiply-adds saved). Still run when forced.
CONV_MAX_DENSITY: float | None = None
# ... and only when the dense product has at least this many multiply-adds. Small layers gain too:
# at 80-95% sparsity the sparse path measured 0.67-0.89x the dense path's time on 100->10 and
# 300->100 at batch 60 and 128, and 64->32 at batch 8 (the dense path's mask passes and GEMM calls
# cost more than the few multiply-adds); below this there is nothing left to save.
MIN_DENSE_WORK = 1 << 12
# A linear layer at batch 1 (one column: a matrix-vector product, which the dense path does in one
# read of the weight and the sparse path cannot vectorize over the batch) takes the sparse path only
# at or below this density: at 10-25% density it measured 1.1-1.9x the dense path's time on 784->300
# and 1024x1024, at 2-5% 0.77-1.00x ...
GEMV_MAX_DENSITY = 0.05
# ... and a tiny product (at most SMALL_DENSE_WORK multiply-adds over at least SMALL_MIN_COLUMNS
# columns) at any density: the dense path's fixed costs (the masked weight's check, the gradient's
# mask pass, GEMM calls) then outweigh the multiply-adds saved; 100->10 at batch 8-60 and 64->32 at
# batch 8 measured 0.84-0.91x the dense path's time at 30-99% density, 64->32 at batch 60 0.86-1.01x.
SMALL_DENSE_WORK = 1 << 17
SMALL_MIN_COLUMNS = 8
# The path held by ``held_on`` ("auto": none).
_HELD = "auto"
# The conv path unfolds at most this many bytes of columns at once.
_UNFOLD_BYTES = 64 << 20


class Structure(NamedTuple):
    """CSR and CSC of a mask seen as (size(0), rest), int32 (see ``_C.mask_structure``)."""

    row_ptr: Tensor
    col_idx: Tensor
    col_ptr: Tensor
    row_idx: Tensor


def density(mask: Tensor) -> float:
    """Fraction of True entries of ``mask`` (its count cached with the structure)."""
    return cpp_extension().mask_kept(mask) / max(1, mask.numel())


def structure(mask: Tensor) -> Structure:
    """The CSR/CSC structure of ``mask``, built once per mask content (``_C.cached_mask_structure``)."""
    return Structure(*cpp_extension().cached_mask_structure(mask))


def cached_entry(mask: Tensor) -> tuple[int, bool] | None:
    """(True entries, structure built) of the mask cache's entry for ``mask`` if it matches the mask's bytes,
    else None (for tests)."""
    return cpp_extension().mask_cache_entry(mask)


def use_sparse(weight: Tensor, mask: Tensor, columns: int, max_density: float | None = None) -> bool:
    """Whether the sparse path is the faster one for this weight, mask and batch (``columns`` products per weight).

    float32/float64 only, never below ``MIN_DENSE_WORK`` multiply-adds, and at density at most
    ``max_density`` when given (convs), else a linear layer's threshold: ``GEMV_MAX_DENSITY`` at
    batch 1, any density for a tiny product (``SMALL_DENSE_WORK``, ``SMALL_MIN_COLUMNS``),
    ``MAX_DENSITY`` otherwise. The rule is ``_C.takes_sparse_path``, which the plain-eager linear
    layer (``_C.masked_linear_auto``) applies too.
    """
    return cpp_extension().takes_sparse_path(weight, mask, columns, *_policy_args(), max_density)


def _policy_args() -> tuple[float, float, int, int, int]:
    """The linear layers' constants, in ``_C.takes_sparse_path``'s order."""
    return MAX_DENSITY, GEMV_MAX_DENSITY, MIN_DENSE_WORK, SMALL_DENSE_WORK, SMALL_MIN_COLUMNS


def policy() -> dict:
    """The constants that choose the sparse path now (for reports: ``backend_info``, the benchmarks)."""
    return {
        "max_density": MAX_DENSITY,
        "gemv_max_density": GEMV_MAX_DENSITY,
        "min_dense_work": MIN_DENSE_WORK,
        "small_dense_work": SMALL_DENSE_WORK,
        "small_min_columns": SMALL_MIN_COLUMNS,
        "conv_max_density": CONV_MAX_DENSITY,
    }


register_cpp_report("cpu_sparse_policy", policy)


def nothing_pruned(mask: Tensor) -> bool:
    """Whether every entry of ``mask`` is True (its count cached with the structure): the layer is then exactly
    the dense one (IMP's first round trains such layers), and runs as torch's own, mask untouched.
    Never while :func:`held_on` holds a path (the benchmarks time the paths themselves at 0%)."""
    return _HELD == "auto" and cpp_extension().mask_kept(mask) == mask.numel()


@contextlib.contextmanager
def held_on(path: str):
    """Within the block, the C++ backend takes one path whatever the policy says: ``"sparse"``
    (linear and conv, any size and density; float32/float64), ``"dense"``, or ``"auto"`` (the policy).
    Held on a path, a mask with nothing pruned runs that path too, not torch's dense layer.
    For benchmarks and tests; the module constants are restored on exit."""
    global MAX_DENSITY, MIN_DENSE_WORK, CONV_MAX_DENSITY, GEMV_MAX_DENSITY, SMALL_DENSE_WORK, _HELD
    if path not in ("auto", "dense", "sparse"):
        raise ValueError(f"path must be 'auto', 'dense' or 'sparse', got {path!r}")
    saved = MAX_DENSITY, MIN_DENSE_WORK, CONV_MAX_DENSITY, GEMV_MAX_DENSITY, SMALL_DENSE_WORK, _HELD
    _HELD = path
    if path == "sparse":
        MAX_DENSITY, MIN_DENSE_WORK, CONV_MAX_DENSITY, GEMV_MAX_DENSITY = 1.0, 0, 1.0, 1.0
    elif path == "dense":
        MAX_DENSITY, CONV_MAX_DENSITY, GEMV_MAX_DENSITY, SMALL_DENSE_WORK = -1.0, None, -1.0, -1
    try:
        yield
    finally:
        MAX_DENSITY, MIN_DENSE_WORK, CONV_MAX_DENSITY, GEMV_MAX_DENSITY, SMALL_DENSE_WORK, _HELD = saved


def _has_mask_kernel(t: Tensor) -> bool:
    """Whether the C++ mask kernels take t's dtype (16, 32 and 64-bit floats; not float8)."""
    return t.element_size() in (2, 4, 8)


def _apply_mask(weight: Tensor, mask: Tensor) -> Tensor:
    """``torch.where(mask, weight, 0)``; ``weight`` itself when it already holds +0.0 at every pruned
    entry (a masked layer's weight after every optimizer step): the same bits, without forming a
    copy that the GEMM would then read (~60 us on a 784x300 layer, against ~10 us for the check)."""
    if not _has_mask_kernel(weight):
        return torch.where(mask, weight, 0)
    C = cpp_extension()
    return weight if C.pruned_are_zero(weight, mask) else C.apply_mask(weight, mask)


def zero_pruned_(t: Tensor, mask: Tensor) -> Tensor:
    """Set ``t`` to +0.0 where ``mask`` is False, in place; returns ``t``: ``t.masked_fill_(~mask, 0)``.

    t: any shape and dtype; mask: bool, ``t``'s shape, on ``t``'s device. Exported as
    :func:`lth_sparse.ops.zero_pruned_` (the masked layers and their optimizer hook zero pruned
    weights and optimizer state with it). On the CPU it runs ``_C.zero_pruned_`` (10x faster than
    ``masked_fill_`` on a 784x300 weight: 18 us against 210 us) for 16, 32 and 64-bit floats;
    otherwise ``masked_fill_``. Both bump ``t``'s version counter, so autograd sees the change.
    Raises TypeError for a mask that is not bool, ValueError for a shape mismatch, RuntimeError
    for tensors on two devices.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if mask.shape != t.shape:
        raise ValueError(f"mask must have the shape of t {tuple(t.shape)}, got {tuple(mask.shape)}")
    if (
        t.device.type == "cpu"
        and mask.device.type == "cpu"
        and t.is_floating_point()
        and _has_mask_kernel(t)
        and cpp_extension() is not None
    ):
        return cpp_extension().zero_pruned_(t, mask)
    return t.masked_fill_(~mask, 0)


def _absent(like: Tensor) -> Tensor:
    """A gradient that was not asked for (a fresh tensor each: custom-op outputs may not alias)."""
    return like.new_empty(0)


# ---------------------------------------------------------------------------
# linear


def linear_forward(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None) -> Tensor:
    C = cpp_extension()
    out_features, in_features = weight.shape
    x = input.reshape(input.shape[:-1].numel(), in_features)
    if not use_sparse(weight, mask, x.shape[0]):
        return F.linear(input, _apply_mask(weight, mask), bias)
    s = structure(mask)
    out = input.new_empty(x.shape[0], out_features)
    xt = C.transpose_2d(x).unsqueeze(1)
    C.spmm_(
        out.t().unsqueeze(1), weight.contiguous(), s.row_ptr, s.col_idx, xt, None if bias is None else bias.contiguous()
    )
    return out.reshape(*input.shape[:-1], out_features)


def linear_auto(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None) -> Tensor | None:
    """The plain-eager layer in one C++ call (``_C.masked_linear_auto``): its checks, this module's
    policy, the mask cache and the extension's C++ autograd nodes (no Python in the backward,
    the masked weight or the transposed input kept from the forward), or ``F.linear`` itself when
    nothing is pruned. None for arguments it does not take (not CPU tensors, a dtype, shape or
    layout that is off, float8): the caller then runs the Python path, whose checks name the fault."""
    return cpp_extension().masked_linear_auto(input, weight, mask, bias, *_policy_args(), _HELD == "auto")


def linear_backward(grad, input, weight, mask, need_input, need_weight, need_bias):
    C = cpp_extension()
    out_features, in_features = weight.shape
    rows = grad.shape[:-1].numel()
    g = grad.reshape(rows, out_features)
    grad_bias = g.sum(0) if need_bias else _absent(grad)
    if not use_sparse(weight, mask, rows):
        grad_input = grad_weight = None
        if need_input:
            grad_input = g.matmul(_apply_mask(weight, mask)).reshape(input.shape)
        if need_weight:
            grad_weight = zero_pruned_(g.t().matmul(input.reshape(rows, in_features)), mask)
        return (
            _absent(grad) if grad_input is None else grad_input,
            _absent(grad) if grad_weight is None else grad_weight,
            grad_bias,
        )
    s = structure(mask)
    gt = C.transpose_2d(g).unsqueeze(1)
    grad_input, grad_weight = _absent(grad), _absent(grad)
    if need_input:
        grad_input = grad.new_empty(rows, in_features)
        C.spmm_(grad_input.t().unsqueeze(1), weight.contiguous(), s.col_ptr, s.row_idx, gt, None, True)
        grad_input = grad_input.reshape(input.shape)
    if need_weight:
        xt = C.transpose_2d(input.reshape(rows, in_features)).unsqueeze(1)
        grad_weight = C.sddmm(s.row_ptr, s.col_idx, gt, xt)
    return grad_input, grad_weight, grad_bias


# ---------------------------------------------------------------------------
# conv2d (groups == 1 on the sparse path): the GEMM of the unfolded input


def _conv_chunks(input: Tensor, weight: Tensor, positions: int):
    """Slices of the batch whose unfolded columns fit in ``_UNFOLD_BYTES``."""
    per_example = max(1, weight[0].numel() * positions * input.element_size())
    size = max(1, _UNFOLD_BYTES // per_example)
    for start in range(0, input.shape[0], size):
        yield slice(start, min(input.shape[0], start + size))


def _conv_sparse(weight: Tensor, mask: Tensor, groups: int, batch: int, positions: int) -> bool:
    return (
        groups == 1 and CONV_MAX_DENSITY is not None and use_sparse(weight, mask, batch * positions, CONV_MAX_DENSITY)
    )


def conv2d_forward(input, weight, mask, bias, stride, padding, dilation, groups):
    C = cpp_extension()
    out_h, out_w = conv_output_size(input, weight, stride, padding, dilation)
    batched = input if input.dim() == 4 else input.unsqueeze(0)
    if not _conv_sparse(weight, mask, groups, batched.shape[0], out_h * out_w):
        return F.conv2d(input, _apply_mask(weight, mask), bias, stride, padding, dilation, groups)
    s = structure(mask)
    w = weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    out = batched.new_empty(batched.shape[0], weight.shape[0], out_h * out_w)
    for chunk in _conv_chunks(batched, weight, out_h * out_w):
        cols = F.unfold(batched[chunk], weight.shape[2:], dilation, padding, stride)  # (n, K, P)
        C.spmm_(out[chunk].transpose(0, 1), w, s.row_ptr, s.col_idx, cols.transpose(0, 1), bias)
    out = out.view(batched.shape[0], weight.shape[0], out_h, out_w)
    return out if input.dim() == 4 else out.squeeze(0)


def conv2d_backward(grad, input, weight, mask, stride, padding, dilation, groups, need_input, need_weight, need_bias):
    C = cpp_extension()
    unbatched = input.dim() == 3
    if unbatched:
        grad, input = grad.unsqueeze(0), input.unsqueeze(0)
    grad_bias = grad.sum((0, 2, 3)) if need_bias else _absent(grad)
    positions = grad.shape[2] * grad.shape[3]
    if not _conv_sparse(weight, mask, groups, input.shape[0], positions):
        grad_input, grad_weight = _absent(grad), _absent(grad)
        if need_input:
            grad_input = torch.nn.grad.conv2d_input(
                input.shape, _apply_mask(weight, mask), grad, stride, padding, dilation, groups
            )
        if need_weight:
            grad_weight = zero_pruned_(
                torch.nn.grad.conv2d_weight(input, weight.shape, grad, stride, padding, dilation, groups), mask
            )
    else:
        s = structure(mask)
        g = grad.contiguous().view(grad.shape[0], grad.shape[1], positions)
        grad_input = input.new_empty(input.shape) if need_input else _absent(grad)
        grad_weight = None
        w = weight.contiguous()
        for chunk in _conv_chunks(input, weight, positions):
            g_cols = g[chunk].transpose(0, 1)  # (C_out, n, P)
            if need_weight:
                cols = F.unfold(input[chunk], weight.shape[2:], dilation, padding, stride)
                part = C.sddmm(s.row_ptr, s.col_idx, g_cols, cols.transpose(0, 1))
                grad_weight = part if grad_weight is None else grad_weight.add_(part)
            if need_input:
                cols = input.new_empty(g_cols.shape[1], weight[0].numel(), positions)
                C.spmm_(cols.transpose(0, 1), w, s.col_ptr, s.row_idx, g_cols, None, True)
                grad_input[chunk] = F.fold(cols, input.shape[2:], weight.shape[2:], dilation, padding, stride)
        if need_weight:
            grad_weight = torch.zeros_like(weight) if grad_weight is None else grad_weight.view(weight.shape)
        else:
            grad_weight = _absent(grad)
    if unbatched and need_input:
        grad_input = grad_input.squeeze(0)
    return grad_input, grad_weight, grad_bias
