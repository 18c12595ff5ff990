import pytest
import torch

from lth_sparse.ops import masked_linear, reference
from lth_sparse.ops.masked_linear import IMPLEMENTED, _masked_linear
from tests.conftest import backend_variants
from tests.tolerances import assert_close

SHAPES = [  # (leading batch shape, in_features, out_features)
    ((1,), 1, 1),
    ((3,), 17, 5),
    ((2, 5), 65, 129),
    ((0,), 8, 3),
    ((7,), 0, 4),
    ((), 6, 2),
]
DENSITIES = [1.0, 0.5, 0.1, 0.01, 0.0]


def make(batch, fin, fout, density, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, fin, generator=g).to(dtype)
    w = torch.randn(fout, fin, generator=g).to(dtype)
    m = torch.rand(fout, fin, generator=g) < density
    b = torch.randn(fout, generator=g).to(dtype) if bias else None
    return x, w, m, b


@pytest.mark.parametrize("backend", backend_variants(IMPLEMENTED))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("batch,fin,fout", SHAPES)
def test_forward_and_backward_match_reference(backend, dtype, density, batch, fin, fout, use_backend):
    use_backend(backend)
    x, w, m, b = make(batch, fin, fout, density, dtype)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    refs = [t.clone().requires_grad_() for t in (x, w, b)]
    y = masked_linear(leaves[0], leaves[1], m, leaves[2])
    y_ref = reference.masked_linear(refs[0], refs[1], m, refs[2])
    assert_close(y, y_ref)
    grad = torch.randn_like(y_ref)
    y.backward(grad)
    y_ref.backward(grad)
    for ours, theirs in zip(leaves, refs):
        assert_close(ours.grad, theirs.grad, dtype=dtype, scale=4)
    assert not leaves[1].grad[~m].any(), "pruned weights must get zero gradient"


def test_pruned_weights_never_reach_the_output():
    x, w, m, b = make((4,), 9, 6, 0.5, torch.float32)
    w[~m] = float("nan")
    w2 = w.clone()
    w2[~m] = float("inf")
    y = masked_linear(x, w, m, b)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, masked_linear(x, w2, m, b))
    torch.testing.assert_close(y, reference.masked_linear(x, torch.where(m, w, 0), m, b))


def test_weight_gradient_is_zero_at_full_sparsity_and_bias_still_learns():
    x, w, m, b = make((5,), 4, 3, 0.0, torch.float32)
    w.requires_grad_()
    b.requires_grad_()
    masked_linear(x, w, m, b).sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))
    torch.testing.assert_close(b.grad, torch.full_like(b, 5.0))


def test_gradcheck_float64():
    x, w, m, b = make((3,), 5, 4, 0.6, torch.float64)
    args = [t.requires_grad_() for t in (x, w)] + [m, b.requires_grad_()]

    def fn(x, w, b):
        return masked_linear(x, w, m, b)

    assert torch.autograd.gradcheck(fn, (args[0], args[1], args[3]))


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    x, w, m, b = make((3, 2), 7, 5, 0.5, torch.float32, bias=bias)
    torch.library.opcheck(_masked_linear, (x.requires_grad_(), w.requires_grad_(), m, b))


def test_torch_compile_matches_eager():
    x, w, m, b = make((4,), 8, 3, 0.5, torch.float32)
    compiled = torch.compile(masked_linear, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, w, m, b), masked_linear(x, w, m, b))


@pytest.mark.parametrize(
    "change,error,words",
    [
        (lambda x, w, m, b: (x, w, m.float(), b), TypeError, "mask must be a bool"),
        (lambda x, w, m, b: (x, w, m[:, :-1], b), ValueError, "mask must have the weight's shape"),
        (lambda x, w, m, b: (x[:, :-1], w, m, b), ValueError, "input must be"),
        (lambda x, w, m, b: (x.double(), w, m, b), TypeError, "one dtype"),
        (lambda x, w, m, b: (x, w, m, b[:-1]), ValueError, "bias must have shape"),
        (lambda x, w, m, b: (x, w.long(), m, b), TypeError, "weight must be a floating"),
        (lambda x, w, m, b: (x, w, m, b.to("meta")), RuntimeError, "one device"),
    ],
)
def test_bad_input_names_the_argument(change, error, words):
    with pytest.raises(error, match=words):
        masked_linear(*change(*make((2,), 5, 3, 0.5, torch.float32)))


@pytest.mark.parametrize("backend", backend_variants(IMPLEMENTED))
@pytest.mark.parametrize("moving", ["input", "weight", "bias", "all"])
@pytest.mark.parametrize("batch", [(6,), (2, 3)])
def test_forward_mode_ad_matches_reference(backend, moving, batch, use_backend):
    # dual tensors: the C++ layer hands them to the Python Function, whose jvp gives the tangent
    import torch.autograd.forward_ad as fwAD

    use_backend(backend)
    x, w, m, b = make(batch, 9, 5, 0.4, torch.float64)
    tangents = [
        torch.randn_like(t) if moving in (name, "all") else None
        for name, t in (("input", x), ("weight", w), ("bias", b))
    ]
    with fwAD.dual_level():
        args = [t if d is None else fwAD.make_dual(t, d) for t, d in zip((x, w, b), tangents)]
        y = fwAD.unpack_dual(masked_linear(args[0], args[1], m, args[2]))
        y_ref = fwAD.unpack_dual(reference.masked_linear(args[0], args[1], m, args[2]))
    assert_close(y.primal, y_ref.primal)
    assert_close(y.tangent, y_ref.tangent)
