"""The C++ CPU backend of masked_linear / masked_conv2d (``lth_sparse/ops/_cpu.py``, ``csrc/cpu/masked.cpp``).

``test_masked_linear.py`` and ``test_masked_conv2d.py`` compare the ops with the
reference on every backend. This file tests what they cannot see: the kernels
of ``_C`` against plain torch on shapes that break them (tile edges, strided
outputs, two threads), the bitwise contract of the mask application, when the
sparse path is taken, the structure cache, the conv chunking, and which
dispatch path (plain autograd Function or custom op) the ops take.
"""

from __future__ import annotations

import collections
import copy
import gc
import importlib
import math
import os
import time
import weakref

import pytest
import torch

from lth_sparse._dispatch import cpp_extension

if cpp_extension() is None:
    pytest.skip("the C++ extension lth_sparse._C is not built", allow_module_level=True)

from lth_sparse.nn import MaskedLinear  # noqa: E402
from lth_sparse.ops import _cpu, masked_conv2d, masked_linear, reference  # noqa: E402
from tests.tolerances import assert_close  # noqa: E402

C = cpp_extension()
linear_module = importlib.import_module("lth_sparse.ops.masked_linear")
conv_module = importlib.import_module("lth_sparse.ops.masked_conv2d")

BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}


def random_mask(shape, density, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < density


def mask_with_kept(shape, kept, seed=0):
    """A bool mask of ``shape`` with exactly ``kept`` True entries at random positions."""
    numel = math.prod(shape)
    flat = torch.zeros(numel, dtype=torch.bool)
    flat[torch.randperm(numel, generator=torch.Generator().manual_seed(seed))[:kept]] = True
    return flat.view(shape)


def structure_from_nonzero(mask):
    """CSR/CSC of ``mask`` seen as (size(0), rest), built from ``nonzero`` (int32, as ``_C.mask_structure``)."""
    rows, cols = mask.shape[0], math.prod(mask.shape[1:])
    m = mask.reshape(rows, cols)
    csr = m.nonzero()  # (row, col), row-major
    csc = m.t().nonzero().flip(1)  # (row, col), column-major
    row_ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(csr[:, 0], minlength=rows).cumsum(0)])
    col_ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(csc[:, 1], minlength=cols).cumsum(0)])
    return [t.to(torch.int32) for t in (row_ptr, csr[:, 1], col_ptr, csc[:, 0])]


class KernelSpy:
    """Stands in for ``_C`` in ``_cpu`` and counts the kernels called."""

    def __init__(self, real):
        self._real = real
        self.calls = collections.Counter()
        self._built_before = real.mask_cache_stats()["structures_built"]

    def structures_built(self) -> int:
        """Mask structures the mask cache built since the spy was made (in C++, out of the spy's sight)."""
        return self._real.mask_cache_stats()["structures_built"] - self._built_before

    def __getattr__(self, name):
        kernel = getattr(self._real, name)

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return kernel(*args, **kwargs)

        return counted


@pytest.fixture
def spy(monkeypatch):
    kernels = KernelSpy(C)
    monkeypatch.setattr(_cpu, "cpp_extension", lambda: kernels)
    return kernels


@pytest.fixture
def custom_op_path(monkeypatch):
    """Route masked_linear through the custom op (whose backends call the kernels from Python, where the
    spy sees them) instead of plain eager mode's C++ autograd nodes."""
    monkeypatch.setattr(linear_module, "plain_eager", lambda: False)


class NotThisPath:
    """Replaces the plain-eager autograd Function where the custom op must be used."""

    @staticmethod
    def apply(*args):
        raise AssertionError("the plain-eager Function ran where the custom op had to")


# ---------------------------------------------------------------------------
# 1. the kernels against plain torch


STRUCTURE_MASKS = {
    "1x1": lambda: torch.ones(1, 1, dtype=torch.bool),
    "odd": lambda: random_mask((7, 13), 0.3),
    "wide": lambda: random_mask((3, 130), 0.5),
    "tall": lambda: random_mask((129, 3), 0.2),
    "1-d": lambda: random_mask((11,), 0.5),
    "all-true": lambda: torch.ones(5, 9, dtype=torch.bool),
    "all-false": lambda: torch.zeros(5, 9, dtype=torch.bool),
    "one-entry": lambda: torch.zeros(6, 4, dtype=torch.bool).index_put_(
        (torch.tensor([5]), torch.tensor([0])), torch.tensor(True)
    ),
    "empty-row-and-col": lambda: (
        random_mask((6, 8), 0.5).index_fill_(0, torch.tensor([2]), False).index_fill_(1, torch.tensor([0, 7]), False)
    ),
    "0-cols": lambda: torch.zeros(4, 0, dtype=torch.bool),
    "0-rows": lambda: torch.zeros(0, 5, dtype=torch.bool),
    "conv": lambda: random_mask((6, 3, 3, 3), 0.3),
    "conv-all-true": lambda: torch.ones(4, 2, 1, 3, dtype=torch.bool),
    "conv-0-out-channels": lambda: torch.zeros(0, 3, 3, 3, dtype=torch.bool),
    "non-contiguous": lambda: random_mask((9, 14), 0.4).t(),
}


@pytest.mark.parametrize("name", list(STRUCTURE_MASKS))
def test_mask_structure_is_csr_and_csc_of_nonzero(name):
    mask = STRUCTURE_MASKS[name]()
    ours = C.mask_structure(mask)
    expected = structure_from_nonzero(mask)
    assert len(ours) == len(expected) == len(_cpu.Structure._fields)
    for field, a, e in zip(_cpu.Structure._fields, ours, expected):
        assert a.dtype == torch.int32, f"{field} is {a.dtype}"
        assert torch.equal(a, e), f"{field}: {a.tolist()} != {e.tolist()}"


TRANSPOSE_CASES = {
    "lenet-input": lambda dt: torch.randn(60, 784).to(dt),
    "odd": lambda dt: torch.randn(13, 29).to(dt),
    "one-row": lambda dt: torch.randn(1, 17).to(dt),
    "one-col": lambda dt: torch.randn(19, 1).to(dt),
    "multiple-of-8": lambda dt: torch.randn(16, 24).to(dt),
    "empty-rows": lambda dt: torch.randn(0, 5).to(dt),
    "empty-cols": lambda dt: torch.randn(5, 0).to(dt),
    "strided-rows": lambda dt: torch.randn(20, 40).to(dt)[::3, 1:34],
    "transposed": lambda dt: torch.randn(33, 9).to(dt).t(),
    "expanded": lambda dt: torch.randn(1, 11).to(dt).expand(10, 11),
    "scalar-expanded": lambda dt: torch.ones((), dtype=dt).expand(7, 12),
    "nan-inf-negzero": lambda dt: torch.tensor([[float("nan"), -0.0, float("inf")] * 5] * 9).to(dt),
}


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.bool]
)
@pytest.mark.parametrize("case", list(TRANSPOSE_CASES))
def test_transpose_2d_is_t_contiguous(case, dtype):
    x = TRANSPOSE_CASES[case](dtype)
    ours = C.transpose_2d(x)
    assert ours.is_contiguous() and ours.dtype == dtype and ours.shape == x.t().shape

    def bits(t):  # compares NaN and -0.0 exactly
        t = t.flatten().clone()
        return t if dtype == torch.bool else t.view(torch.uint8)

    assert torch.equal(bits(ours), bits(x.t()))


def test_transpose_2d_on_two_threads_and_bad_arguments():
    x = torch.randn(300, 1000)  # enough columns to split between threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.equal(C.transpose_2d(x), x.t().contiguous())
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(RuntimeError, match="2-D"):
        C.transpose_2d(torch.randn(2, 3, 4))


ROWS, COLS, N = 43, 37, 3
WIDTHS = range(1, 71)  # not multiples of 8, and across the 64-column tile


