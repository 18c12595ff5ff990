"""Global selection across many tensors: ``kth_smallest`` and ``prune_lowest``; and ``prune_lowest_rows``, the
second row by row of one tensor (many small selections at once: a stack's members).

Both work on all tensors at once without concatenating them. Values are ordered
as ``torch.sort`` orders them, -0.0 equal to +0.0; a NaN is refused (a ValueError
naming its tensor: ranked above +inf, it would be kept as the most important
entry), by the checks every backend shares. ``prune_lowest`` breaks ties by
position: an entry of an earlier tensor first, then a lower flat index.

Backends: the C++ CPU kernel (``csrc/cpu/select.cpp``), the CUDA kernel
(``csrc/cuda/select.cu``) and its Triton twin (``lth_sparse/kernels/select.py``),
both opt-in until verified on a GPU, and the torch fallback below: a radix
select on 16-bit digits of an order-preserving integer key, one ``bincount``
per tensor per digit, so no tensor-wide copy is made.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lth_sparse._dispatch import choose_backend, cpp_extension, cuda_extension, triton_kernel
from lth_sparse.ops import _checks

IMPLEMENTED = ("cuda", "triton", "cpp", "torch")

_INT_FOR = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_DIGIT_BITS = 16


def _order_key(t: Tensor) -> Tensor:
    """Signed integer keys whose order is the float order (NaN largest, -0 == +0)."""
    itype = _INT_FOR[t.element_size()]
    bits = t.reshape(-1).view(itype)
    flip = torch.iinfo(itype).max  # flips every bit but the sign: reverses the order of negatives
    key = torch.where(bits < 0, bits ^ flip, bits)
    key = torch.where(key == -1, torch.zeros_like(key), key)  # -0.0 maps to -1: make it +0.0
    return torch.where(torch.isnan(t.reshape(-1)), torch.full_like(key, flip), key)


def _key_to_value(key: int, dtype: torch.dtype, device) -> Tensor:
    itype = _INT_FOR[torch.empty((), dtype=dtype).element_size()]
    bits = key if key >= 0 else key ^ torch.iinfo(itype).max
    return torch.tensor(bits, dtype=itype, device=device).view(dtype).clone()


def _radix_select_key(scores: Sequence[Tensor], masks: Sequence[Tensor] | None, k: int) -> tuple[int, int]:
    """The k-th smallest key among active entries, and how many active keys are strictly below it."""
    nbits = scores[0].element_size() * 8
    device = scores[0].device
    prefix, below = 0, 0
    for shift in range(nbits - _DIGIT_BITS, -1, -_DIGIT_BITS):
        hist = torch.zeros(1 << _DIGIT_BITS, dtype=torch.int64, device=device)
        for i, s in enumerate(scores):
            key = _order_key(s)
            if masks is not None:
                key = key[masks[i].reshape(-1)]
            if shift + _DIGIT_BITS < nbits:
                key = key[(key >> (shift + _DIGIT_BITS)) == prefix]
            digit = (key >> shift).long()
            digit = digit + (1 << (_DIGIT_BITS - 1)) if shift + _DIGIT_BITS == nbits else digit & 0xFFFF
            hist += torch.bincount(digit, minlength=1 << _DIGIT_BITS)
        cumulative = hist.cumsum(0)
        d = int(torch.searchsorted(cumulative, torch.tensor(k - below, device=device)))
        below += int(cumulative[d - 1]) if d > 0 else 0
        top = shift + _DIGIT_BITS == nbits
        prefix = (d - (1 << (_DIGIT_BITS - 1))) if top else (prefix << _DIGIT_BITS) | d
    return prefix, below


def _kth_smallest_torch(tensors: Sequence[Tensor], k: int) -> Tensor:
    key, _ = _radix_select_key(tensors, None, k)
    return _key_to_value(key, tensors[0].dtype, tensors[0].device)


def _prune_lowest_torch(scores: Sequence[Tensor], masks: Sequence[Tensor] | None, k: int) -> list[Tensor]:
    if k == 0:
        return [
            torch.ones_like(s, dtype=torch.bool) if masks is None else masks[i].clone() for i, s in enumerate(scores)
        ]
    threshold, below = _radix_select_key(scores, masks, k)
    ties_to_prune = k - below
    out = []
    for i, s in enumerate(scores):
        key = _order_key(s)
        active = torch.ones_like(key, dtype=torch.bool) if masks is None else masks[i].reshape(-1)
        tie = active & (key == threshold)
        rank = tie.cumsum(0)  # 1-based rank of each tie within this tensor
        prune_tie = tie & (rank <= ties_to_prune)
        ties_to_prune -= int(min(int(rank[-1]) if rank.numel() else 0, ties_to_prune))
        out.append((active & (key >= threshold) & ~prune_tie).reshape(s.shape))
    return out


def _kth_smallest_ext(ext):
    return lambda tensors, k: ext.kth_smallest(list(tensors), k)


def _prune_lowest_ext(ext):
    return lambda scores, masks, k: ext.prune_lowest(list(scores), None if masks is None else list(masks), k)


# Backends without a compiled extension: the Triton kernels are imported on first use.
_KERNELS = {
    "torch": {"kth_smallest": _kth_smallest_torch, "prune_lowest": _prune_lowest_torch},
    "triton": {
        "kth_smallest": triton_kernel("select", "kth_smallest"),
        "prune_lowest": triton_kernel("select", "prune_lowest"),
    },
}


def _kernel(op: str, device) -> object:
    backend = choose_backend(op, device, IMPLEMENTED)
    if backend in _KERNELS:
        return _KERNELS[backend][op]
    ext = cpp_extension() if backend == "cpp" else cuda_extension()
    return _kth_smallest_ext(ext) if op == "kth_smallest" else _prune_lowest_ext(ext)


def _check_kth(tensors, k):
    _checks.check_score_list("tensors", tensors)
    total = sum(t.numel() for t in tensors)
    if total == 0:
        raise ValueError("tensors hold no elements")
    _checks.check_k(k, 1, total, "the number of elements")


@torch.library.custom_op("lth_sparse::kth_smallest", mutates_args=())
def _kth_smallest(tensors: list[Tensor], k: int) -> Tensor:
    _check_kth(tensors, k)
    _checks.check_no_nan("tensors", tensors)  # reads the values: here, not in the fake kernel
    return _kernel("kth_smallest", tensors[0].device)(tensors, k)


@_kth_smallest.register_fake
def _(tensors, k):
    _check_kth(tensors, k)
    return tensors[0].new_empty(())


def _check_prune(scores, masks, k, count_active: bool) -> None:
    _checks.check_score_list("scores", scores)
    if masks is not None:
        _checks.check_mask_list(masks, scores)
    if count_active:
        active = sum(int(m.count_nonzero()) for m in masks) if masks is not None else sum(s.numel() for s in scores)
        _checks.check_k(k, 0, active, "the number of entries still unpruned")
    else:
        _checks.check_k(k, 0, sum(s.numel() for s in scores), "the number of entries")


# The schema has no optional list: an empty ``masks`` list stands for None (all active).
@torch.library.custom_op("lth_sparse::prune_lowest", mutates_args=())
def _prune_lowest(scores: list[Tensor], masks: list[Tensor], k: int) -> list[Tensor]:
    masks = masks or None
    _check_prune(scores, masks, k, count_active=True)
    _checks.check_no_nan("scores", scores, masks)  # reads the values: here, not in the fake kernel
    return _kernel("prune_lowest", scores[0].device)(scores, masks, k)


@_prune_lowest.register_fake
def _(scores, masks, k):
    _check_prune(scores, masks or None, k, count_active=False)
    return [s.new_empty(s.shape, dtype=torch.bool) for s in scores]


def kth_smallest(tensors: Sequence[Tensor], k: int) -> Tensor:
    """The k-th smallest (1-based) value over all elements of ``tensors``, without concatenating them.

    Equal to ``torch.cat([t.reshape(-1) for t in tensors]).kthvalue(k).values``.
    tensors: a non-empty list of floating tensors of one dtype and device (0-size
    tensors allowed); k: 1 <= k <= total elements. Returns a 0-dim tensor.
    A NaN is a ValueError naming its tensor.
    """
    _checks.check_score_list("tensors", tensors)
    _checks.check_int("k", k)
    return _kth_smallest(list(tensors), k)


def prune_lowest(scores: Sequence[Tensor], masks: Sequence[Tensor] | None, k: int) -> list[Tensor]:
    """New bool masks in which exactly the k lowest-scoring still-active entries become False.

    scores: floating tensors of one dtype and device; masks: bool tensors of the
    same shapes, or None (all active). Entries already False stay False. Ties
    break by position: an earlier tensor, then a lower flat index, is pruned
    first. A NaN score of a still-active entry is a ValueError naming its tensor.
    0 <= k <= number of entries still unpruned.
    """
    _checks.check_score_list("scores", scores)
    _checks.check_int("k", k)
    scores = list(scores)
    if masks is not None:
        _checks.check_mask_list(masks, scores)
    return _prune_lowest(scores, [] if masks is None else list(masks), k)


def prune_lowest_rows(scores: Tensor, counts: Sequence[int]) -> Tensor:
    """:func:`prune_lowest` of every row of ``scores`` at once: a bool tensor of ``scores``' shape whose row ``r``
    (``scores[r]``, flattened) has exactly its ``counts[r]`` lowest entries False.

    Row ``r`` equals ``prune_lowest([scores[r]], None, counts[r])[0]``: the same order (``torch.sort``'s, -0.0
    equal to +0.0) and the same ties (a lower flat index is pruned first). Made for many small selections of
    different sizes (the members of a stack, :func:`lth_sparse.prune.edge_popup.edge_popup_together`): one
    ``kthvalue`` per distinct count, plain torch on any device, no custom op. ``scores``: a floating tensor of at
    least one dimension; ``counts``: one integer per row in ``[0, row size]``. A NaN is a ValueError.
    """
    if not isinstance(scores, Tensor) or not scores.is_floating_point() or scores.dim() < 1:
        raise ValueError("scores must be a floating tensor with a leading dimension of rows")
    rows = scores.shape[0]
    flat = scores.reshape(rows, -1)
    n = flat.shape[1]
    counts = list(counts)
    if len(counts) != rows:
        raise ValueError(f"counts must hold one entry per row ({rows}), got {len(counts)}")
    by_count: dict[int, list[int]] = {}  # the rows of each count
    for row, count in enumerate(counts):
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= n:
            raise ValueError(f"counts[{row}] must be an int in [0, {n}] (the entries of a row), got {count!r}")
        by_count.setdefault(count, []).append(row)
    if bool(torch.isnan(flat).any()):
        raise ValueError("scores hold a NaN: it has no rank among the values")
    keep = torch.ones(flat.shape, dtype=torch.bool, device=flat.device)
    for count, members in by_count.items():
        if count == 0:
            continue
        whole = len(members) == rows
        index = None if whole else torch.tensor(members, device=flat.device)
        sub = flat if whole else flat.index_select(0, index)
        threshold = sub.kthvalue(count, dim=1, keepdim=True).values  # the largest value pruned
        kept = sub > threshold
        tie = sub == threshold
        if bool((tie.sum(1) > 1).any()):  # equal values at the threshold: the lowest-index ones are pruned first
            ties_to_prune = count - (sub < threshold).sum(1, keepdim=True)
            kept |= tie & (tie.cumsum(1) > ties_to_prune)
        if whole:
            keep = kept
        else:
            keep.index_copy_(0, index, kept)
    return keep.view(scores.shape)
