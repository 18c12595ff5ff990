"""The Triton masked-matmul kernels against the plain-torch reference: forward and all three gradients.

Runs under ``TRITON_INTERPRET=1`` on CPU tensors (CI) or on a CUDA device; skipped otherwise. The
reference is evaluated in float64 and rounded to the tested dtype once, so the tolerances of
``tests/tolerances.py`` bound the kernels' own error. Shapes are small: the interpreter is slow.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("the Triton kernels need a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)
pytest.importorskip("triton")

from lth_sparse.kernels import masked_matmul as kernels  # noqa: E402
from lth_sparse.ops import reference  # noqa: E402
from tests.tolerances import assert_close, full_precision_float32  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def _full_precision_float32():
    # TF32 is a legitimate choice of the kernels where torch allows it, but not what these tolerances test.
    with full_precision_float32():
        yield


def random_layer(weight_shape, input_shape, density, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(input_shape, generator=g).to(DEVICE, dtype)
    w = torch.randn(weight_shape, generator=g).to(DEVICE, dtype)
    m = (torch.rand(weight_shape, generator=g) < density).to(DEVICE)
    b = torch.randn(weight_shape[0], generator=g).to(DEVICE, dtype) if bias else None
    return x, w, m, b


def reference_with_grads(op, x, w, m, b, grad, **geometry):
    """``op``'s output and (dX, dW, db) by autograd, in float64, rounded to x's dtype."""
    leaves = [None if t is None else t.double().requires_grad_() for t in (x, w, b)]
    y = op(leaves[0], leaves[1], m, leaves[2], **geometry)
    y.backward(grad.double())
    return [
        None if t is None else t.to(x.dtype)
        for t in (y, leaves[0].grad, leaves[1].grad, None if b is None else leaves[2].grad)
    ]


def check_linear(x, w, m, b, grad_scale=4.0):
    y = kernels.masked_linear_forward(x, w, m, b)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, x.dtype)
    y_ref, dx_ref, dw_ref, db_ref = reference_with_grads(reference.masked_linear, x, w, m, b, grad)
    dx, dw, db = kernels.masked_linear_backward(grad, x, w, m, True, True, b is not None)
    assert y.dtype == x.dtype and y.shape == y_ref.shape
    assert_close(y, y_ref, dtype=x.dtype)
    assert_close(dx, dx_ref, dtype=x.dtype, scale=grad_scale)
    assert_close(dw, dw_ref, dtype=x.dtype, scale=grad_scale)
    if b is not None:
        assert_close(db, db_ref, dtype=x.dtype, scale=grad_scale)
    assert not dw[~m].any(), "pruned weights must get zero gradient"


# ----------------------------------------------------------------------------------------------------- linear

LINEAR_SHAPES = [  # (leading input shape, in_features, out_features)
    ((1,), 1, 1),
    ((3,), 17, 5),
    ((33,), 65, 129),
    ((2, 3), 7, 9),
    ((0,), 8, 3),
    ((4,), 0, 3),
    ((), 6, 2),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,fin,fout", LINEAR_SHAPES)
def test_linear_forward_and_gradients_match_reference(lead, fin, fout, dtype):
    check_linear(*random_layer((fout, fin), (*lead, fin), 0.5, dtype))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.01, 0.0])
def test_linear_matches_reference_at_every_density(density, bias):
    check_linear(*random_layer((19, 37), (2, 3, 37), density, torch.float32, bias=bias))


def test_linear_pruned_inf_and_nan_weights_never_reach_output_or_gradient():
    x, w, m, b = random_layer((9, 21), (5, 21), 0.5, torch.float32)
    clean = torch.where(m, w, 0)
    w = w.masked_fill(~m, float("nan"))
    w[0, ~m[0]] = float("inf")
    y = kernels.masked_linear_forward(x, w, m, b)
    assert_close(y, reference.masked_linear(x, clean, m, b))
    dx, _, _ = kernels.masked_linear_backward(torch.ones_like(y), x, w, m, True, False, False)
    assert_close(dx, torch.ones_like(y) @ clean)


def test_linear_accepts_strided_views_bias_and_expanded_gradients():
    x, w, m, b = random_layer((13, 11), (2, 11, 7), 0.5, torch.float32)
    x = x.transpose(1, 2)  # (2, 7, 11), not contiguous
    w_t = w.t().contiguous().t()  # (13, 11) with column-major strides
    m_t = m.t().contiguous().t()
    b = torch.stack([b, torch.full_like(b, float("nan"))], 1)[:, 0]  # stride 2, NaN between
    y = kernels.masked_linear_forward(x, w_t, m_t, b)
    assert_close(y, reference.masked_linear(x, w, m, b))
    grad = torch.randn(13, device=DEVICE).expand(2, 7, 13)  # stride 0, as from y.sum() style backward
    dx, dw, db = kernels.masked_linear_backward(grad, x, w_t, m_t, True, True, True)
    _, dx_ref, dw_ref, db_ref = reference_with_grads(reference.masked_linear, x, w, m, b, grad)
    assert_close(dx, dx_ref, scale=4)
    assert_close(dw, dw_ref, scale=4)
    assert_close(db, db_ref, scale=4)


@pytest.mark.parametrize(
    "need", [(True, False, False), (False, True, False), (False, False, True), (False, True, True)]
)
def test_linear_returns_only_the_requested_gradients(need):
    x, w, m, b = random_layer((6, 10), (4, 10), 0.5, torch.float32)
    grad = torch.randn(4, 6, device=DEVICE)
    _, *expected = reference_with_grads(reference.masked_linear, x, w, m, b, grad)
    for got, want, needed in zip(kernels.masked_linear_backward(grad, x, w, m, *need), expected, need):
        if needed:
            assert_close(got, want, scale=4)
        else:
            assert got.numel() == 0


def test_split_k_weight_gradient_and_bias_gradient_match_one_pass():
    # On a GPU split-K is chosen for long reductions with few output tiles; force it here.
    x, w, m, _ = random_layer((7, 20), (70, 20), 0.5, torch.float32)
    grad = torch.randn(70, 7, device=DEVICE)
    dw, db = kernels._masked_gemm(
        grad, (1, 7), x, (20, 1), (20, 1), 7, 20, 70, (7, 20), c_mask=m, c_mask_strides=(20, 1), row_sum=True, split_k=3
    )
    assert_close(dw, (grad.t().double() @ x.double()).float() * m)
    assert_close(db, grad.sum(0))


# ------------------------------------------------------------------------------------------------------- conv

CONV_GEOMETRIES = {  # input shape, weight shape, stride, padding, dilation, groups
    "3x3-pad1": ((2, 4, 7, 7), (6, 4, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    "stride2-rect": ((1, 3, 9, 8), (5, 3, 3, 2), (2, 2), (1, 0), (1, 1), 1),
    "groups2-dilation": ((2, 4, 9, 9), (6, 2, 3, 3), (1, 2), (2, 1), (2, 1), 2),
    "5x5-stride3": ((2, 3, 6, 6), (4, 3, 5, 5), (3, 3), (2, 2), (1, 1), 1),
    "1x1-unbatched": ((3, 5, 5), (2, 3, 1, 1), (1, 1), (0, 0), (1, 1), 1),
    "empty-batch": ((0, 4, 5, 5), (2, 4, 3, 3), (1, 1), (1, 1), (1, 1), 1),
}


def check_conv(
    input_shape, weight_shape, stride, padding, dilation, groups, dtype, density=0.5, bias=True, channels_last=False
):
    x, w, m, b = random_layer(weight_shape, input_shape, density, dtype, bias=bias)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    geometry = dict(stride=list(stride), padding=list(padding), dilation=list(dilation), groups=groups)
    y = kernels.masked_conv2d_forward(x, w, m, b, **geometry)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    y_ref, dx_ref, dw_ref, db_ref = reference_with_grads(reference.masked_conv2d, x, w, m, b, grad, **geometry)
    dx, dw, db = kernels.masked_conv2d_backward(grad, x, w, m, *geometry.values(), True, True, bias)
    assert y.dtype == dtype and y.shape == y_ref.shape and dx.shape == x.shape and dw.shape == w.shape
    assert_close(y, y_ref, dtype=dtype)
    assert_close(dx, dx_ref, dtype=dtype, scale=4)
    assert_close(dw, dw_ref, dtype=dtype, scale=4)
    if bias:
        assert_close(db, db_ref, dtype=dtype, scale=4)
    assert not dw[~m].any(), "pruned weights must get zero gradient"


@pytest.mark.parametrize("name", CONV_GEOMETRIES)
def test_conv_forward_and_gradients_match_reference(name):
    check_conv(*CONV_GEOMETRIES[name], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_conv_matches_reference_in_every_dtype(dtype):
    check_conv(*CONV_GEOMETRIES["groups2-dilation"], dtype)


@pytest.mark.parametrize("density,bias", [(1.0, False), (0.0, True), (0.01, False)])
def test_conv_matches_reference_at_extreme_densities(density, bias):
    check_conv(*CONV_GEOMETRIES["stride2-rect"], torch.float32, density=density, bias=bias)


def test_conv_accepts_channels_last_input():
    check_conv(*CONV_GEOMETRIES["3x3-pad1"], torch.float32, channels_last=True)


def test_conv_split_k_weight_gradient_matches_one_pass():
    x, w, m, _ = random_layer((4, 2, 3, 3), (2, 4, 6, 6), 0.5, torch.float32)
    grad = torch.randn(2, 4, 6, 6, device=DEVICE)
    _, _, dw_ref, db_ref = reference_with_grads(
        reference.masked_conv2d, x, w, m, torch.zeros(4, device=DEVICE), grad, stride=1, padding=1, groups=2
    )
    dw, db = kernels._conv_weight_grad(grad, x, m, 2, (1, 1, 1, 1, 1, 1), True, False, split_k=3)
    assert_close(dw, dw_ref, scale=4)
    assert_close(db, db_ref, scale=4)


# -------------------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_layer_sized_problems_match_reference_on_gpu(dtype):
    check_linear(*random_layer((768, 1024), (4, 256, 1024), 0.2, dtype), grad_scale=8)
    check_conv((16, 64, 28, 28), (128, 64, 3, 3), (1, 1), (1, 1), (1, 1), 1, dtype)  # dW takes split-K here
    check_conv((8, 64, 28, 28), (64, 32, 3, 3), (2, 2), (1, 1), (1, 1), 2, dtype)
