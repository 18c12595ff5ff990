"""The Triton interpolated-evaluation forward kernels against a plain-torch loop over alphas.

Runs under ``TRITON_INTERPRET=1`` on CPU tensors (CI) or on a CUDA device; skipped otherwise. The
reference (for each alpha, ``F.linear`` / ``F.conv2d`` with the interpolated weight and bias) is
evaluated in float64 and rounded to the tested dtype once, so the tolerances of ``tests/tolerances.py``
bound the kernels' own error. Both kernel modes are covered: per-alpha inputs (first dimension A, the
weight interpolated on load) and a shared input (first dimension 1, two accumulators lerped in the
epilogue). Shapes are tiny: the interpreter is slow.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("the Triton kernels need a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)
pytest.importorskip("triton")

from lth_sparse.kernels import _tiles as tiles  # noqa: E402
from lth_sparse.kernels import interpolate as kernels  # noqa: E402
from lth_sparse.ops import reference  # noqa: E402
from tests.tolerances import assert_close, full_precision_float32  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
ALPHAS = [-0.5, 0.25, 1.5]  # outside [0, 1] on both sides: extrapolation must work too
MODES = ["shared", "per-alpha"]


@pytest.fixture(autouse=True)
def _full_precision_float32():
    # TF32 is a legitimate choice of the kernels where torch allows it, but not what these tolerances test.
    with full_precision_float32():
        yield


def random_pair(weight_shape, input_shape, dtype, bias=True, seed=0):
    """(input, weight_a, weight_b, bias_a, bias_b): normal entries, weights scaled by fan_in**-0.5 as layers are.

    The scaling keeps outputs O(1) at every size, so that the absolute tolerances mean the same on the
    GPU test's long reductions (where the interpolated weight's rounding to bfloat16 adds up) as here.
    """
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE, dtype)  # noqa: E731
    fan_in = max(1, torch.Size(weight_shape[1:]).numel())
    x = r(*input_shape)
    w_a, w_b = (torch.randn(weight_shape, generator=g).div(fan_in**0.5).to(DEVICE, dtype) for _ in range(2))
    b_a, b_b = (r(weight_shape[0]), r(weight_shape[0])) if bias else (None, None)
    return x, w_a, w_b, b_a, b_b


def as_alphas(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype, device=DEVICE)


def float64_reference(op, x, w_a, w_b, alphas, b_a, b_b, **geometry):
    """``op`` (a loop over alphas with the interpolated weights) in float64, rounded once to x's dtype."""
    wide = [None if t is None else t.double() for t in (x, w_a, w_b, alphas, b_a, b_b)]
    return op(*wide, **geometry).to(x.dtype)


def num_inputs(mode: str, num_alphas: int) -> int:
    return 1 if mode == "shared" else num_alphas


# ----------------------------------------------------------------------------------------------------- linear


def check_linear(x, w_a, w_b, alphas, b_a, b_b):
    y = kernels.interpolated_linear_forward(x, w_a, w_b, alphas, b_a, b_b)
    expected = float64_reference(reference.interpolated_linear, x, w_a, w_b, alphas, b_a, b_b)
    assert y.dtype == x.dtype and y.shape == expected.shape == (alphas.numel(), *x.shape[1:-1], w_a.shape[0])
    assert y.is_contiguous()
    assert_close(y, expected, dtype=x.dtype)
    return y


