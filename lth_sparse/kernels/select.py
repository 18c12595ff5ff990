"""Triton kernels of the global selection ops: ``kth_smallest`` and ``prune_lowest`` over many tensors at once.

The Triton twin of ``csrc/cuda/select.cu``: the same contract, key order, tiles and passes. Nothing is
concatenated; every pass covers all tensors in one launch.

Keys. Each float's bits become an unsigned integer of the same width whose order is the float order:
``2^(W-1) | bits`` for x >= 0 and for -0.0, the bits' ones' complement for x < 0 (``2^(W-1) - 1 -
magnitude``), so -0.0 and +0.0 share a key; every NaN, whatever its sign and payload, maps to ``2^W -
1``, above +inf (the order of ``torch.sort`` / ``kthvalue``). Bit operations only (the CUDA kernel's
``2^(W-1) - magnitude`` orders alike); keys live in uint32 registers (uint64 for float64).

Table. The tensors are described by an int64 table with a row per non-empty tensor and a column per
field: the address of its scores, of its mask (0 without masks), of its output mask, its numel, and
its first tile. The addresses are ``data_ptr()`` values that a kernel turns back into typed pointers
(``int64.to(tl.pointer_type(tl.uint32))``), so five arguments stand for any number of tensors; this
works alike on a GPU and under ``TRITON_INTERPRET=1``, where CPU addresses are real addresses. The
columns and the select state go to the device in one copy. The global index space is cut into tiles
of ``BLOCK`` elements that never straddle a tensor, numbered in position order; each program walks
the tiles (program-stride) and finds a tile's tensor by binary search over the first-tile column.

Select: radix select on 11-bit digits, most significant first (float32: 3 passes of 11, 11, 10 bits;
float16/bfloat16: 2; float64: 6). A histogram pass counts (``tl.histogram``: shared-memory atomics on
a GPU) the digit of every active key whose higher digits match the prefix chosen so far, sums a
program's tiles in registers and adds that to a global histogram; a one-program kernel then scans it
and moves the prefix, the rank left and the count below in the state, on the device: no host
synchronisation between passes.

prune_lowest: after the select, the state holds the threshold key T and the number ``need`` of its
ties (active keys == T) to prune; ties go in position order. A pass counts the ties per tile (it
reads nothing when all ties go, the usual case with continuous scores), a cumulative sum over the
tiles gives each tile the ties before it, and the write pass keeps the active keys > T and the ties
whose rank (the ties before the tile plus ``tl.cumsum`` inside it) is above ``need``. One kernel,
``_tiles_kernel``, makes the histogram, tie-count and write passes (its ``PASS``), so the tile code
is written once. Reads of the scores: float32 3 (+ 1 for prune_lowest's write pass, + 1 when some
ties stay), float16/bfloat16 2 (+ 1, + 1), float64 6 (+ 1, + 1); masks, when given, are read with
them. The masked ``prune_lowest`` synchronises once, at the end, to report a k above the number of
active entries (as the CUDA kernel does).

Full tiles are loaded and stored without a bounds mask, so that they move as 16-byte vectors when
every address in the table is 16-byte aligned (the usual case; else an unaligned variant is
compiled). Tile offsets are 64-bit: one tensor may pass 2**31 elements.

On a GPU: 4096-element tiles, 8 warps, 4 programs per SM. Under ``TRITON_INTERPRET=1`` (set before
this module is imported): 1024-element tiles and 2 programs, so that test inputs of a few thousand
elements span several tiles, tensors and programs. The interpreter's cost is per operation and per
nested ``@triton.jit`` call, not per element, hence one kernel with the tile code inline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from lth_sparse.kernels._tiles import check_device

_DIGIT_BITS = 11
_BINS = 1 << _DIGIT_BITS

# dtype: (key bits, +inf bits, the signed int dtype of that width)
_FORMATS = {
    torch.float16: (16, 0x7C00, torch.int16),
    torch.bfloat16: (16, 0x7F80, torch.int16),
    torch.float32: (32, 0x7F800000, torch.int32),
    torch.float64: (64, 0x7FF0000000000000, torch.int64),
}

# The select state: int64 slots.
_PREFIX = tl.constexpr(0)  # the key bits chosen so far (bit pattern of a uint64)
_PREFIX_MASK = tl.constexpr(1)  # which bits those are
_RANK = tl.constexpr(2)  # 1-based rank of the wanted key among the keys matching the prefix
_LESS = tl.constexpr(3)  # active keys below every key matching the prefix
_COUNT = tl.constexpr(4)  # active keys matching the prefix (after the last pass: the ties of T)
_ACTIVE = tl.constexpr(5)  # active keys in all (counted by the first pass)
_ERROR = tl.constexpr(6)  # 1: rank above the number of active keys
_STATE_SLOTS = 8

# What a pass over the tiles does (``_tiles_kernel``'s PASS).
_HISTOGRAM = tl.constexpr(0)
_COUNT_TIES = tl.constexpr(1)
_WRITE_MASKS = tl.constexpr(2)


# ---------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _tiles_kernel(
    scores_ptr,
    masks_ptr,
    outs_ptr,
    numels_ptr,
    first_tiles_ptr,
    num_segments,
    num_tiles,
    state_ptr,
    work_ptr,
    PASS: tl.constexpr,
    SHIFT: tl.constexpr,
    DIGIT_MASK: tl.constexpr,
    KEY_BITS: tl.constexpr,
    INF: tl.constexpr,
    MASKED: tl.constexpr,
    ALIGNED: tl.constexpr,
    SEARCH_STEPS: tl.constexpr,
    BLOCK: tl.constexpr,
    BINS: tl.constexpr,
):
    """One pass over every tile of every tensor; what it does with a tile's keys depends on PASS.

    _HISTOGRAM:   work = hist (BINS,): += active keys with (key & prefix_mask) == prefix, by digit
                  (key >> SHIFT) & DIGIT_MASK.
    _COUNT_TIES:  work = tile_ties (num_tiles + 1,), zeroed: [t + 1] = the active keys == T of tile t;
                  nothing is read when every tie is to be pruned.
    _WRITE_MASKS: work = tile_ties' cumulative sum ([t]: the ties before tile t); each output mask =
                  active & (key > T, or key == T with a 1-based rank among the ties, in position order,
                  above need).

    The tile code is written once, inline: under the interpreter a nested jit call costs more than the
    arithmetic of a tile.
    """
    prefix = tl.load(state_ptr + _PREFIX).to(tl.uint64, bitcast=True)  # after the last radix pass: T
    if KEY_BITS != 64:
        prefix = prefix.to(tl.uint32)
    end = num_tiles
    if PASS == _HISTOGRAM:
        prefix_mask = tl.load(state_ptr + _PREFIX_MASK).to(tl.uint64, bitcast=True)
        if KEY_BITS != 64:
            prefix_mask = prefix_mask.to(tl.uint32)
        counts = tl.full((BINS,), 0, tl.int32)  # a program sees far fewer than 2**31 keys
    else:
        need = tl.load(state_ptr + _RANK)  # the first `need` ties in position order are pruned
        some_ties_stay = need != tl.load(state_ptr + _COUNT)
        if PASS == _COUNT_TIES:
            end = tl.where(some_ties_stay, num_tiles, 0)
    offs = tl.arange(0, BLOCK)
    for tile in range(tl.program_id(0), end, tl.num_programs(0)):
        # The tile's tensor: the last row whose first tile is <= tile.
        segment = tl.full((), 0, tl.int64)  # 64-bit scalars: the interpreter checks 32-bit sums for overflow
        hi = segment + num_segments - 1
        for _ in tl.static_range(SEARCH_STEPS):
            mid = (segment + hi + 1) // 2
            right = tl.load(first_tiles_ptr + mid) <= tile
            segment = tl.where(right, mid, segment)
            hi = tl.where(right, hi, mid - 1)
        start = (tile - tl.load(first_tiles_ptr + segment)) * BLOCK  # int64: a tensor may pass 2**31 elements
        count = tl.minimum(tl.load(numels_ptr + segment) - start, BLOCK)
        full = count == BLOCK
        inside = offs < count

        # Loads: a full tile without a bounds mask, so that they are vectors.
        address = tl.load(scores_ptr + segment)
        if KEY_BITS == 16:
            scores = address.to(tl.pointer_type(tl.uint16))
        elif KEY_BITS == 32:
            scores = address.to(tl.pointer_type(tl.uint32))
        else:
            scores = address.to(tl.pointer_type(tl.uint64))
        if ALIGNED:
            scores = tl.multiple_of(scores, 16)
        if full:
            bits = tl.load(scores + start + offs)
        else:
            bits = tl.load(scores + start + offs, mask=inside, other=0)
        active = inside
        if MASKED:
            mask = tl.load(masks_ptr + segment).to(tl.pointer_type(tl.uint8))
            if ALIGNED:
                mask = tl.multiple_of(mask, 16)
            if full:
                unpruned = tl.load(mask + start + offs)
            else:
                unpruned = tl.load(mask + start + offs, mask=inside, other=0)
            active = active & (unpruned != 0)

        # The order-preserving key (module docstring), in bit operations only.
        if KEY_BITS == 64:
            bits = bits.to(tl.uint64)
        else:
            bits = bits.to(tl.uint32)  # 16-bit keys are zero-extended
        magnitude = bits & ((1 << (KEY_BITS - 1)) - 1)
        negative = (bits != magnitude) & (magnitude != 0)  # -0.0 keys as +0.0
        key = tl.where(negative, bits ^ ((1 << KEY_BITS) - 1), bits | (1 << (KEY_BITS - 1)))
        key = tl.where(magnitude > INF, (1 << KEY_BITS) - 1, key)

        if PASS == _HISTOGRAM:
            digit = ((key >> SHIFT) & DIGIT_MASK).to(tl.int32)
            counts += tl.histogram(digit, BINS, mask=active & ((key & prefix_mask) == prefix))
        elif PASS == _COUNT_TIES:
            tl.store(work_ptr + tile + 1, tl.sum((active & (key == prefix)).to(tl.int32)).to(tl.int64))
        else:
            keep = active & (key > prefix)
            if some_ties_stay:
                tie = active & (key == prefix)
                tie_rank = tl.load(work_ptr + tile) + tl.cumsum(tie.to(tl.int32), 0)  # 1-based, over all tensors
                keep = keep | (tie & (tie_rank > need))
            out = tl.load(outs_ptr + segment).to(tl.pointer_type(tl.uint8))
            if ALIGNED:
                out = tl.multiple_of(out, 16)
            if full:
                tl.store(out + start + offs, keep.to(tl.uint8))
            else:
                tl.store(out + start + offs, keep.to(tl.uint8), mask=inside)
    if PASS == _HISTOGRAM:
        bins = tl.arange(0, BINS)
        tl.atomic_add(work_ptr + bins, counts.to(tl.int64), mask=counts != 0)


@triton.jit
def _choose_bucket_kernel(
    hist_ptr,
    state_ptr,
    value_ptr,
    SHIFT: tl.constexpr,
    DIGIT_MASK: tl.constexpr,
    FIRST_PASS: tl.constexpr,
    WRITE_VALUE: tl.constexpr,
    KEY_BITS: tl.constexpr,
    BINS: tl.constexpr,
):
    """Moves the state to the bucket of this pass's histogram that holds the wanted rank (one program).

    With WRITE_VALUE (kth_smallest's last pass), also writes the float bits of the key found to value_ptr.
    """
    counts = tl.load(hist_ptr + tl.arange(0, BINS))
    prefix = tl.load(state_ptr + _PREFIX).to(tl.uint64, bitcast=True)
    prefix_mask = tl.load(state_ptr + _PREFIX_MASK).to(tl.uint64, bitcast=True)
    rank = tl.load(state_ptr + _RANK)
    less = tl.load(state_ptr + _LESS)
    ties = tl.load(state_ptr + _COUNT)
    error = tl.load(state_ptr + _ERROR)
    lower = tl.cumsum(counts, 0) < rank  # the buckets wholly below the wanted rank
    bucket = tl.sum(lower.to(tl.int32))  # the first bucket that is not; BINS when rank > all active keys
    found = bucket < BINS
    if found:
        below = tl.sum(tl.where(lower, counts, 0))
        prefix |= bucket.to(tl.uint64) << SHIFT
        prefix_mask |= tl.full((), DIGIT_MASK, tl.uint64) << SHIFT
        rank -= below
        less += below
        ties = tl.load(hist_ptr + bucket)
    else:
        error = tl.full((), 1, tl.int64)
    if FIRST_PASS:
        active = tl.sum(counts)
    # Every thread has read the state before any writes it (a GPU runs this program on many threads).
    tl.debug_barrier()
    if FIRST_PASS:
        tl.store(state_ptr + _ACTIVE, active)
    tl.store(state_ptr + _PREFIX, prefix.to(tl.int64, bitcast=True))
    tl.store(state_ptr + _PREFIX_MASK, prefix_mask.to(tl.int64, bitcast=True))
    tl.store(state_ptr + _RANK, rank)
    tl.store(state_ptr + _LESS, less)
    tl.store(state_ptr + _COUNT, ties)
    tl.store(state_ptr + _ERROR, error)
    if WRITE_VALUE:  # the key's float: +0.0 for both zeros' key, the all-ones-magnitude NaN for the NaN key
        bits = tl.where(prefix >= (1 << (KEY_BITS - 1)), prefix ^ (1 << (KEY_BITS - 1)), prefix ^ ((1 << KEY_BITS) - 1))
        tl.store(value_ptr, bits.to(value_ptr.dtype.element_ty))


# ---------------------------------------------------------------------------------------------------------------
# Launch helpers
# ---------------------------------------------------------------------------------------------------------------


def _tiling(device: torch.device) -> tuple[int, int, int]:
    """(elements per tile, warps, programs: per SM on a GPU, in all under the interpreter)."""
    check_device(device)
    if device.type == "cuda":
        return 4096, 8, 4
    return 1024, 1, 2


class _Layout:
    """One call's table (its non-empty tensors, in order) and select state: one int64 tensor on the device."""

    def __init__(self, scores: Sequence[Tensor], masks: Sequence[Tensor] | None, outs: Sequence[Tensor] | None, k: int):
        device = scores[0].device
        self.block, self.num_warps, programs = _tiling(device)
        self.held = []  # contiguous copies of non-contiguous inputs, alive until the kernels are queued
        rows = []
        self.num_tiles = 0
        for i, s in enumerate(scores):
            n = s.numel()
            if n == 0:
                continue
            s = s.contiguous()
            m = masks[i].contiguous() if masks is not None else None
            self.held += [s] if m is None else [s, m]
            rows.append(
                (
                    s.data_ptr(),
                    m.data_ptr() if m is not None else 0,
                    outs[i].data_ptr() if outs is not None else 0,
                    n,
                    self.num_tiles,
                )
            )
            self.num_tiles += triton.cdiv(n, self.block)
        self.num_segments = len(rows)
        self.aligned = all(a % 16 == 0 for row in rows for a in row[:3])
        self.search_steps = (self.num_segments - 1).bit_length()
        if device.type == "cuda":
            programs *= torch.cuda.get_device_properties(device).multi_processor_count
        self.grid = (max(1, min(self.num_tiles, programs)),)
        state = [0, 0, k, 0, 0, 0, 0, 0]
        columns = [list(column) for column in zip(*rows)] if rows else [[]] * 5
        buffer = torch.tensor(state + sum(columns, []), dtype=torch.int64).to(device, non_blocking=True)
        self.state = buffer[:_STATE_SLOTS]
        # scores, masks and outputs addresses, numels, first tiles: one column per argument
        self.columns = buffer[_STATE_SLOTS:].view(5, self.num_segments).unbind(0)

    def table_args(self) -> tuple:
        return (*self.columns, self.num_segments, self.num_tiles, self.state)

    def tile_options(self, dtype: torch.dtype, masked: bool) -> dict:
        key_bits, inf, _ = _FORMATS[dtype]
        return dict(
            KEY_BITS=key_bits,
            INF=inf,
            MASKED=masked,
            ALIGNED=self.aligned,
            SEARCH_STEPS=self.search_steps,
            BLOCK=self.block,
            BINS=_BINS,
            SHIFT=0,
            DIGIT_MASK=0,
            num_warps=self.num_warps,
        )


def _passes(key_bits: int) -> list[tuple[int, int]]:
    """(shift, digit mask) of each radix pass, most significant digit first."""
    passes, high = [], key_bits
    while high > 0:
        shift = max(0, high - _DIGIT_BITS)
        passes.append((shift, (1 << (high - shift)) - 1))
        high = shift
    return passes


def _radix_select(layout: _Layout, dtype: torch.dtype, masked: bool, value: Tensor | None = None) -> None:
    """Leaves in layout.state the k-th smallest active key (prefix), the keys below it (less), its ties
    (count) and the ties to prune (rank); with ``value``, writes that key's float there."""
    key_bits = _FORMATS[dtype][0]
    passes = _passes(key_bits)
    hist = torch.zeros(len(passes), _BINS, dtype=torch.int64, device=layout.state.device)
    options = layout.tile_options(dtype, masked)
    for p, (shift, digit_mask) in enumerate(passes):
        _tiles_kernel[layout.grid](
            *layout.table_args(), hist[p], **{**options, "PASS": _HISTOGRAM, "SHIFT": shift, "DIGIT_MASK": digit_mask}
        )
        last = p == len(passes) - 1
        _choose_bucket_kernel[(1,)](
            hist[p],
            layout.state,
            value if value is not None else layout.state,
            SHIFT=shift,
            DIGIT_MASK=digit_mask,
            FIRST_PASS=p == 0,
            WRITE_VALUE=value is not None and last,
            KEY_BITS=key_bits,
            BINS=_BINS,
            num_warps=layout.num_warps,
        )


def _on_device(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------------------------
# Public launch functions
# ---------------------------------------------------------------------------------------------------------------


def kth_smallest(tensors: Sequence[Tensor], k: int) -> Tensor:
    """The k-th smallest (1-based) value over all elements of ``tensors``: ``cat(...).kthvalue(k).values``.

    tensors: float16/bfloat16/float32/float64 tensors of one dtype and device (CUDA, or CPU under
    TRITON_INTERPRET=1), any shapes and strides, 0-size allowed; 1 <= k <= total elements (checked by
    the op). Returns a 0-dim tensor of their dtype; NaN counts as larger than +inf.
    """
    dtype, device = tensors[0].dtype, tensors[0].device
    out = torch.empty((), dtype=dtype, device=device)
    with _on_device(device):
        layout = _Layout(tensors, None, None, k)
        _radix_select(layout, dtype, masked=False, value=out.view(_FORMATS[dtype][2]))
    return out


def prune_lowest(scores: Sequence[Tensor], masks: Sequence[Tensor] | None, k: int) -> list[Tensor]:
    """New bool masks in which exactly the k lowest-scoring active entries become False.

    scores: float16/bfloat16/float32/float64 tensors of one dtype and device; masks: bool tensors of
    their shapes, or None (all active). Entries already False stay False; ties go by position (an
    earlier tensor, then a lower flat index, first); NaN is the largest score. Returns contiguous bool
    tensors of the scores' shapes. Raises ``RuntimeError`` when k exceeds the active entries.
    """
    if k == 0:
        return [
            torch.ones_like(s, dtype=torch.bool) if masks is None else masks[i].clone() for i, s in enumerate(scores)
        ]
    dtype, device = scores[0].dtype, scores[0].device
    outs = [torch.empty(s.shape, dtype=torch.bool, device=device) for s in scores]
    masked = masks is not None
    with _on_device(device):
        layout = _Layout(scores, masks, [o.view(torch.uint8) for o in outs], k)
        _radix_select(layout, dtype, masked)
        options = layout.tile_options(dtype, masked)
        tile_ties = torch.zeros(layout.num_tiles + 1, dtype=torch.int64, device=device)  # tile t's at t + 1
        _tiles_kernel[layout.grid](*layout.table_args(), tile_ties, PASS=_COUNT_TIES, **options)
        ties_before = torch.cumsum(tile_ties, 0)  # [t]: the ties of the tiles before tile t
        _tiles_kernel[layout.grid](*layout.table_args(), ties_before, PASS=_WRITE_MASKS, **options)
    if masked:  # only here can k exceed the active entries; one synchronisation to say so
        error, active = layout.state[[_ERROR.value, _ACTIVE.value]].tolist()
        if error:
            raise RuntimeError(f"prune_lowest: k={k} is above the number of active (unpruned) entries, {active}")
    return outs


__all__ = ["kth_smallest", "prune_lowest"]
