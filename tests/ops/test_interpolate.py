import pytest
import torch

from lth_sparse.ops import interpolate, reference
from lth_sparse.ops import interpolated_conv2d as public_interpolated_conv2d
from lth_sparse.ops import interpolated_linear as public_interpolated_linear
from lth_sparse.ops.interpolate import IMPLEMENTED, interpolated_conv2d_op, interpolated_linear_op
from tests.conftest import available_backends
from tests.tolerances import assert_close


def interpolated_linear(x, *args, **kwargs):
    """The public op given the reference's layout, (1 or A, ...): a first dimension of 1 is one input shared by
    every alpha (passed without it), anything else one input per alpha (``input_per_alpha=True``)."""
    if x.shape[0] == 1:
        return public_interpolated_linear(x[0], *args, **kwargs)
    return public_interpolated_linear(x, *args, input_per_alpha=True, **kwargs)


def interpolated_conv2d(x, *args, **kwargs):
    """As :func:`interpolated_linear`, for the conv."""
    if x.shape[0] == 1:
        return public_interpolated_conv2d(x[0], *args, **kwargs)
    return public_interpolated_conv2d(x, *args, input_per_alpha=True, **kwargs)


ALPHAS = [torch.tensor([0.0]), torch.tensor([0.0, 1.0]), torch.linspace(-0.5, 1.5, 5), torch.linspace(0, 1, 21)]