LINEAR_SHAPES = [  # (leading batch shape, in_features, out_features); 33 and 37 cross the 32-wide test tile
    ((), 1, 1),
    ((3,), 17, 5),
    ((2, 17), 19, 37),
    ((33,), 40, 3),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("batch,fin,fout", LINEAR_SHAPES)
def test_linear_matches_reference(batch, fin, fout, bias, mode, dtype):
    x, w_a, w_b, b_a, b_b = random_pair((fout, fin), (num_inputs(mode, 3), *batch, fin), dtype, bias)
    check_linear(x, w_a, w_b, as_alphas(ALPHAS), b_a, b_b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_single_alpha_matches_reference(dtype):
    x, w_a, w_b, b_a, b_b = random_pair((7, 18), (1, 5, 18), dtype)
    check_linear(x, w_a, w_b, as_alphas([0.7]), b_a, b_b)


def test_linear_many_alphas_with_shared_input_write_every_output():
    x, w_a, w_b, b_a, b_b = random_pair((9, 11), (1, 4, 11), torch.float32)
    y = check_linear(x, w_a, w_b, torch.linspace(-1, 2, 13, device=DEVICE), b_a, b_b)
    assert (y[1:] != y[:-1]).any(dim=(1, 2)).all(), "each alpha has its own output"


@pytest.mark.parametrize("mode", MODES)
def test_linear_endpoints_are_the_two_layers(mode):
    x, w_a, w_b, b_a, b_b = random_pair((6, 10), (num_inputs(mode, 2), 3, 10), torch.float64)
    y = kernels.interpolated_linear_forward(x, w_a, w_b, as_alphas([0.0, 1.0], torch.float64), b_a, b_b)
    assert_close(y[0], torch.nn.functional.linear(x[0], w_a, b_a))
    assert_close(y[1], torch.nn.functional.linear(x[-1], w_b, b_b))


def test_shared_input_and_the_same_input_per_alpha_agree():
    x, w_a, w_b, b_a, b_b = random_pair((21, 13), (1, 6, 13), torch.float32)
    alphas = as_alphas(ALPHAS)
    shared = kernels.interpolated_linear_forward(x, w_a, w_b, alphas, b_a, b_b)
    per_alpha = kernels.interpolated_linear_forward(x.expand(3, 6, 13), w_a, w_b, alphas, b_a, b_b)  # stride 0
    assert_close(shared, per_alpha)
    assert_close(shared, float64_reference(reference.interpolated_linear, x, w_a, w_b, alphas, b_a, b_b))


@pytest.mark.parametrize("mode", MODES)
def test_linear_accepts_strided_views_and_alphas_of_another_dtype(mode):
    x, w_a, w_b, b_a, b_b = random_pair((11, 9), (num_inputs(mode, 3), 9, 2, 5), torch.float32)
    x = x.transpose(1, 3)  # (A or 1, 5, 2, 9), not contiguous
    w_b = w_b.t().contiguous().t()  # column-major
    b_a = torch.stack([b_a, torch.full_like(b_a, float("nan"))], 1)[:, 0]  # stride 2, NaN between
    check_linear(x, w_a, w_b, as_alphas(ALPHAS, torch.float64), b_a, b_b)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "batch,fin,fout",
    [((0,), 4, 3), ((2, 0), 4, 3), ((3,), 0, 4), ((3,), 4, 0)],
    ids=["empty-batch", "empty-inner-batch", "no-in-features", "no-out-features"],
)
def test_linear_empty_problems_give_the_interpolated_bias_or_nothing(batch, fin, fout, mode):
    x, w_a, w_b, b_a, b_b = random_pair((fout, fin), (num_inputs(mode, 3), *batch, fin), torch.float32)
    check_linear(x, w_a, w_b, as_alphas(ALPHAS), b_a, b_b)
    check_linear(x, w_a, w_b, as_alphas(ALPHAS), None, None)


# ------------------------------------------------------------------------------------------------------- conv

CONV_GEOMETRIES = {  # input shape (without the alpha dimension), weight shape, stride, padding, dilation, groups
    "3x3-pad1": ((2, 4, 7, 6), (6, 4, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    "stride2-rect": ((1, 3, 9, 8), (5, 3, 3, 2), (2, 2), (1, 0), (1, 1), 1),
    "groups2-dilation": ((2, 4, 9, 9), (6, 2, 3, 3), (1, 2), (2, 1), (2, 1), 2),
    "5x5-stride3": ((2, 3, 6, 6), (4, 3, 5, 5), (3, 3), (2, 2), (1, 1), 1),
    "1x1-depthwise": ((1, 3, 5, 5), (3, 1, 1, 1), (1, 1), (0, 0), (1, 1), 3),
}


def check_conv(
    input_shape,
    weight_shape,
    stride,
    padding,
    dilation,
    groups,
    dtype,
    mode,
    alphas=ALPHAS,
    bias=True,
    channels_last=False,
):
    alphas = as_alphas(alphas)
    x, w_a, w_b, b_a, b_b = random_pair(weight_shape, (num_inputs(mode, alphas.numel()), *input_shape), dtype, bias)
    if channels_last:  # (A, N, C, H, W) with C innermost
        x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    geometry = dict(stride=list(stride), padding=list(padding), dilation=list(dilation), groups=groups)
    y = kernels.interpolated_conv2d_forward(x, w_a, w_b, alphas, b_a, b_b, *geometry.values())
    expected = float64_reference(reference.interpolated_conv2d, x, w_a, w_b, alphas, b_a, b_b, **geometry)
    assert y.dtype == dtype and y.shape == expected.shape and y.is_contiguous()
    assert_close(y, expected, dtype=dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("name", CONV_GEOMETRIES)
def test_conv_matches_reference(name, bias, mode):
    check_conv(*CONV_GEOMETRIES[name], torch.float32, mode, bias=bias)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_conv_matches_reference_in_every_dtype(dtype, mode):
    check_conv(*CONV_GEOMETRIES["groups2-dilation"], dtype, mode)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_conv_single_alpha_matches_reference(dtype):
    check_conv(*CONV_GEOMETRIES["stride2-rect"], dtype, "per-alpha", alphas=[1.25])


@pytest.mark.parametrize("mode", MODES)
def test_conv_accepts_channels_last_input(mode):
    check_conv(*CONV_GEOMETRIES["3x3-pad1"], torch.float32, mode, channels_last=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_conv_empty_batch_gives_an_empty_output(bias, mode):
    check_conv((0, 4, 5, 5), (2, 4, 3, 3), (1, 1), (1, 1), (1, 1), 1, torch.float32, mode, bias=bias)


# ------------------------------------------------------------------------------------- 64-bit index arithmetic


@pytest.mark.parametrize("mode", MODES)
def test_64_bit_indexing_gives_the_same_results(monkeypatch, mode):
    # Tensors past 2**31 elements switch the kernels to 64-bit offsets; too big for CI, so force the switch.
    monkeypatch.setattr(tiles, "needs_int64", lambda *tensors: True)
    x, w_a, w_b, b_a, b_b = random_pair((5, 7), (num_inputs(mode, 3), 4, 7), torch.float32)
    check_linear(x, w_a, w_b, as_alphas(ALPHAS), b_a, b_b)
    check_conv(*CONV_GEOMETRIES["stride2-rect"], torch.float32, mode)


# ------------------------------------------------------------------------------------------------------ tiles


@pytest.mark.parametrize("fma", [False, True], ids=["tensor-cores", "fma"])
def test_shared_mode_is_tuned_only_over_tiles_that_hold_two_accumulators(fma):
    configs = tiles.autotuned(kernels._interpolated_gemm_kernel, ("M",), fma, kernels._fits_two_accumulators).configs
    assert configs, "the shared mode needs at least one tile to tune over"
    for c in configs:
        outputs = c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"]
        # per thread: two float32 accumulators within 128 registers; float64 FMA tiles no larger than 32 x 32
        assert outputs <= 32 * 32 if fma else 2 * outputs <= 128 * 32 * c.num_warps
    assert len(tiles.autotuned(kernels._interpolated_gemm_kernel, ("M",), fma).configs) >= len(configs)


# -------------------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_layer_sized_problems_match_reference_on_gpu(mode, dtype):
    alphas = torch.linspace(-0.5, 1.5, 11, device=DEVICE)
    a = alphas.numel()
    x, w_a, w_b, b_a, b_b = random_pair((300, 784), (num_inputs(mode, a), 128, 784), dtype)
    check_linear(x, w_a, w_b, alphas, b_a, b_b)
    x, w_a, w_b, _, _ = random_pair((1000, 512), (num_inputs(mode, a), 2, 33, 512), dtype, bias=False)
    check_linear(x, w_a, w_b, alphas, None, None)
    check_conv((16, 64, 16, 16), (128, 64, 3, 3), (1, 1), (1, 1), (1, 1), 1, dtype, mode, alphas=alphas.tolist())
    check_conv((8, 64, 15, 15), (64, 32, 3, 3), (2, 2), (1, 1), (1, 1), 2, dtype, mode, alphas=alphas.tolist())
