"""The Triton select kernels against the plain-torch reference, on the inputs that break radix selects.

Runs under ``TRITON_INTERPRET=1`` on CPU tensors (CI) or on a CUDA device; skipped otherwise. The
interpreter is slow (tiles of 1024 elements there, 2 programs): the inputs here hold a few thousand
elements, enough to span several tiles, tensors and programs, and tie groups that cross them.
``tests/ops/test_select.py`` runs the op-level comparisons on this backend too.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("the Triton kernels need a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)
pytest.importorskip("triton")

from lth_sparse.kernels import select as kernels  # noqa: E402
from lth_sparse.ops import reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def on_device(tensors):
    return [t.to(DEVICE) for t in tensors]


def assert_kth_matches(tensors, ks):
    for k in ks:
        ours = kernels.kth_smallest(tensors, k)
        expected = reference.kth_smallest(tensors, k)
        assert ours.dtype == tensors[0].dtype and ours.shape == () and ours.device == tensors[0].device
        assert ours == expected or (ours.isnan() and expected.isnan()), f"k={k}: {ours} != {expected}"


def assert_prune_matches(scores, masks, ks):
    active = sum(s.numel() for s in scores) if masks is None else sum(int(m.sum()) for m in masks)
    for k in ks:
        ours = kernels.prune_lowest(scores, masks, k)
        expected = reference.prune_lowest(scores, masks, k)
        assert len(ours) == len(scores)
        for i, (o, e, s) in enumerate(zip(ours, expected, scores)):
            assert o.dtype == torch.bool and o.shape == s.shape and o.device == s.device
            assert torch.equal(o, e), f"k={k}: tensor {i} differs from the reference"
        assert sum(int(o.sum()) for o in ours) == active - k, f"k={k}: not exactly k entries pruned"
        if masks is not None:
            assert not any(bool((o & ~m).any()) for o, m in zip(ours, masks)), "a pruned entry came back"


def ties_across_tiles(dtype):
    """Three values only, in tensors of 1500, 0, 2500 and 700 elements: every tie group spans tiles,
    tensors and both programs."""
    g = torch.Generator().manual_seed(0)
    return on_device([(torch.randint(0, 3, (n,), generator=g).to(dtype) - 1) * 0.5 for n in (1500, 0, 2500, 700)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_ties_spanning_tiles_and_tensors(dtype):
    scores = ties_across_tiles(dtype)
    n = sum(s.numel() for s in scores)
    per_value = [int((torch.cat(scores) == v).sum()) for v in (-0.5, 0.0, 0.5)]
    # k at the edges of the tie groups, and inside them (the tile with the last pruned tie is mid-tensor)
    assert_kth_matches(scores, [1, per_value[0], per_value[0] + 1, per_value[0] + 1234, n])
    assert_prune_matches(scores, None, [per_value[0] + 1234, n - 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_all_equal_values(dtype):
    scores = on_device([torch.full(shape, -2.5, dtype=dtype) for shape in ((3, 500), (1,), (2100,))])
    n = 3601
    assert_kth_matches(scores, [1, n])
    # every entry is a tie: pruning goes strictly by position
    assert_prune_matches(scores, None, [1, 1500, 1501, 2600, n])


def test_k_is_one_and_k_is_n_for_one_element_and_for_many():
    g = torch.Generator().manual_seed(1)
    one = on_device([torch.tensor([7.0])])
    many = on_device([torch.randn(1031, generator=g), torch.randn(17, 3, generator=g)])
    assert_kth_matches(one, [1])
    assert_prune_matches(one, None, [0, 1])
    assert_kth_matches(many, [1, 1082])
    assert_prune_matches(many, None, [1, 1082])


@pytest.mark.parametrize("where", ["first", "middle", "last", "several"])
def test_zero_size_tensors_anywhere_in_the_list(where):
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(1100, generator=g), torch.randn(5, 7, generator=g)
    empty = [torch.empty(0), torch.empty(3, 0)]
    scores = on_device(
        {
            "first": [empty[0], a, b],
            "middle": [a, empty[1], b],
            "last": [a, b, empty[0]],
            "several": [empty[0], a, empty[1], empty[0], b, empty[1]],
        }[where]
    )
    masks = [(torch.rand(s.shape, generator=g) < 0.5).to(DEVICE) for s in scores]
    n, active = 1135, sum(int(m.sum()) for m in masks)
    assert_kth_matches(scores, [1, 600, n])
    assert_prune_matches(scores, None, [600])
    assert_prune_matches(scores, masks, [1, active])
    for out, s in zip(kernels.prune_lowest(scores, masks, 3), scores):
        assert out.shape == s.shape


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_infinities_and_signed_zeros_in_the_float_order(dtype):
    info = torch.finfo(dtype)
    specials = torch.tensor(
        [
            float("nan"),
            float("inf"),
            -float("inf"),
            0.0,
            -0.0,
            info.max,
            -info.max,
            info.tiny,
            -info.tiny,
            info.smallest_normal / 4,
            -info.smallest_normal / 4,
            1.0,
            -1.0,
            -0.0,
            float("nan"),
            0.0,
        ],
        dtype=dtype,
    )
    negative_nan = specials[:1].neg()  # a NaN with the sign bit set is still the largest
    g = torch.Generator().manual_seed(3)
    scores = on_device([specials, torch.randn(1200, generator=g).to(dtype), negative_nan])
    n = sum(s.numel() for s in scores)
    assert_kth_matches(scores, [1, 600, n - 3, n - 2, n])
    # the zeros tie (-0.0 == +0.0: the +0.0 before a -0.0 goes first) and the NaNs tie: both go by position
    below_zero = int((torch.cat(scores) < 0).sum())
    zeros = int((torch.cat(scores) == 0).sum())
    assert_prune_matches(scores, None, [below_zero + 1, below_zero + zeros - 1, n - 2])
    assert kernels.kth_smallest(scores, n).isnan()


def test_every_float16_bit_pattern_is_ordered_as_torch_orders_it():
    """All 65536 float16 values (2046 NaNs, both zeros, subnormals, infinities), shuffled: 64 tiles."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = bits[torch.randperm(bits.numel(), generator=torch.Generator().manual_seed(4))].view(torch.float16)
    scores = on_device([values[:40000], values[40000:].reshape(-1, 8)])
    finite_and_inf = 65536 - 2046
    assert_kth_matches(scores, [1025, 31745, finite_and_inf])
    assert_prune_matches(scores, None, [finite_and_inf + 1000])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("density", [0.4, 0.02])