def linear_case(num_inputs, batch, fin, fout, bias, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    return (
        r(num_inputs, *batch, fin),
        r(fout, fin),
        r(fout, fin),
        (r(fout) if bias else None),
        (r(fout) if bias else None),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch,fin,fout", [((), 1, 1), ((3,), 17, 5), ((2, 4), 9, 13), ((0,), 4, 3)])
@pytest.mark.parametrize("alphas", ALPHAS, ids=lambda a: f"A{a.numel()}")
@pytest.mark.parametrize("backend", available_backends(IMPLEMENTED))
def test_interpolated_linear_matches_reference(dtype, shared, bias, batch, fin, fout, alphas, backend, use_backend):
    use_backend(backend)
    alphas = alphas.to(dtype)
    x, wa, wb, ba, bb = linear_case(1 if shared else alphas.numel(), batch, fin, fout, bias, dtype)
    ours = interpolated_linear(x, wa, wb, alphas, ba, bb)
    expected = reference.interpolated_linear(x, wa, wb, alphas, ba, bb)
    assert ours.shape == (alphas.numel(), *batch, fout)
    assert_close(ours, expected, scale=10)


def test_endpoints_are_the_two_networks():
    x, wa, wb, ba, bb = linear_case(1, (6,), 5, 4, True, torch.float64)
    out = interpolated_linear(x, wa, wb, torch.tensor([0.0, 1.0], dtype=torch.float64), ba, bb)
    torch.testing.assert_close(out[0], torch.nn.functional.linear(x[0], wa, ba))
    torch.testing.assert_close(out[1], torch.nn.functional.linear(x[0], wb, bb))


def test_per_alpha_inputs_use_blocks_of_weights(monkeypatch):
    """More alphas than one block holds still give the reference result."""
    monkeypatch.setattr(interpolate, "_MAX_BLOCK", 2)
    alphas = torch.linspace(0, 1, 7)
    x, wa, wb, ba, bb = linear_case(7, (3,), 6, 5, True, torch.float32)
    assert_close(
        interpolated_linear(x, wa, wb, alphas, ba, bb), reference.interpolated_linear(x, wa, wb, alphas, ba, bb)
    )


@pytest.mark.parametrize("shared", [True, False])
def test_interpolated_linear_gradcheck(shared):
    alphas = torch.tensor([0.0, 0.3, 1.2], dtype=torch.float64, requires_grad=True)
    x, wa, wb, ba, bb = linear_case(1 if shared else 3, (2,), 4, 3, True, torch.float64)
    args = [t.requires_grad_() for t in (x, wa, wb)] + [alphas, ba.requires_grad_(), bb.requires_grad_()]
    assert torch.autograd.gradcheck(interpolated_linear, tuple(args))


def conv_case(num_inputs, n, c, h, cout, k, groups, bias, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    return (
        r(num_inputs, n, c, h, h + 1),
        r(cout, c // groups, k, k),
        r(cout, c // groups, k, k),
        r(cout) if bias else None,
        r(cout) if bias else None,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "geometry",
    [
        (1, 1, 1, 1, 1, 1, 0, 1, 1),
        (2, 3, 7, 5, 3, 1, 1, 1, 1),
        (3, 4, 9, 6, 3, 2, 2, 2, 2),
        (0, 2, 5, 2, 3, 1, 0, 1, 1),
    ],
)
@pytest.mark.parametrize("alphas", ALPHAS[:3], ids=lambda a: f"A{a.numel()}")
@pytest.mark.parametrize("backend", available_backends(IMPLEMENTED))
def test_interpolated_conv2d_matches_reference(dtype, shared, bias, geometry, alphas, backend, use_backend):
    use_backend(backend)
    n, c, h, cout, k, stride, padding, dilation, groups = geometry
    alphas = alphas.to(dtype)
    x, wa, wb, ba, bb = conv_case(1 if shared else alphas.numel(), n, c, h, cout, k, groups, bias, dtype)
    ours = interpolated_conv2d(x, wa, wb, alphas, ba, bb, stride, padding, dilation, groups)
    expected = reference.interpolated_conv2d(x, wa, wb, alphas, ba, bb, stride, padding, dilation, groups)
    assert ours.shape == expected.shape
    assert_close(ours, expected, scale=10)


@pytest.mark.parametrize("shared", [True, False])
def test_interpolated_conv2d_gradcheck(shared):
    alphas = torch.tensor([0.2, 0.9], dtype=torch.float64, requires_grad=True)
    x, wa, wb, ba, bb = conv_case(1 if shared else 2, 2, 2, 4, 2, 3, 1, True, torch.float64)
    args = [t.requires_grad_() for t in (x, wa, wb)] + [alphas, ba.requires_grad_(), bb.requires_grad_()]
    assert torch.autograd.gradcheck(lambda *a: interpolated_conv2d(*a, stride=1, padding=1), tuple(args))


def test_opcheck():
    x, wa, wb, ba, bb = linear_case(3, (2,), 4, 5, True, torch.float32)
    alphas = torch.tensor([0.0, 0.5, 1.0])
    torch.library.opcheck(interpolated_linear_op, (x.requires_grad_(), wa.requires_grad_(), wb, alphas, ba, bb))
    torch.library.opcheck(interpolated_linear_op, (x[:1], wa, wb.requires_grad_(), alphas, None, None))
    xc, wa, wb, ba, bb = conv_case(1, 2, 4, 5, 4, 3, 2, True, torch.float32)
    torch.library.opcheck(
        interpolated_conv2d_op,
        (xc.requires_grad_(), wa, wb.requires_grad_(), alphas, ba, bb, [1, 1], [1, 1], [1, 1], 2),
    )


@pytest.mark.parametrize(
    "change,error,words",
    [
        (lambda x, wa, wb, a, ba, bb: (x, wa, wb, a.reshape(1, -1), ba, bb), ValueError, "alphas must be 1-D"),
        (lambda x, wa, wb, a, ba, bb: (x, wa, wb, a[:0], ba, bb), ValueError, "at least one"),
        (lambda x, wa, wb, a, ba, bb: (x[:2], wa, wb, a, ba, bb), ValueError, "first dimension"),
        (lambda x, wa, wb, a, ba, bb: (x, wa, wb[:, :-1], a, ba, bb), ValueError, "weight_b must have"),
        (lambda x, wa, wb, a, ba, bb: (x, wa, wb, a, ba, None), ValueError, "together"),
        (lambda x, wa, wb, a, ba, bb: (x, wa, wb.double(), a, ba, bb), TypeError, "one dtype"),
        (lambda x, wa, wb, a, ba, bb: (x[..., :-1], wa, wb, a, ba, bb), ValueError, "in_features"),
    ],
)
def test_bad_input_names_the_argument(change, error, words):
    args = linear_case(3, (2,), 4, 5, True, torch.float32)
    alphas = torch.tensor([0.0, 0.5, 1.0])
    x, wa, wb, ba, bb = args
    with pytest.raises(error, match=words):
        interpolated_linear(*change(x, wa, wb, alphas, ba, bb))


def test_a_batch_as_large_as_the_number_of_alphas_is_still_one_shared_batch():
    """The input convention is a keyword, never guessed: 3 examples and 3 alphas used to read as one per alpha."""
    x, wa, wb, ba, bb = linear_case(1, (3,), 4, 5, True, torch.float64)
    alphas = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    out = public_interpolated_linear(x[0], wa, wb, alphas, ba, bb)
    assert out.shape == (3, 3, 5)
    for i, a in enumerate(alphas):
        torch.testing.assert_close(
            out[i], torch.nn.functional.linear(x[0], torch.lerp(wa, wb, a), torch.lerp(ba, bb, a))
        )
    per_alpha = public_interpolated_linear(x[0], wa, wb, alphas, ba, bb, input_per_alpha=True)
    assert per_alpha.shape == (3, 5), "row i of the batch through the layer at alphas[i]"
    torch.testing.assert_close(per_alpha[1], out[1, 1])


@pytest.mark.parametrize(
    "op, x", [(public_interpolated_linear, torch.randn(2, 4)), (public_interpolated_conv2d, torch.randn(2, 1, 3, 5, 5))]
)
def test_per_alpha_inputs_need_one_input_per_alpha(op, x):
    w = torch.randn(5, 4) if op is public_interpolated_linear else torch.randn(2, 3, 3, 3)
    with pytest.raises(ValueError, match="must be 3 \\(the number of alphas\\)"):
        op(x, w, w.clone(), torch.tensor([0.0, 0.5, 1.0]), input_per_alpha=True)
    with pytest.raises(TypeError, match="input_per_alpha must be True or False"):
        op(x, w, w.clone(), torch.tensor([0.0, 0.5, 1.0]), input_per_alpha="yes")
