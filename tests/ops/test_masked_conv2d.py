import pytest
import torch

from lth_sparse.ops import masked_conv2d, reference
from lth_sparse.ops.masked_conv2d import IMPLEMENTED, _masked_conv2d
from tests.conftest import backend_variants
from tests.tolerances import assert_close

GEOMETRIES = [  # (N, C, H, W, C_out, k, stride, padding, dilation, groups)
    (1, 1, 1, 1, 1, 1, 1, 0, 1, 1),
    (2, 3, 7, 9, 5, 3, 1, 1, 1, 1),
    (3, 4, 11, 6, 6, 3, 2, 2, 2, 2),
    (2, 6, 8, 8, 6, 3, 1, 1, 1, 6),
    (0, 3, 5, 5, 4, 3, 1, 0, 1, 1),
    (2, 16, 5, 5, 32, 1, 1, 0, 1, 1),
]


def make(n, c, h, w, cout, k, groups, density, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    wt = torch.randn(cout, c // groups, k, k, generator=g).to(dtype)
    m = torch.rand(wt.shape, generator=g) < density
    b = torch.randn(cout, generator=g).to(dtype)
    return x, wt, m, b


@pytest.mark.parametrize("backend", backend_variants(IMPLEMENTED))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, 0.01, 0.0])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_forward_and_backward_match_reference(backend, dtype, density, geometry, use_backend):
    use_backend(backend)
    n, c, h, w, cout, k, stride, padding, dilation, groups = geometry
    x, wt, m, b = make(n, c, h, w, cout, k, groups, density, dtype)
    ours = [t.clone().requires_grad_() for t in (x, wt, b)]
    refs = [t.clone().requires_grad_() for t in (x, wt, b)]
    y = masked_conv2d(ours[0], ours[1], m, ours[2], stride, padding, dilation, groups)
    y_ref = reference.masked_conv2d(refs[0], refs[1], m, refs[2], stride, padding, dilation, groups)
    assert_close(y, y_ref)
    grad = torch.randn_like(y_ref)
    y.backward(grad)
    y_ref.backward(grad)
    for a, r in zip(ours, refs):
        assert_close(a.grad, r.grad, dtype=dtype, scale=10)
    assert not ours[1].grad[~m].any()


def test_unbatched_input_matches_reference():
    x, wt, m, b = make(1, 3, 6, 6, 4, 3, 1, 0.5, torch.float32)
    x = x[0].requires_grad_()
    y = masked_conv2d(x, wt, m, b, padding=1)
    torch.testing.assert_close(y, reference.masked_conv2d(x, wt, m, b, 1, 1))
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_gradcheck_float64():
    x, wt, m, b = make(2, 2, 5, 5, 3, 3, 1, 0.6, torch.float64)
    assert torch.autograd.gradcheck(
        lambda x, w, b: masked_conv2d(x, w, m, b, 2, 1), (x.requires_grad_(), wt.requires_grad_(), b.requires_grad_())
    )


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    x, wt, m, b = make(2, 4, 6, 6, 4, 3, 2, 0.5, torch.float32)
    torch.library.opcheck(
        _masked_conv2d, (x.requires_grad_(), wt.requires_grad_(), m, b if bias else None, [1, 2], [1, 0], [1, 1], 2)
    )


@pytest.mark.parametrize(
    "change,error,words",
    [
        (lambda x, w, m, b: (x, w, m.int(), b), TypeError, "mask must be a bool"),
        (lambda x, w, m, b: (x, w, m[:1], b), ValueError, "mask must have the weight's shape"),
        (lambda x, w, m, b: (x[:, :1], w, m, b), ValueError, "channels"),
        (lambda x, w, m, b: (x.flatten(1), w, m, b), ValueError, "input must be"),
        (lambda x, w, m, b: (x, w, m, b[:1]), ValueError, "bias must have shape"),
    ],
)
def test_bad_input_names_the_argument(change, error, words):
    with pytest.raises(error, match=words):
        masked_conv2d(*change(*make(2, 3, 5, 5, 4, 3, 1, 0.5, torch.float32)))


def test_string_padding_is_refused_by_the_op():
    x, wt, m, b = make(1, 3, 5, 5, 4, 3, 1, 0.5, torch.float32)
    with pytest.raises(ValueError, match="padding"):
        masked_conv2d(x, wt, m, b, padding="same")


@pytest.mark.parametrize("backend", backend_variants(IMPLEMENTED))
@pytest.mark.parametrize("moving", ["input", "weight", "bias", "all"])
def test_forward_mode_ad_matches_reference(backend, moving, use_backend):
    import torch.autograd.forward_ad as fwAD

    use_backend(backend)
    x, wt, m, b = make(2, 3, 7, 6, 4, 3, 1, 0.4, torch.float64)
    tangents = [
        torch.randn_like(t) if moving in (name, "all") else None
        for name, t in (("input", x), ("weight", wt), ("bias", b))
    ]
    with fwAD.dual_level():
        args = [t if d is None else fwAD.make_dual(t, d) for t, d in zip((x, wt, b), tangents)]
        y = fwAD.unpack_dual(masked_conv2d(args[0], args[1], m, args[2], 2, 1))
        y_ref = fwAD.unpack_dual(reference.masked_conv2d(args[0], args[1], m, args[2], 2, 1))
    assert_close(y.primal, y_ref.primal)
    assert_close(y.tangent, y_ref.tangent)