def test_masks_with_ties_and_already_pruned_entries(dtype, density):
    scores = ties_across_tiles(dtype)
    g = torch.Generator().manual_seed(5)
    masks = [(torch.rand(s.shape, generator=g) < density).to(DEVICE) for s in scores]
    masks[2][:1100] = False  # a tensor's first tile wholly pruned
    active = sum(int(m.sum()) for m in masks)
    assert_prune_matches(scores, masks, [0, 1, active // 2, active - 1, active])


def test_masked_k_above_the_active_entries_is_an_error():
    scores = on_device([torch.arange(6.0)])
    masks = on_device([torch.tensor([False, True, True, False, True, False])])
    with pytest.raises(RuntimeError, match="above the number of active"):
        kernels.prune_lowest(scores, masks, 4)


def test_many_tensors_of_odd_sizes():
    """37 tensors of 1 to 301 elements in odd shapes: the tensor of a tile is found by a 6-step search."""
    g = torch.Generator().manual_seed(6)
    sizes = torch.randint(1, 302, (37,), generator=g).tolist()
    scores = on_device([torch.randn(n, generator=g).reshape((n,) if n % 3 else (3, n // 3)) for n in sizes])
    n = sum(sizes)
    assert_kth_matches(scores, [n // 3, n])
    masks = [(torch.rand(s.shape, generator=g) < 0.7).to(DEVICE) for s in scores]
    active = sum(int(m.sum()) for m in masks)
    assert_prune_matches(scores, masks, [active // 4])


def test_unaligned_and_non_contiguous_inputs():
    """Views that start 4 bytes into a buffer (no 16-byte vector loads then), transposes and strided masks."""
    g = torch.Generator().manual_seed(7)
    buffer = torch.randn(4000, generator=g).to(DEVICE)
    unaligned = buffer[1:2049]
    transposed = buffer[2100:3900].reshape(60, 30).t()
    scores = [unaligned, transposed]
    assert_kth_matches(scores, [1, 1000, 3848])
    mask_base = (torch.rand(30, 120, generator=g) < 0.6).to(DEVICE)
    masks = [(torch.rand(2048, generator=g) < 0.6).to(DEVICE), mask_base[:, ::2]]
    active = sum(int(m.sum()) for m in masks)
    assert_prune_matches(scores, None, [1925])
    assert_prune_matches(scores, masks, [active // 3])


@pytest.mark.gpu
def test_more_than_100_million_values_on_a_gpu():
    """110M float32 values in VGG-like pieces, rounded to bfloat16 so that ties are many, with an empty tensor."""
    g = torch.Generator(device="cuda").manual_seed(8)
    shapes = [(4096, 25088), (4096, 4096), (0,), (1000, 4096), (512, 512, 3, 3), (7, 11, 13)]
    scores = [torch.randn(s, generator=g, device="cuda").bfloat16().float().abs() for s in shapes]
    n = sum(s.numel() for s in scores)
    assert n > 100_000_000
    flat = torch.cat([s.reshape(-1) for s in scores])
    for k in (1, n // 5, n // 2 + 12345, n):
        assert kernels.kth_smallest(scores, k) == flat.kthvalue(k).values
    k = n // 5
    masks = kernels.prune_lowest(scores, None, k)
    threshold = flat.kthvalue(k).values
    ties_pruned = k - int((flat < threshold).sum())
    for s, m in zip(scores, masks):  # every entry below the threshold pruned, every entry above it kept
        assert not bool(m[s < threshold].any()) and bool(m[s > threshold].all())
    assert sum(int((~m).sum()) for m in masks) == k
    pruned_ties = torch.cat([((s == threshold) & ~m).reshape(-1) for s, m in zip(scores, masks)])
    tie_positions = torch.cat([(s == threshold).reshape(-1) for s in scores]).nonzero().squeeze(1)
    assert int(pruned_ties.sum()) == ties_pruned
    assert bool(pruned_ties[tie_positions[:ties_pruned]].all()), "ties must be pruned in position order"
    round2 = kernels.prune_lowest(scores, masks, k)
    assert sum(int((m1 & ~m2).sum()) for m1, m2 in zip(masks, round2)) == k
    assert not any(bool((m2 & ~m1).any()) for m1, m2 in zip(masks, round2))
