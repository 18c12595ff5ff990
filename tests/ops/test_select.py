"""kth_smallest and prune_lowest against the reference, on every backend available here."""

import importlib.util
import os

import pytest
import torch
from torch.nn.utils import prune

from lth_sparse._dispatch import cpp_extension
from lth_sparse.ops import kth_smallest, prune_lowest, prune_lowest_rows, reference
from lth_sparse.ops.select import IMPLEMENTED, _kth_smallest, _prune_lowest
from tests.conftest import available_backends

BACKENDS = available_backends(IMPLEMENTED)


def test_every_backend_that_can_run_here_is_compared():
    """The Triton kernels run here on CPU tensors under TRITON_INTERPRET=1 (set by conftest without a GPU):
    their comparisons below must not drop out silently."""
    assert "torch" in BACKENDS and "triton" in IMPLEMENTED
    if os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None:
        assert "triton" in BACKENDS


def tensor_lists(dtype):
    """Awkward lists: one element, odd sizes, a 0-size tensor, ties, all equal, signs, zeros of both signs."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    ties = torch.tensor([0.5, -1.0, 0.5, 0.5, 2.0, -1.0]).to(dtype)
    return {
        "one": [r(1)],
        "odd": [r(3, 5), r(17), r(1, 1, 7)],
        "zero_size_inside": [r(4), r(0), r(2, 3), r(0, 5)],
        "ties": [ties, ties.clone(), r(3)],
        "all_equal": [torch.full((5,), 3.0, dtype=dtype), torch.full((2, 2), 3.0, dtype=dtype)],
        "signed_zeros": [torch.tensor([0.0, -0.0, -0.0, 0.0, 1.0, -1.0], dtype=dtype), r(4)],
        "infinities": [torch.tensor([float("inf"), -float("inf"), 0.0], dtype=dtype), r(5)],
        "larger": [r(1000), r(33, 31), r(0), r(7, 3, 3, 3)],
    }


def ks_for(total):
    return sorted(k for k in {1, 2, total // 3 or 1, total // 2 or 1, max(1, total - 1), total} if k <= total)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", list(tensor_lists(torch.float32)))
def test_kth_smallest_matches_reference(backend, dtype, case, use_backend):
    use_backend(backend)
    tensors = tensor_lists(dtype)[case]
    total = sum(t.numel() for t in tensors)
    for k in ks_for(total):
        ours = kth_smallest(tensors, k)
        expected = reference.kth_smallest(tensors, k)
        assert ours.dtype == dtype and ours.shape == ()
        assert ours == expected, f"k={k}: {ours} != {expected}"


@pytest.mark.skipif(cpp_extension() is None, reason="the C++ extension lth_sparse._C is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", list(tensor_lists(torch.float32)))
def test_cpp_radix_passes_alone_match_reference(dtype, case):
    """The C++ kernel's exact radix passes, which its kth_smallest falls back on where the sampled bracket
    misses the k-th value (rare on real data, so reached here through its test entry)."""
    tensors = tensor_lists(dtype)[case]
    for k in ks_for(sum(t.numel() for t in tensors)):
        assert cpp_extension()._kth_smallest_radix(tensors, k) == reference.kth_smallest(tensors, k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kth_smallest_non_contiguous_inputs(backend, use_backend):
    use_backend(backend)
    base = torch.randn(20, 30, generator=torch.Generator().manual_seed(1))
    tensors = [base.t(), base[::2, 1::3], base[:, 5]]
    for k in ks_for(sum(t.numel() for t in tensors)):
        assert kth_smallest(tensors, k) == reference.kth_smallest(tensors, k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_scores_are_refused_naming_the_tensor(backend, use_backend):
    """A NaN has no rank (sorted, it would go above +inf and be kept): refused by the checks every backend shares,
    as prune_magnitude refuses it; a NaN the masks have pruned already takes no part; infinities rank."""
    use_backend(backend)
    t = [torch.tensor([0.5, 3.0, -1.0]), torch.tensor([1.0, float("nan"), float("inf"), -2.0])]
    with pytest.raises(ValueError, match=r"tensors\[1\] holds 1 NaN"):
        kth_smallest(t, 3)
    with pytest.raises(ValueError, match=r"scores\[1\] holds 1 NaN"):
        prune_lowest(t, None, 3)
    masks = [torch.ones(3, dtype=torch.bool), torch.tensor([True, False, True, True])]
    kept = prune_lowest(t, masks, 2)
    assert kept[0].tolist() == [True, True, False] and kept[1].tolist() == [True, False, True, False]
    assert kth_smallest([torch.tensor([1.0, float("inf"), -float("inf")])], 3) == float("inf")


def mask_lists(scores, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(s.shape, generator=g) < density for s in scores]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("density", [None, 1.0, 0.5, 0.05, 0.0])
@pytest.mark.parametrize("case", list(tensor_lists(torch.float32)))
def test_prune_lowest_matches_reference(backend, dtype, density, case, use_backend):
    use_backend(backend)
    scores = tensor_lists(dtype)[case]
    masks = None if density is None else mask_lists(scores, density)
    active = sum(s.numel() for s in scores) if masks is None else sum(int(m.sum()) for m in masks)
    for k in sorted({0, 1, active // 2, active} if active else {0}):
        if k > active:
            continue
        ours = prune_lowest(scores, masks, k)
        expected = reference.prune_lowest(scores, masks, k)
        for o, e, s in zip(ours, expected, scores):
            assert o.dtype == torch.bool and o.shape == s.shape
            assert torch.equal(o, e), f"k={k}"
        pruned_now = sum(int(o.sum()) for o in ours)
        assert pruned_now == active - k, "exactly k more entries must be pruned"


@pytest.mark.parametrize("backend", BACKENDS)
def test_prune_lowest_breaks_ties_by_tensor_then_index(backend, use_backend):
    use_backend(backend)
    scores = [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])]
    out = prune_lowest(scores, None, 4)
    # both zeros go first, then the 1.0 ties: tensor 0 index 0, then tensor 0 index 2
    assert out[0].tolist() == [False, False, False]
    assert out[1].tolist() == [[True, True], [False, True]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_prune_lowest_keeps_pruned_entries_pruned(backend, use_backend):
    use_backend(backend)
    scores = [torch.arange(6.0)]
    masks = [torch.tensor([False, True, True, False, True, True])]
    out = prune_lowest(scores, masks, 2)[0]
    assert out.tolist() == [False, False, False, False, True, True]
    assert masks[0].tolist() == [False, True, True, False, True, True], "input masks must not be modified"


@pytest.mark.parametrize("backend", BACKENDS)
def test_prune_lowest_equals_torch_global_l1_unstructured(backend, use_backend):
    use_backend(backend)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 20), torch.nn.ReLU(), torch.nn.Linear(20, 7))
    weights = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    k = round(0.2 * sum(w.numel() for w in weights))
    ours = prune_lowest([w.abs() for w in weights], None, k)
    prune.global_unstructured(
        [(model[0], "weight"), (model[2], "weight")], pruning_method=prune.L1Unstructured, amount=0.2
    )
    assert torch.equal(ours[0], model[0].weight_mask.bool())
    assert torch.equal(ours[1], model[2].weight_mask.bool())


def test_opcheck():
    scores = [torch.randn(4, 3), torch.randn(0), torch.randn(5)]
    masks = [torch.rand(s.shape) < 0.7 for s in scores]
    torch.library.opcheck(_kth_smallest, (scores, 5))
    torch.library.opcheck(_prune_lowest, (scores, masks, 3))
    torch.library.opcheck(_prune_lowest, (scores, [], 3))


@pytest.mark.parametrize(
    "call,error,words",
    [
        (lambda: kth_smallest([], 1), ValueError, "tensors must not be empty"),
        (lambda: kth_smallest(torch.randn(3), 1), TypeError, "list or tuple"),
        (lambda: kth_smallest([torch.randn(3)], 0), ValueError, "k must be in"),
        (lambda: kth_smallest([torch.randn(3)], 4), ValueError, "k must be in"),
        (lambda: kth_smallest([torch.randn(3)], 1.0), TypeError, "k must be an int"),
        (lambda: kth_smallest([torch.arange(3)], 1), TypeError, "floating"),
        (lambda: kth_smallest([torch.randn(3), torch.randn(2).double()], 1), TypeError, "one dtype"),
        (lambda: kth_smallest([torch.randn(0)], 1), ValueError, "no elements"),
        (lambda: prune_lowest([torch.randn(3)], [torch.ones(3)], 1), TypeError, "bool"),
        (lambda: prune_lowest([torch.randn(3)], [torch.ones(2, dtype=torch.bool)], 1), ValueError, "shape"),
        (lambda: prune_lowest([torch.randn(3)], [], 1), ValueError, "one mask per score"),
        (lambda: prune_lowest([torch.randn(3)], [torch.tensor([True, False, False])], 2), ValueError, "still unpruned"),
        (lambda: prune_lowest([torch.randn(3)], None, -1), ValueError, "k must be in"),
    ],
)
def test_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error, match=words):
        call()


# --- prune_lowest_rows: prune_lowest of every row at once -----------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prune_lowest_rows_is_prune_lowest_of_each_row(dtype):
    """Awkward rows: many equal values (the ties go by index), -0.0 beside +0.0, infinities, counts 0 and n, one
    count shared by several rows and rows of their own count, rows of more than two dimensions."""
    generator = torch.Generator().manual_seed(0)
    for trial in range(60):
        rows, shape = 1 + trial % 5, (1 + trial % 7, 1 + trial % 3)
        n = shape[0] * shape[1]
        if trial % 3 == 0:  # few distinct values, signed zeros
            scores = torch.randint(-2, 3, (rows, *shape), generator=generator).to(dtype) * 0.5
            scores[scores == 0] = torch.tensor(-0.0, dtype=dtype)
            scores.view(rows, -1)[:, :1] = 0.0
        elif trial % 3 == 1:
            scores = torch.randn(rows, *shape, generator=generator, dtype=dtype)
            scores.view(rows, -1)[:, -1] = float("inf")
        else:
            scores = torch.randn(rows, *shape, generator=generator, dtype=dtype).round()
        counts = [int(c) for c in torch.randint(0, n + 1, (rows,), generator=generator)]
        counts[0] = counts[-1]  # a count shared by two rows (one row: itself)
        got = prune_lowest_rows(scores, counts)
        assert got.shape == scores.shape and got.dtype == torch.bool
        for r in range(rows):
            assert torch.equal(got[r], prune_lowest([scores[r]], None, counts[r])[0]), (trial, r)
            assert int((~got[r]).sum()) == counts[r]


def test_prune_lowest_rows_refuses_bad_input():
    scores = torch.rand(3, 4)
    with pytest.raises(ValueError, match="one entry per row"):
        prune_lowest_rows(scores, [1, 2])
    with pytest.raises(ValueError, match=r"counts\[1\] must be an int in \[0, 4\]"):
        prune_lowest_rows(scores, [1, 5, 0])
    with pytest.raises(ValueError, match=r"counts\[2\]"):
        prune_lowest_rows(scores, [1, 2, True])
    with pytest.raises(ValueError, match="floating"):
        prune_lowest_rows(torch.ones(3, 4, dtype=torch.long), [0, 0, 0])
    bad = scores.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        prune_lowest_rows(bad, [1, 1, 1])