def column_space(rows, n, p, dtype, layout, fill=None):
    """A (rows, n, p) tensor in one of the layouts the backend uses."""
    if layout == "contiguous":
        t = torch.empty(rows, n, p, dtype=dtype)
    elif layout == "batch-major":  # a conv's (N, C, P) seen as (C, N, P)
        t = torch.empty(n, rows, p, dtype=dtype).transpose(0, 1)
    elif layout == "transposed":  # p is the strided dimension
        t = torch.empty(n, p, rows, dtype=dtype).permute(2, 0, 1)
    elif layout == "linear":  # a linear layer's (batch, features) output as (features, 1, batch)
        assert n == 1
        t = torch.empty(p, rows, dtype=dtype).t().unsqueeze(1)
    else:
        raise ValueError(layout)
    if fill is None:
        return t.copy_(torch.randn(rows, n, p, dtype=torch.float64))
    return t.fill_(fill)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    "out_layout,x_layout,n",
    [
        ("contiguous", "contiguous", N),
        ("batch-major", "batch-major", N),
        ("transposed", "contiguous", N),
        ("linear", "contiguous", 1),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spmm_matches_dense_product_for_every_width(dtype, out_layout, x_layout, n, bias):
    mask = random_mask((ROWS, COLS), 0.4)
    s = C.mask_structure(mask)
    weight = torch.randn(ROWS, COLS, dtype=torch.float64)
    dense = weight * mask
    b = torch.randn(ROWS, dtype=torch.float64)
    for p in WIDTHS:
        # CSR: out = (W * M) x + b
        x = column_space(COLS, n, p, dtype, x_layout)
        out = column_space(ROWS, n, p, dtype, out_layout, fill=float("nan"))
        C.spmm_(out, weight.to(dtype), s[0], s[1], x, b.to(dtype) if bias else None)
        expected = torch.einsum("rc,cnp->rnp", dense, x.double()) + (b[:, None, None] if bias else 0)
        assert_close(out, expected.to(dtype), scale=10)
        # CSC: out = (W * M)^T g
        g = column_space(ROWS, n, p, dtype, x_layout)
        out_t = column_space(COLS, n, p, dtype, out_layout, fill=float("nan"))
        C.spmm_(out_t, weight.to(dtype), s[2], s[3], g, None, True)
        assert_close(out_t, torch.einsum("rc,rnp->cnp", dense, g.double()).to(dtype), scale=10)


@pytest.mark.parametrize("layout", ["contiguous", "batch-major"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sddmm_is_masked_g_xt_for_every_width(dtype, layout):
    mask = random_mask((ROWS, COLS), 0.4)
    mask[5] = False  # an empty row
    s = C.mask_structure(mask)
    for p in [*WIDTHS, 1100]:  # 1100: across the kernel's 1024-position chunk
        g = column_space(ROWS, N, p, dtype, layout)
        x = column_space(COLS, N, p, dtype, layout)
        ours = C.sddmm(s[0], s[1], g, x)
        expected = torch.einsum("rnp,cnp->rc", g.double(), x.double()) * mask
        assert ours.shape == (ROWS, COLS) and ours.dtype == dtype
        assert_close(ours, expected.to(dtype), scale=10 if p < 1000 else 100)
        assert not ours[~mask].any(), f"width {p}: nonzero at pruned entries"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spmm_and_sddmm_give_the_same_bits_on_one_and_two_threads(dtype):
    rows, cols = 45, 200  # enough work per row that two threads split the rows for most widths
    mask = random_mask((rows, cols), 0.5)
    s = C.mask_structure(mask)
    weight = torch.randn(rows, cols, dtype=dtype)
    bias = torch.randn(rows, dtype=dtype)
    cases = []
    for p in WIDTHS:
        x = column_space(cols, N, p, dtype, "contiguous")
        g = column_space(rows, N, p, dtype, "contiguous")
        cases.append((p, x, g))

    def run_all():
        results = []
        for p, x, g in cases:
            for layout in ("contiguous", "transposed"):
                out = column_space(rows, N, p, dtype, layout, fill=float("nan"))
                C.spmm_(out, weight, s[0], s[1], x, bias)
                results.append(out.clone())
            results.append(C.sddmm(s[0], s[1], g, x))
        return results

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_all()
        torch.set_num_threads(2)
        assert C.kernel_info()["threads"] == 2, "the kernels must see the second thread"
        two = run_all()
    finally:
        torch.set_num_threads(threads)
    for i, (a, b) in enumerate(zip(one, two)):
        assert torch.equal(a, b), f"case {i}: one and two threads differ"


def _structure_and_operands():
    mask = random_mask((4, 6), 0.5)
    s = C.mask_structure(mask)
    return s, torch.randn(4, 6), torch.randn(6, 2, 5), torch.empty(4, 2, 5)


@pytest.mark.parametrize(
    "call,words",
    [
        (lambda s, v, x, out: C.spmm_(out, v.t(), s[0], s[1], x, None), "contiguous"),
        (lambda s, v, x, out: C.spmm_(out, v[:, :5].contiguous(), s[0], s[1], x, None), "columns"),
        (lambda s, v, x, out: C.spmm_(out, v, s[0], s[1], x, None, True), "rows"),
        (lambda s, v, x, out: C.spmm_(out, v, s[0], s[1] + 6, x, None), "out of range"),
        (lambda s, v, x, out: C.spmm_(out, v, s[0].long(), s[1], x, None), "int32"),
        (lambda s, v, x, out: C.spmm_(out, v, s[0], s[1], x[:5], None), "shape"),
        (lambda s, v, x, out: C.spmm_(out, v, s[0], s[1], x[:, :1], None), "shape"),
        (lambda s, v, x, out: C.spmm_(out[:, :, :4], v, s[0], s[1], x, None), "shape"),
        (lambda s, v, x, out: C.spmm_(out[:3], v, s[0], s[1], x, None), "entries"),
        (lambda s, v, x, out: C.spmm_(out, v, s[0], s[1], x.double(), None), "dtype"),
        (lambda s, v, x, out: C.spmm_(out, v.double(), s[0], s[1], x, None), "dtype"),
        (
            lambda s, v, x, out: C.spmm_(out, v, s[0], s[1], x.transpose(1, 2).contiguous().transpose(1, 2), None),
            "contiguous",
        ),
        (lambda s, v, x, out: C.spmm_(out, v, s[0], s[1], x, torch.randn(3)), "bias"),
        (lambda s, v, x, out: C.spmm_(out[:, 0], v, s[0], s[1], x, None), "3-D"),
        (lambda s, v, x, out: C.sddmm(s[0].long(), s[1], out.normal_(), x), "int32"),
        (lambda s, v, x, out: C.sddmm(s[0], s[1], out.normal_(), x[:, :1]), "shape"),
        (lambda s, v, x, out: C.sddmm(s[0], s[1], out.normal_(), x[:5]), "out of range"),
        (lambda s, v, x, out: C.sddmm(s[0], s[1], out.normal_().double(), x), "dtype"),
        (lambda s, v, x, out: C.sddmm(s[0], s[1], out.normal_()[1:], x), "entries"),
        (lambda s, v, x, out: C.mask_structure(torch.ones(3, 3)), "bool"),
        (lambda s, v, x, out: C.apply_mask(torch.randn(3, 4), torch.ones(4, 3, dtype=torch.bool)), "shape"),
        (lambda s, v, x, out: C.apply_mask(torch.randn(3, 4), torch.ones(3, 4)), "bool"),
        (
            lambda s, v, x, out: C.apply_mask(torch.ones(3, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.bool)),
            "floating",
        ),
        (lambda s, v, x, out: C.zero_pruned_(torch.randn(3, 4), torch.ones(3, 5, dtype=torch.bool)), "shape"),
    ],
)
def test_bad_kernel_arguments_raise_runtime_error(call, words):
    with pytest.raises(RuntimeError, match=words):
        call(*_structure_and_operands())


def _raises_runtime_error_or_is_right(case: str) -> None:
    """Runs in a forked child: exits 0 if ``case`` raises RuntimeError or returns the right result, else 1."""
    i32 = dict(dtype=torch.int32)
    bad_ptr = torch.tensor([0, 1 << 20, 3], **i32)  # non-monotone, far past the 3 entries of idx
    idx = torch.tensor([0, 1, 2], **i32)
    if case == "spmm_ ptr past idx":
        C.spmm_(torch.empty(2, 1, 4), torch.randn(2, 3), bad_ptr, idx, torch.randn(3, 1, 4), None)
    elif case == "sddmm ptr past idx":
        C.sddmm(bad_ptr, idx, torch.randn(2, 1, 4), torch.randn(3, 1, 4))
    elif case == "spmm_ decreasing ptr":
        # Row 0 claims 3 entries of an idx of 2; the int32 after idx is a valid column, so nothing
        # but a check of ptr itself can stop the read past the end of idx.
        C.spmm_(
            torch.empty(2, 1, 4),
            torch.randn(2, 3),
            torch.tensor([0, 3, 2], **i32),
            torch.tensor([0, 1, 2], **i32)[:2],
            torch.randn(3, 1, 4),
            None,
        )
    elif case == "masked_linear float8_e4m3fn":  # on the default backend; the torch backend computes it
        w = torch.randn(64, 64).to(torch.float8_e4m3fn)
        x, m = torch.randn(8, 64).to(w.dtype), random_mask(w.shape, 0.5)
        if not torch.equal(
            masked_linear(x, w, m).view(torch.uint8),
            torch.nn.functional.linear(x, torch.where(m, w, 0)).view(torch.uint8),
        ):
            os._exit(1)
        return
    elif case.startswith(("apply_mask", "zero_pruned_")):
        dtype = getattr(torch, case.split()[1])
        weight = torch.randn(64, 64).to(dtype)
        mask = random_mask(weight.shape, 0.5)
        expected = weight.view(torch.uint8) * mask  # +0.0 is all-zero bits in these formats
        out = C.apply_mask(weight, mask) if case.startswith("apply_mask") else C.zero_pruned_(weight, mask)
        if not torch.equal(out.view(torch.uint8), expected):
            os._exit(1)
        return
    else:
        raise ValueError(case)
    os._exit(1)  # no error for a malformed argument


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to survive a crash")
@pytest.mark.parametrize(
    "case",
    [
        "spmm_ ptr past idx",
        "sddmm ptr past idx",
        "spmm_ decreasing ptr",
        "apply_mask float8_e4m3fn",
        "apply_mask float8_e5m2",
        "zero_pruned_ float8_e4m3fn",
        "masked_linear float8_e4m3fn",
    ],
)
def test_malformed_arguments_do_not_crash_the_process(case):
    """Arguments the kernels cannot handle are a RuntimeError, never a segfault or a corrupted heap."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 2
        try:
            _raises_runtime_error_or_is_right(case)
            code = 0
        except RuntimeError:
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail(f"{case}: hung")
        time.sleep(0.01)
    assert not os.WIFSIGNALED(status), f"{case}: killed by signal {os.WTERMSIG(status)} (memory error)"
    assert os.WEXITSTATUS(status) != 2, f"{case}: raised something other than RuntimeError"
    assert os.WEXITSTATUS(status) == 0, f"{case}: neither a RuntimeError nor the right result"


# ---------------------------------------------------------------------------
# 2. apply_mask and zero_pruned_: torch.where(mask, w, 0), bit for bit


def special_weight(dtype, shape=(9, 70)):
    """Random values with NaN, +-inf and -0.0 both at kept and at pruned positions of ``special_mask``."""
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    flat = w.view(-1)
    for i, v in enumerate([float("nan"), float("inf"), float("-inf"), -0.0, -float("nan")]):
        flat[2 * i] = v  # pruned (even positions of the first row, see special_mask)
        flat[2 * i + 1] = v  # kept
    return w


def special_mask(shape=(9, 70)):
    mask = random_mask(shape, 0.5, seed=2)
    mask.view(-1)[:10] = torch.arange(10) % 2 == 1
    return mask


def assert_same_bits(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    bits = BITS[expected.dtype]
    assert torch.equal(actual.contiguous().view(bits), expected.contiguous().view(bits))


@pytest.mark.parametrize("dtype", list(BITS))
def test_apply_mask_equals_where_bitwise_with_nan_inf_and_negative_zero(dtype):
    w, m = special_weight(dtype), special_mask()
    out = C.apply_mask(w, m)
    assert_same_bits(out, torch.where(m, w, 0))
    assert not torch.signbit(out[~m]).any(), "pruned entries must be +0.0"
    assert torch.signbit(out.view(-1)[7]), "a kept -0.0 must stay -0.0"
    assert torch.isnan(out.view(-1)[1]), "a kept NaN must stay NaN"


@pytest.mark.parametrize("dtype", list(BITS))
def test_apply_mask_of_non_contiguous_weight_and_mask(dtype):
    w = special_weight(dtype, (70, 18))[:, ::2].t()  # (9, 70), strided both ways
    m = special_mask((70, 9)).t()
    out = C.apply_mask(w, m)
    assert out.is_contiguous()
    assert_same_bits(out, torch.where(m, w, 0))


@pytest.mark.parametrize("dtype", list(BITS))
def test_zero_pruned_in_place_on_contiguous_tensor(dtype):
    w, m = special_weight(dtype), special_mask()
    expected = torch.where(m, w, 0)
    ptr = w.data_ptr()
    out = C.zero_pruned_(w, m)
    assert out.data_ptr() == ptr
    assert_same_bits(w, expected)


@pytest.mark.parametrize("dtype", list(BITS))
def test_zero_pruned_in_place_on_non_contiguous_tensor(dtype):
    base = special_weight(dtype, (70, 18))
    untouched = base[:, 1::2].clone()
    w = base[:, ::2].t()  # (9, 70) view of the even columns
    m = special_mask((70, 9)).t()
    expected = torch.where(m, w, 0)
    C.zero_pruned_(w, m)
    assert_same_bits(w, expected)
    assert_same_bits(base[:, 1::2], untouched)


@pytest.mark.parametrize("dtype", list(BITS))
def test_pruned_are_zero_only_when_every_pruned_entry_is_positive_zero(dtype):
    w, m = special_weight(dtype, (70, 130)), special_mask((70, 130))  # > one 4096-entry block
    assert not C.pruned_are_zero(w, m), "NaN, inf, -0.0 and random values at pruned entries"
    clean = torch.where(m, w, 0)  # kept entries still hold NaN, inf, -0.0: they do not count
    assert C.pruned_are_zero(clean, m)
    for position in [0, 4095, 4096, clean.numel() - 1]:  # one bad entry, first/last of a block, last
        dirty = clean.clone()
        flat_mask = m.view(-1).clone()
        flat_mask[position] = False
        dirty.view(-1)[position] = -0.0  # a single sign bit is enough
        assert not C.pruned_are_zero(dirty, flat_mask.view(m.shape)), f"-0.0 at {position}"
    assert C.pruned_are_zero(w, torch.ones_like(m)), "nothing pruned"
    assert C.pruned_are_zero(torch.zeros(0, 5, dtype=dtype), torch.zeros(0, 5, dtype=torch.bool))
    assert not C.pruned_are_zero(clean.t(), m.t()), "non-contiguous: false, the caller masks"
    with pytest.raises(RuntimeError, match="shape"):
        C.pruned_are_zero(clean, m.t())


def test_pruned_are_zero_on_two_threads():
    threads = torch.get_num_threads()
    w, m = torch.randn(600, 700), random_mask((600, 700), 0.3)
    clean = torch.where(m, w, 0)
    try:
        torch.set_num_threads(2)
        assert C.pruned_are_zero(clean, m)
        clean.view(-1)[-1] = 1.0  # in the second thread's half
        m.view(-1)[-1] = False
        assert not C.pruned_are_zero(clean, m)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("clean", [True, False])
def test_dense_path_uses_a_clean_weight_as_it_is(clean, use_backend):
    """A weight already zero where pruned is its own masked weight: no copy is formed (the graph
    saves the weight itself), and the results are the reference's either way."""
    use_backend("cpp")
    x, w, b = _linear_case()
    m = random_mask(w.shape, 0.6)
    if clean:
        w.masked_fill_(~m, 0)
    assert_linear_matches_reference(x, w, m, b)
    w.requires_grad_()
    y = masked_linear(x, w, m, b)
    with torch.no_grad():
        w.add_(1.0)  # the weight changes between forward and backward
    if clean:  # the weight itself was saved: autograd sees the change, as for F.linear
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()
    else:  # a masked copy was saved
        y.sum().backward()


def test_nothing_pruned_runs_torchs_own_layers_unless_a_path_is_held(use_backend):
    use_backend("cpp")
    x, w, b = _linear_case()
    m = torch.ones(w.shape, dtype=torch.bool)
    assert_linear_matches_reference(x, w, m, b)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    y = masked_linear(x, w, m, b)
    assert "Addmm" in y.grad_fn.name(), y.grad_fn.name()
    xc = torch.randn(2, 3, 7, 7, requires_grad=True)
    wc = torch.randn(4, 3, 3, 3, requires_grad=True)
    mc = torch.ones(wc.shape, dtype=torch.bool)
    yc = masked_conv2d(xc, wc, mc, None, 1, 1)
    assert "Convolution" in yc.grad_fn.name(), yc.grad_fn.name()
    assert_close(yc, reference.masked_conv2d(xc, wc, mc, None, 1, 1))
    for path, name in [("dense", "MaskedLinearDense"), ("sparse", "MaskedLinearSparse")]:
        with _cpu.held_on(path):
            assert name in masked_linear(x, w, m, b).grad_fn.name()
            assert "Convolution" not in masked_conv2d(xc, wc, mc, None, 1, 1).grad_fn.name()
    m[0, 0] = False  # one pruned weight: the masked layers again
    assert "MaskedLinearDense" in masked_linear(x, w, m, b).grad_fn.name()
    mc[0, 0, 0, 0] = False
    assert "Convolution" not in masked_conv2d(xc, wc, mc, None, 1, 1).grad_fn.name()


# ---------------------------------------------------------------------------
# 3. when the sparse path is taken


def _threshold_layer(kept_offset, dtype=torch.float32, work_offset=0):
    """A (64, 125) weight, a mask of MAX_DENSITY * numel + kept_offset entries, and the batch giving
    MIN_DENSE_WORK + work_offset * numel multiply-adds (8000 weights: MAX_DENSITY * 8000 is a whole number)."""
    weight = torch.randn(64, 125, dtype=dtype)
    kept = round(_cpu.MAX_DENSITY * weight.numel()) + kept_offset
    # past batch 1 (GEMV_MAX_DENSITY) and the tiny products (SMALL_DENSE_WORK: any density)
    columns = max(2, math.ceil((_cpu.SMALL_DENSE_WORK + 1) / weight.numel())) + work_offset
    return weight, mask_with_kept(weight.shape, kept), columns


def test_use_sparse_thresholds_at_the_default_constants():
    assert (_cpu.MAX_DENSITY * 8000).is_integer() and 0 < _cpu.MAX_DENSITY < 1, "the tests below assume this"
    w, m, cols = _threshold_layer(0)
    assert _cpu.use_sparse(w, m, cols), "at MAX_DENSITY and MIN_DENSE_WORK: sparse"
    w, m, cols = _threshold_layer(-500)
    assert _cpu.use_sparse(w, m, cols)
    w, m, cols = _threshold_layer(1)
    assert not _cpu.use_sparse(w, m, cols), "one weight above MAX_DENSITY: dense"
    w, m, cols = _threshold_layer(-500, dtype=torch.float64)
    assert _cpu.use_sparse(w, m, cols)
    for dtype in (torch.float16, torch.bfloat16):
        w, m, cols = _threshold_layer(-1000, dtype=dtype, work_offset=1000)
        assert not _cpu.use_sparse(w, m, cols), f"{dtype} has no sparse kernels"


# (weight shape, columns, density, sparse path expected under the default constants)
_POLICY_CASES = [
    ((10, 100), 4, 0.1, False),  # 4000 multiply-adds < MIN_DENSE_WORK
    ((10, 100), 8, 0.99, True),  # tiny product (8000 <= SMALL_DENSE_WORK, 8 columns): any density
    ((10, 100), 60, 0.5, True),
    ((10, 100), 7, 0.5, False),  # tiny, but fewer than SMALL_MIN_COLUMNS columns: MAX_DENSITY
    ((10, 100), 7, 0.2, True),
    ((64, 125), 16, 0.9, True),  # 128000 multiply-adds: tiny
    ((64, 125), 17, 0.5, False),  # 136000: MAX_DENSITY
    ((64, 125), 17, 0.25, True),
    ((64, 125), 1, 0.2, False),  # batch 1: GEMV_MAX_DENSITY
    ((64, 125), 1, 0.05, True),
    ((64, 125), 2, 0.2, True),  # batch 2: MAX_DENSITY
]


@pytest.mark.parametrize("shape,columns,density,expected", _POLICY_CASES)
def test_the_policy_and_the_one_call_layer_agree(shape, columns, density, expected, use_backend):
    use_backend("cpp")
    assert (
        _cpu.MAX_DENSITY,
        _cpu.GEMV_MAX_DENSITY,
        _cpu.MIN_DENSE_WORK,
        _cpu.SMALL_DENSE_WORK,
        _cpu.SMALL_MIN_COLUMNS,
    ) == (0.25, 0.05, 4096, 131072, 8), "the cases assume the defaults"
    w = torch.randn(shape, requires_grad=True)
    m = mask_with_kept(shape, round(density * w.numel()))
    assert _cpu.use_sparse(w, m, columns) == expected
    x = torch.randn(columns, shape[1], requires_grad=True)
    y = masked_linear(x, w, m)
    assert ("MaskedLinearSparse" if expected else "MaskedLinearDense") in y.grad_fn.name()
    y_ref = reference.masked_linear(x, w, m)
    assert_close(y, y_ref, scale=4)
    for path in ("dense", "sparse"):
        with _cpu.held_on(path):
            assert _cpu.use_sparse(w, m, columns) == (path == "sparse")
            name = masked_linear(x, w, m).grad_fn.name()
            assert ("MaskedLinearSparse" if path == "sparse" else "MaskedLinearDense") in name


@pytest.mark.parametrize(
    "kept_offset,dtype,sparse",
    [(-1000, torch.float32, True), (1, torch.float32, False), (-1000, torch.bfloat16, False)],
)
def test_masked_linear_takes_the_path_use_sparse_chooses_in_eager_mode(kept_offset, dtype, sparse, spy, use_backend):
    use_backend("cpp")
    w, m, rows = _threshold_layer(kept_offset, dtype)
    x = torch.randn(rows, 125, dtype=dtype, requires_grad=True)
    w.requires_grad_()
    y = masked_linear(x, w, m, None)
    y.backward(torch.ones_like(y))
    assert spy.calls["masked_linear_auto"] == 1 and spy.structures_built() == int(sparse)
    assert "MaskedLinearSparse" in y.grad_fn.name() if sparse else "MaskedLinearDense" in y.grad_fn.name()
    refs = [t.detach().clone().requires_grad_() for t in (x, w)]
    y_ref = reference.masked_linear(refs[0], refs[1], m)
    y_ref.backward(torch.ones_like(y_ref))
    assert_close(y, y_ref, scale=4)
    for ours, theirs in zip((x, w), refs):
        assert_close(ours.grad, theirs.grad, scale=10)


@pytest.mark.parametrize(
    "kept_offset,dtype,sparse",
    [(-1000, torch.float32, True), (1, torch.float32, False), (-1000, torch.bfloat16, False)],
)
def test_masked_linear_takes_the_path_use_sparse_chooses(kept_offset, dtype, sparse, spy, use_backend, custom_op_path):
    use_backend("cpp")
    w, m, rows = _threshold_layer(kept_offset, dtype)
    assert _cpu.use_sparse(w, m, rows) == sparse
    x = torch.randn(rows, 125, dtype=dtype, requires_grad=True)
    w.requires_grad_()
    b = torch.randn(64, dtype=dtype, requires_grad=True)
    y = masked_linear(x, w, m, b)
    y.backward(torch.ones_like(y))
    if sparse:
        assert spy.calls["spmm_"] == 2 and spy.calls["sddmm"] == 1
        assert spy.calls["apply_mask"] == 0 and spy.calls["zero_pruned_"] == 0
    else:
        assert spy.calls["spmm_"] == 0 and spy.calls["sddmm"] == 0 and spy.structures_built() == 0
        assert spy.calls["apply_mask"] == 2 and spy.calls["zero_pruned_"] == 1
    refs = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    y_ref = reference.masked_linear(refs[0], refs[1], m, refs[2])
    y_ref.backward(torch.ones_like(y_ref))
    assert_close(y, y_ref, scale=4)
    for ours, theirs in zip((x, w, b), refs):
        assert_close(ours.grad, theirs.grad, scale=10)


def test_conv_never_takes_the_sparse_path_by_default(spy, use_backend):
    """Measured slower than oneDNN's conv at every sparsity: ``auto`` keeps convs dense."""
    use_backend("cpp")
    assert _cpu.CONV_MAX_DENSITY is None
    x = torch.randn(8, 8, 16, 16, requires_grad=True)
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    masked_conv2d(x, w, random_mask(w.shape, 0.01), None, 1, 1).sum().backward()
    assert spy.calls["spmm_"] == 0 and spy.calls["sddmm"] == 0 and spy.calls["apply_mask"] > 0


@pytest.mark.parametrize("density,sparse", [(0.05, True), (0.5, False)])
def test_masked_conv2d_takes_the_path_use_sparse_chooses(density, sparse, spy, use_backend, monkeypatch):
    use_backend("cpp")
    monkeypatch.setattr(_cpu, "CONV_MAX_DENSITY", 0.2)
    x = torch.randn(8, 8, 16, 16, requires_grad=True)  # 8 * 256 positions x 1152 weights > MIN_DENSE_WORK
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    m = random_mask(w.shape, density)
    assert _cpu.use_sparse(w, m, 8 * 256, _cpu.CONV_MAX_DENSITY) == sparse
    y = masked_conv2d(x, w, m, None, 1, 1)
    y.backward(torch.ones_like(y))
    assert (spy.calls["spmm_"] > 0) == sparse and (spy.calls["sddmm"] > 0) == sparse
    assert (spy.calls["apply_mask"] > 0) == (not sparse)
    refs = [t.detach().clone().requires_grad_() for t in (x, w)]
    y_ref = reference.masked_conv2d(refs[0], refs[1], m, None, 1, 1)
    y_ref.backward(torch.ones_like(y_ref))
    assert_close(y, y_ref, scale=4)
    assert_close(x.grad, refs[0].grad, scale=10)
    assert_close(w.grad, refs[1].grad, scale=100)


def test_inference_mode_mask_on_the_sparse_path():
    """A mask made under torch.inference_mode has no version counter; the structure cache must cope."""
    w, _, rows = _threshold_layer(0)
    with torch.inference_mode():
        m = mask_with_kept(w.shape, 500)
        x = torch.randn(rows, 125)
        assert _cpu.use_sparse(w, m, rows)
        y = masked_linear(x, w, m)
        assert_close(y, reference.masked_linear(x, w, m), scale=4)
        m[:, :60] = False  # inference tensors change in place without a version counter
        y_after = masked_linear(x, w, m)
        assert_close(y_after, reference.masked_linear(x, w, m), scale=4)
        assert not torch.equal(y, y_after)


# ---------------------------------------------------------------------------
# 4. the structure cache


def _linear_case(seed=0, fin=24, fout=10, batch=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, fin, generator=g, dtype=dtype),
        torch.randn(fout, fin, generator=g, dtype=dtype),
        torch.randn(fout, generator=g, dtype=dtype),
    )


def assert_linear_matches_reference(x, w, m, b):
    """Forward and all gradients of masked_linear for mask ``m`` as it is now."""
    ours = [t.clone().requires_grad_() for t in (x, w, b)]
    refs = [t.clone().requires_grad_() for t in (x, w, b)]
    y = masked_linear(ours[0], ours[1], m, ours[2])
    y_ref = reference.masked_linear(refs[0], refs[1], m, refs[2])
    assert_close(y, y_ref)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    for a, r in zip(ours, refs):
        assert_close(a.grad, r.grad)
    return y.detach()


MASK_CHANGES = {
    "copy_": lambda m: m.copy_(random_mask(m.shape, 0.3, seed=7)),
    "setitem-row": lambda m: m.__setitem__(slice(0, 4), False),
    "setitem-all-true": lambda m: m.__setitem__(Ellipsis, True),
    "masked_fill_": lambda m: m.masked_fill_(random_mask(m.shape, 0.5, seed=8), True),
    "through-the-base": lambda m: m._base.logical_not_(),
    # writes that bypass the version counter: .data has its own, numpy none
    "data.copy_": lambda m: m.data.copy_(random_mask(m.shape, 0.3, seed=7)),
    "data-setitem": lambda m: m.data.__setitem__(slice(0, 4), False),
    "numpy": lambda m: m.numpy().__setitem__(slice(0, 4), False),
}


@pytest.mark.parametrize("change", list(MASK_CHANGES))
def test_in_place_mask_change_is_seen_on_the_sparse_path(change, use_backend, spy):
    use_backend("cpp-sparse")
    x, w, b = _linear_case()
    m = random_mask((12, 24), 0.3)[1:11] if change == "through-the-base" else random_mask((10, 24), 0.3)
    before = assert_linear_matches_reference(x, w, m, b)
    MASK_CHANGES[change](m)
    after = assert_linear_matches_reference(x, w, m, b)
    assert not torch.equal(before, after), "the change must matter for the test to mean anything"
    assert spy.structures_built() == 2, "one structure per mask state"


def test_unchanged_mask_reuses_its_structure(use_backend, spy):
    use_backend("cpp-sparse")
    x, w, b = _linear_case()
    m = random_mask((10, 24), 0.3)
    for _ in range(3):
        assert_linear_matches_reference(x, w, m, b)
    assert spy.structures_built() == 1


def test_set_mask_and_load_state_dict_are_seen_on_the_sparse_path(use_backend):
    use_backend("cpp-sparse")
    x, _, _ = _linear_case()
    torch.manual_seed(0)
    layer = MaskedLinear(24, 10, dtype=torch.float64, mask=random_mask((10, 24), 0.3))
    mask_object = layer.mask

    def check():
        with torch.no_grad():
            y = layer(x)
            assert_close(y, reference.masked_linear(x, layer.weight, layer.mask, layer.bias))
        return y

    before = check()
    layer.set_mask(random_mask((10, 24), 0.2, seed=3))
    after_set = check()
    other = MaskedLinear(24, 10, dtype=torch.float64, mask=random_mask((10, 24), 0.1, seed=4))
    layer.load_state_dict(other.state_dict())
    after_load = check()
    assert layer.mask is mask_object, "set_mask and load_state_dict change the mask in place"
    assert not torch.equal(before, after_set) and not torch.equal(after_set, after_load)
    assert torch.equal(after_load, other(x).detach())


def test_a_new_mask_object_gives_new_results(use_backend):
    use_backend("cpp-sparse")
    x, w, b = _linear_case()
    m = random_mask((10, 24), 0.3)
    first = assert_linear_matches_reference(x, w, m, b)
    del m
    gc.collect()
    m = random_mask((10, 24), 0.3, seed=5)  # may reuse the old id and storage
    second = assert_linear_matches_reference(x, w, m, b)
    assert not torch.equal(first, second)


def test_the_cache_does_not_keep_masks_alive_and_frees_an_entry_with_its_mask(use_backend):
    use_backend("cpp-sparse")
    x, w, b = _linear_case()
    m = random_mask((10, 24), 0.3)
    with torch.no_grad():
        masked_linear(x, w, m, b)
    assert _cpu.cached_entry(m) == (int(m.sum()), True)
    entries = C.mask_cache_stats()["entries"]
    # torch keeps a tensor's Python object while C++ holds the tensor: these live as long as the cache holds them
    structure_refs = [weakref.ref(t) for t in _cpu.structure(m)]
    assert all(r() is not None for r in structure_refs)
    ref = weakref.ref(m)
    del m
    assert ref() is None, "the cache kept the mask alive"
    # at once, with no later lookup or insertion: the entry, its copy of the mask and its structure are freed
    assert C.mask_cache_stats()["entries"] == entries - 1
    assert all(r() is None for r in structure_refs), "the structure outlived its mask"


def test_the_cache_recounts_after_a_change():
    m = random_mask((9, 13), 0.4)
    assert C.mask_kept(m) == int(m.sum()) and _cpu.cached_entry(m) == (int(m.sum()), False)
    counts = C.mask_cache_stats()["counts"]
    C.mask_kept(m)
    assert C.mask_cache_stats()["counts"] == counts, "an unchanged mask is not counted again"
    m[0] = True
    assert _cpu.cached_entry(m) is None, "the entry is stale after an in-place change"
    assert C.mask_kept(m) == int(m.sum()) and C.mask_cache_stats()["counts"] == counts + 1
    assert [t.numel() for t in _cpu.structure(m)[1::2]] == [int(m.sum())] * 2, "col_idx and row_idx: one per kept"
    assert _cpu.cached_entry(m) == (int(m.sum()), True)
    m.copy_(m.clone())
    assert _cpu.cached_entry(m) == (int(m.sum()), True), "a write of the same bytes keeps the entry"
    with pytest.raises(RuntimeError, match="bool CPU tensor"):
        C.mask_kept(torch.ones(3, 3))


@pytest.mark.parametrize("write", ["data.copy_", "data-setitem", "numpy"])
def test_the_cache_sees_writes_that_bypass_the_version_counter(write):
    m = random_mask((9, 13), 0.4)
    structure_before = _cpu.structure(m)
    assert _cpu.cached_entry(m) == (int(m.sum()), True)
    version = m._version
    MASK_CHANGES[write](m)
    assert m._version == version, "the write must bypass the version counter for this test to mean it"
    assert _cpu.cached_entry(m) is None, "the entry no longer matches the mask's bytes"
    assert C.mask_kept(m) == int(m.sum())
    for field, ours, expected in zip(_cpu.Structure._fields, _cpu.structure(m), structure_from_nonzero(m)):
        assert torch.equal(ours, expected), field
    assert not torch.equal(structure_before.col_idx, _cpu.structure(m).col_idx)


def test_the_cache_caches_inference_masks_and_sees_their_changes():
    """Inference tensors have no version counter: the comparison of bytes is all the cache has."""
    with torch.inference_mode():
        m = random_mask((9, 13), 0.4)
    assert C.mask_kept(m) == int(m.sum()) and _cpu.cached_entry(m) == (int(m.sum()), False)
    with torch.inference_mode():
        m[:, :5] = False
    assert _cpu.cached_entry(m) is None
    assert C.mask_kept(m) == int(m.sum())


def test_a_detached_alias_of_a_mask_shares_its_entry_and_a_view_has_its_own():
    m = random_mask((9, 13), 0.4)
    C.mask_kept(m)
    counts = C.mask_cache_stats()["counts"]
    assert C.mask_kept(m.detach()) == C.mask_kept(m.data) == int(m.sum())
    assert C.mask_cache_stats()["counts"] == counts, "an alias of the same bytes is not counted again"
    view = m[2:]
    assert C.mask_kept(view) == int(view.sum()) and C.mask_kept(m.t()) == int(m.sum())
    view[0] = ~view[0]
    assert C.mask_kept(m) == int(m.sum()) and C.mask_kept(view) == int(view.sum())


@pytest.mark.parametrize("path", ["sparse", "dense"])
@pytest.mark.parametrize("write", ["data.copy_", "numpy"])
def test_writes_that_bypass_the_version_counter_are_seen_on_the_custom_op_path(write, path, custom_op_path):
    """The custom-op path (torch.compile, dispatch modes) asks the cache from Python, forward and backward."""
    x, w, b = _linear_case()
    m = random_mask((10, 24), 0.3)
    with _cpu.held_on(path):
        before = assert_linear_matches_reference(x, w, m, b)
        MASK_CHANGES[write](m)
        after = assert_linear_matches_reference(x, w, m, b)
    assert not torch.equal(before, after)


# Arguments the one-call C++ layer does not take: it answers None and the Python path's checks
# raise the error that names the argument (or, for float8, run it).
_NOT_TAKEN = {
    "input on meta": lambda x, w, m, b: (x.to("meta"), w, m, b),
    "input dtype": lambda x, w, m, b: (x.float(), w, m, b),
    "input width": lambda x, w, m, b: (x[:, :-1], w, m, b),
    "input 0-d": lambda x, w, m, b: (x[0, 0], w, m, b),
    "input sparse": lambda x, w, m, b: (x.to_sparse(), w, m, b),
    "weight 3-d": lambda x, w, m, b: (x, w[None], m[None], b),
    "weight integer": lambda x, w, m, b: (x.long(), w.long(), m, b),
    "mask dtype": lambda x, w, m, b: (x, w, m.to(torch.uint8), b),
    "mask shape": lambda x, w, m, b: (x, w, m[:-1], b),
    "bias shape": lambda x, w, m, b: (x, w, m, b[:-1]),
    "bias dtype": lambda x, w, m, b: (x, w, m, b.float()),
    "bias 2-d": lambda x, w, m, b: (x, w, m, b[None]),
    "float8": lambda x, w, m, b: tuple(
        None if t is None else t.to(torch.float8_e4m3fn) if t.is_floating_point() else t for t in (x, w, m, b)
    ),
}


@pytest.mark.parametrize("case", list(_NOT_TAKEN))
def test_the_one_call_layer_leaves_what_it_does_not_take_to_python(case, use_backend):
    use_backend("cpp")
    x, w, b = _linear_case()
    m = random_mask(w.shape, 0.5)
    args = _NOT_TAKEN[case](x, w, m, b)
    assert _cpu.linear_auto(*args) is None
    if case == "float8":
        return  # runs through the Python Function (tested with the dtypes above)
    with pytest.raises((TypeError, ValueError, RuntimeError, NotImplementedError)) as caught:
        masked_linear(*args)
    assert "incompatible function arguments" not in str(caught.value)


def test_the_one_call_layer_is_not_used_when_another_backend_is_forced(monkeypatch, spy):
    x, w, b = _linear_case()
    m = random_mask(w.shape, 0.5)
    monkeypatch.setenv("LTH_SPARSE_BACKEND", "torch")
    assert type(masked_linear(x.requires_grad_(), w, m, b).grad_fn).__name__ == "_EagerMaskedLinearBackward"
    assert spy.calls["masked_linear_auto"] == 0
    monkeypatch.setenv("LTH_SPARSE_BACKEND", "cpp")
    assert "MaskedLinearDense" in masked_linear(x, w, m, b).grad_fn.name()
    monkeypatch.delenv("LTH_SPARSE_BACKEND")
    assert "MaskedLinearDense" in masked_linear(x, w, m, b).grad_fn.name()
    assert spy.calls["masked_linear_auto"] == 2


# The C++ layer's autograd nodes (MaskedLinearDenseBackward, MaskedLinearSparseBackward): what a
# torch autograd Function would give, kept by hand-written nodes.


def _node_case(path, clean, batch_shape=(7,)):
    """Leaves x, w, b (float64) and a mask; ``clean``: the weight holds +0.0 where pruned."""
    x, w, b = _linear_case(batch=math.prod(batch_shape))
    x = x.reshape(*batch_shape, x.shape[-1])
    m = random_mask(w.shape, 0.4)
    if clean:
        w = torch.where(m, w, 0)
    return [t.requires_grad_() for t in (x, w, b)], m


def _ours_on(path, x, w, m, b):
    with _cpu.held_on(path):
        y = masked_linear(x, w, m, b)
    assert y.grad_fn.name() == {"dense": "MaskedLinearDenseBackward", "sparse": "MaskedLinearSparseBackward"}[path]
    return y


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("clean", [True, False])
@pytest.mark.parametrize("batch_shape", [(7,), (2, 3)])
def test_double_backward_matches_the_reference(path, clean, batch_shape, use_backend):
    # create_graph=True runs the backward with differentiable torch ops (the kernels write raw memory)
    use_backend("cpp")
    (x, w, b), m = _node_case(path, clean, batch_shape)
    y = _ours_on(path, x, w, m, b)
    y_ref = reference.masked_linear(x, w, m, b)
    grads = torch.autograd.grad((y**2).sum(), (x, w, b), create_graph=True)
    grads_ref = torch.autograd.grad((y_ref**2).sum(), (x, w, b), create_graph=True)
    for ours, theirs in zip(grads, grads_ref):
        assert_close(ours, theirs)
    assert all(g.requires_grad for g in grads)
    second = torch.autograd.grad(sum((g**2).sum() for g in grads), (x, w, b))
    second_ref = torch.autograd.grad(sum((g**2).sum() for g in grads_ref), (x, w, b))
    for ours, theirs in zip(second, second_ref):
        assert_close(ours, theirs)
    assert not second[1][~m].any(), "pruned weights get no second-order gradient either"


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("changed", ["weight", "mask", "input"])
def test_an_in_place_change_before_the_backward_raises(path, changed, use_backend):
    use_backend("cpp")
    (x, w, b), m = _node_case(path, clean=True)
    y = _ours_on(path, x, w, m, b)
    refs = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    y_ref = reference.masked_linear(refs[0], refs[1], m.clone(), refs[2])
    tensor = {"weight": w, "mask": m, "input": x}[changed]
    with torch.no_grad():
        tensor.copy_(tensor.clone())  # same values, a new version
    if path == "sparse" and changed == "input":
        # the sparse path keeps its own transposed copy of the input: the backward is still right
        y.sum().backward()
        y_ref.sum().backward()
        for t, r in zip((x, w, b), refs):
            assert_close(t.grad, r.grad)
        return
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_retain_graph_and_backward_twice(path, use_backend):
    use_backend("cpp")
    (x, w, b), m = _node_case(path, clean=True)
    y = _ours_on(path, x, w, m, b)
    y.sum().backward(retain_graph=True)
    first = [t.grad.clone() for t in (x, w, b)]
    y.sum().backward()
    for t, g in zip((x, w, b), first):
        assert_close(t.grad, 2 * g)
    with pytest.raises(RuntimeError, match="second time"):
        y.sum().backward()


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_saved_tensor_hooks_see_what_the_node_saves(path, use_backend):
    use_backend("cpp")
    (x, w, b), m = _node_case(path, clean=True)
    packed, unpacked = [], []

    def pack(t):
        packed.append(t.shape)
        return t.clone()  # the backward must read what unpack gives back, not the original

    def unpack(t):
        unpacked.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        y = _ours_on(path, x, w, m, b)
    assert tuple(w.shape) in packed and tuple(m.shape) in packed
    grad = torch.randn_like(y)
    y.backward(grad)
    assert len(unpacked) >= 3
    refs = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    reference.masked_linear(refs[0], refs[1], m, refs[2]).backward(grad)
    for t, r in zip((x, w, b), refs):
        assert_close(t.grad, r.grad)


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_gives_the_reference_gradients(path, reentrant, use_backend):
    from torch.utils.checkpoint import checkpoint

    use_backend("cpp")
    (x, w, b), m = _node_case(path, clean=True)
    with _cpu.held_on(path):
        y = checkpoint(lambda x, w, b: torch.relu(masked_linear(x, w, m, b)), x, w, b, use_reentrant=reentrant)
        y.pow(2).sum().backward()
    ours = [t.grad for t in (x, w, b)]
    refs = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    torch.relu(reference.masked_linear(refs[0], refs[1], m, refs[2])).pow(2).sum().backward()
    for g, r in zip(ours, refs):
        assert_close(g, r.grad)


def test_dual_tensors_go_to_the_python_function(use_backend):
    # forward-mode AD: the C++ layer declines, the Python Function's jvp gives the tangent
    # (checked against the reference in test_masked_linear.py)
    use_backend("cpp")
    (x, w, b), m = _node_case("dense", clean=True)
    assert C.masked_linear_auto(x.detach(), w.detach(), m, b.detach(), *_cpu._policy_args(), True) is not None
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = fwAD.make_dual(x.detach(), torch.ones_like(x))
        assert C.masked_linear_auto(dual, w.detach(), m, b.detach(), *_cpu._policy_args(), True) is None
        for weight in (w, w.detach()):  # with a graph to build and without
            with pytest.raises(RuntimeError, match="forward-mode AD"):
                C.masked_linear_dense(dual, weight, m, b)  # the direct entry refuses rather than drop the tangent
        y = masked_linear(dual, w.detach(), m, b.detach())
        assert fwAD.unpack_dual(y).tangent is not None


def test_no_graph_without_grad(use_backend):
    use_backend("cpp")
    (x, w, b), m = _node_case("dense", clean=True)
    with torch.no_grad():
        assert masked_linear(x, w, m, b).grad_fn is None
    y = masked_linear(x.detach(), w.detach(), m, b.detach())
    assert y.grad_fn is None and not y.requires_grad


# ---------------------------------------------------------------------------
# 5. the conv sparse path


def _conv_case(n, c, h, w, cout, kh, kw, density, dtype=torch.float64, groups=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    wt = torch.randn(cout, c // groups, kh, kw, generator=g, dtype=dtype)
    return x, wt, random_mask(wt.shape, density, seed), torch.randn(cout, generator=g, dtype=dtype)


def assert_conv_matches_reference(x, wt, m, b, *geometry, need_input=True, with_bias=True, scale=1.0):
    ours = [
        x.clone().requires_grad_(need_input),
        wt.clone().requires_grad_(),
        b.clone().requires_grad_() if with_bias else None,
    ]
    refs = [
        x.clone().requires_grad_(need_input),
        wt.clone().requires_grad_(),
        b.clone().requires_grad_() if with_bias else None,
    ]
    y = masked_conv2d(ours[0], ours[1], m, ours[2], *geometry)
    y_ref = reference.masked_conv2d(refs[0], refs[1], m, refs[2], *geometry)
    assert y.shape == y_ref.shape
    assert_close(y, y_ref, scale=scale)
    grad = torch.randn_like(y_ref)
    y.backward(grad)
    y_ref.backward(grad)
    for a, r in zip(ours, refs):
        if a is not None and a.requires_grad:
            assert_close(a.grad, r.grad, scale=scale)
        elif a is not None:
            assert a.grad is None
    assert not ours[1].grad[~m].any()
    return y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("examples_per_chunk", [1, 2])
def test_conv_batch_chunks_give_the_reference(examples_per_chunk, dtype, monkeypatch, use_backend, spy):
    use_backend("cpp-sparse")
    x, wt, m, b = _conv_case(5, 3, 7, 6, 4, 3, 2, 0.4, dtype)
    positions = 5 * 5  # (7 - 3 + 1) x (6 - 2 + 1)
    per_example = wt[0].numel() * positions * x.element_size()
    monkeypatch.setattr(_cpu, "_UNFOLD_BYTES", examples_per_chunk * per_example + per_example // 2)
    assert_conv_matches_reference(x, wt, m, b, 1, 0, 1, scale=1 if dtype == torch.float64 else 10)
    chunks = math.ceil(5 / examples_per_chunk)
    assert spy.calls["spmm_"] == 2 * chunks, "forward and input gradient, once per chunk"
    assert spy.calls["sddmm"] == chunks


def test_conv_unbatched_input_on_the_sparse_path(use_backend, spy):
    use_backend("cpp-sparse")
    x, wt, m, b = _conv_case(1, 3, 6, 7, 5, 3, 3, 0.4)
    y = assert_conv_matches_reference(x[0], wt, m, b, 1, 1, 1)
    assert y.shape == (5, 6, 7)
    assert spy.calls["spmm_"] == 2 and spy.calls["apply_mask"] == 0


def test_conv_groups_take_the_dense_path_and_match(use_backend, spy):
    use_backend("cpp-sparse")
    x, wt, m, b = _conv_case(2, 6, 6, 6, 4, 3, 3, 0.3, groups=2)
    assert_conv_matches_reference(x, wt, m, b, 1, 1, 1, 2)
    assert spy.calls["spmm_"] == 0 and spy.calls["sddmm"] == 0 and spy.calls["apply_mask"] > 0


@pytest.mark.parametrize(
    "stride,padding,dilation,kernel",
    [
        ((2, 1), (0, 2), (1, 1), (3, 3)),
        ((1, 3), (1, 0), (2, 1), (2, 3)),
        ((3, 2), (2, 2), (2, 3), (3, 2)),
        ((1, 1), (0, 0), (1, 1), (1, 1)),
        ((2, 2), (1, 1), (1, 1), (4, 4)),
    ],
)
def test_conv_sparse_geometries(stride, padding, dilation, kernel, use_backend, spy):
    use_backend("cpp-sparse")
    x, wt, m, b = _conv_case(2, 3, 9, 8, 4, *kernel, 0.4)
    assert_conv_matches_reference(x, wt, m, b, stride, padding, dilation)
    assert spy.calls["spmm_"] == 2


def test_conv_empty_batch_on_the_sparse_path(use_backend):
    use_backend("cpp-sparse")
    x, wt, m, b = _conv_case(0, 3, 5, 5, 4, 3, 3, 0.4)
    y = assert_conv_matches_reference(x, wt, m, b, 1, 1, 1)
    assert y.shape == (0, 4, 5, 5)


@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_weight_gradients_only(with_bias, use_backend, spy):
    use_backend("cpp-sparse")
    x, wt, m, b = _conv_case(3, 3, 6, 6, 4, 3, 3, 0.4)
    assert_conv_matches_reference(x, wt, m, b, 1, 1, 1, need_input=False, with_bias=with_bias)
    assert spy.calls["spmm_"] == 1, "forward only: no input gradient"
    assert spy.calls["sddmm"] == 1


def test_linear_weight_gradients_only(use_backend, spy, custom_op_path):
    use_backend("cpp-sparse")
    x, w, b = _linear_case()
    m = random_mask(w.shape, 0.3)
    w_ours, w_ref = w.clone().requires_grad_(), w.clone().requires_grad_()
    masked_linear(x, w_ours, m).sum().backward()
    reference.masked_linear(x, w_ref, m).sum().backward()
    assert_close(w_ours.grad, w_ref.grad)
    assert spy.calls["spmm_"] == 1 and spy.calls["sddmm"] == 1


def test_linear_with_zero_output_features_on_the_sparse_path(use_backend):
    """A (0, K) weight: the CSC of its mask still has K columns, so the input gradient is zeros."""
    use_backend("cpp-sparse")
    x, w, b = _linear_case(fout=0)
    y = assert_linear_matches_reference(x, w, torch.zeros(w.shape, dtype=torch.bool), b)
    assert y.shape == (5, 0)


# ---------------------------------------------------------------------------
# 6. plain eager Function or custom op


def test_plain_eager_skips_the_custom_op():
    x, w, b = (t.requires_grad_() for t in _linear_case(dtype=torch.float32))
    m = random_mask(w.shape, 0.5)
    y = masked_linear(x, w, m, b)
    assert "MaskedLinearDense" in y.grad_fn.name(), "the C++ backend's own autograd node"
    assert torch.equal(y, linear_module._masked_linear(x, w, m, b)), "the same kernels either way"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LTH_SPARSE_BACKEND", "torch")
        y = masked_linear(x, w, m, b)
    assert type(y.grad_fn).__name__ == "_EagerMaskedLinearBackward", "other backends: the Python Function"
    xc, wc, mc, bc = _conv_case(2, 3, 5, 5, 4, 3, 3, 0.5, torch.float32)
    yc = masked_conv2d(xc, wc.requires_grad_(), mc, bc, 1, 1)
    assert type(yc.grad_fn).__name__ == "_EagerMaskedConv2dBackward"


def _layers_forward(x, w, m, b, xc, wc, mc, bc):
    return masked_linear(x, w, m, b), masked_conv2d(xc, wc, mc, bc, 2, 1)


def test_torch_compile_uses_the_custom_op(monkeypatch, use_backend):
    use_backend("cpp-sparse")
    monkeypatch.setattr(linear_module, "_EagerMaskedLinear", NotThisPath)
    monkeypatch.setattr(_cpu, "linear_auto", NotThisPath.apply)
    monkeypatch.setattr(conv_module, "_EagerMaskedConv2d", NotThisPath)
    x, w, b = _linear_case(dtype=torch.float32)
    m = random_mask(w.shape, 0.3)
    xc, wc, mc, bc = _conv_case(2, 3, 6, 6, 4, 3, 3, 0.3, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (w, b, wc, bc)]
    compiled = torch.compile(_layers_forward, backend="eager", fullgraph=True)
    y, yc = compiled(x, leaves[0], m, leaves[1], xc, leaves[2], mc, leaves[3])
    assert "lth_sparse_masked_linear" in type(y.grad_fn).__name__
    assert "lth_sparse_masked_conv2d" in type(yc.grad_fn).__name__
    refs = [t.clone().requires_grad_() for t in (w, b, wc, bc)]
    y_ref = reference.masked_linear(x, refs[0], m, refs[1])
    yc_ref = reference.masked_conv2d(xc, refs[2], mc, refs[3], 2, 1)
    assert_close(y, y_ref)
    assert_close(yc, yc_ref)
    (y.sum() + yc.sum()).backward()
    (y_ref.sum() + yc_ref.sum()).backward()
    for a, r in zip(leaves, refs):
        assert_close(a.grad, r.grad, scale=10)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # torch's per-example fallback
def test_vmap_uses_the_custom_op_and_matches(monkeypatch, use_backend, spy):
    use_backend("cpp-sparse")
    monkeypatch.setattr(linear_module, "_EagerMaskedLinear", NotThisPath)
    monkeypatch.setattr(_cpu, "linear_auto", NotThisPath.apply)
    monkeypatch.setattr(conv_module, "_EagerMaskedConv2d", NotThisPath)
    _, w, b = _linear_case()
    m = random_mask(w.shape, 0.3)
    xs = torch.randn(4, 3, 24, dtype=torch.float64)
    _, wc, mc, bc = _conv_case(1, 3, 5, 5, 4, 3, 3, 0.3)
    xcs = torch.randn(3, 2, 3, 5, 5, dtype=torch.float64)
    ys = torch.func.vmap(lambda x: masked_linear(x, w, m, b))(xs)
    ycs = torch.func.vmap(lambda x: masked_conv2d(x, wc, mc, bc, 1, 1))(xcs)
    assert_close(ys, reference.masked_linear(xs, w, m, b))
    assert_close(ycs, torch.stack([reference.masked_conv2d(x, wc, mc, bc, 1, 1) for x in xcs]))
    assert spy.calls["spmm_"] == len(xs) + len(xcs), "one sparse product per example"


def test_fake_tensor_mode_uses_the_custom_op(monkeypatch, spy):
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    monkeypatch.setattr(linear_module, "_EagerMaskedLinear", NotThisPath)
    monkeypatch.setattr(_cpu, "linear_auto", NotThisPath.apply)
    monkeypatch.setattr(conv_module, "_EagerMaskedConv2d", NotThisPath)
    with FakeTensorMode():
        x, w, b = torch.randn(5, 3, 24), torch.randn(10, 24), torch.randn(10)
        m = torch.ones(10, 24, dtype=torch.bool)
        y = masked_linear(x, w, m, b)
        xc, wc = torch.randn(2, 3, 9, 8), torch.randn(4, 3, 3, 2)
        yc = masked_conv2d(xc, wc, torch.ones(wc.shape, dtype=torch.bool), None, (2, 1), 1)
    assert isinstance(y, FakeTensor) and y.shape == (5, 3, 10)
    assert isinstance(yc, FakeTensor) and yc.shape == (2, 4, 5, 9)
    assert not spy.calls, "no kernel runs on fake tensors"


def test_sgd_step_on_the_sparse_path_matches_torch_and_keeps_pruned_weights_zero(monkeypatch, use_backend, spy):
    use_backend("cpp-sparse")
    torch.manual_seed(0)
    sparse = MaskedLinear(32, 16, dtype=torch.float64, mask=random_mask((16, 32), 0.15))
    dense = copy.deepcopy(sparse)
    opts = [torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2) for layer in (sparse, dense)]
    data = [(torch.randn(8, 32, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)) for _ in range(3)]
    for x, target in data:
        for layer, opt, backend in ((sparse, opts[0], "cpp"), (dense, opts[1], "torch")):
            monkeypatch.setenv("LTH_SPARSE_BACKEND", backend)
            opt.zero_grad()
            y = layer(x)
            if layer is sparse:
                assert "MaskedLinearSparse" in y.grad_fn.name(), "the steps run on the sparse path"
            torch.nn.functional.mse_loss(y, target).backward()
            assert not layer.weight.grad[~layer.mask].any(), "pruned weights get exactly zero gradient"
            opt.step()
        assert torch.equal(sparse.weight[~sparse.mask], torch.zeros(int((~sparse.mask).sum()), dtype=torch.float64))
        assert not torch.signbit(sparse.weight[~sparse.mask]).any()
        assert_close(sparse.weight, dense.weight)
        assert_close(sparse.bias, dense.bias)
    assert spy.calls["masked_linear_auto"] == 3 and spy.structures_built() == 1, "one structure for three steps"
