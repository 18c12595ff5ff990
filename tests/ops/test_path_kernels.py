"""The C++ kernels of the path evaluation (``csrc/cpu/path.cpp``: ``lerp_relu_``, ``bias_relu_``) against
plain torch on shapes that break them (vector tails, strided halves of a stacked product, one row, one
column, two threads), and the interpolated weights :class:`lth_sparse.nn.path.PathNetwork` keeps across
passes on the CPU (``lth_sparse.ops.interpolate._cached_weights``): formed again whenever the alphas or
an endpoint tensor change.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lth_sparse._dispatch import cpp_extension
from lth_sparse.models import create_model
from lth_sparse.nn.path import PathNetwork
from lth_sparse.ops import interpolate as interpolate_ops

C = cpp_extension()
needs_extension = pytest.mark.skipif(C is None, reason="the C++ extension lth_sparse._C is not built")
# alphas on both sides of torch.lerp's switch at |w| = 0.5, the switch itself, and extrapolation
ALPHAS = [0.0, 0.05, 0.3, 0.49999997, 0.5, 0.7, 1.0, -0.4, -0.6, 1.6]


def stacked_halves(rows: int, cols: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Both ends' outputs as the path computes them: the two halves of one (rows, 2 * cols) product."""
    both = torch.randn(rows, 2 * cols, dtype=dtype) * 3
    return both[:, :cols], both[:, cols:]


def threads(n: int):
    """Run the block on n intra-op threads."""

    class Threads:
        def __enter__(self):
            self.saved = torch.get_num_threads()
            torch.set_num_threads(n)

        def __exit__(self, *exc):
            torch.set_num_threads(self.saved)

    return Threads()


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows, cols", [(1, 1), (1, 17), (7, 1), (5, 15), (33, 16), (40, 300), (3, 1025)])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_lerp_is_torch_lerp_to_the_last_bit(dtype, rows, cols, num_threads):
    torch.manual_seed(rows * 100 + cols)
    a, b = stacked_halves(rows, cols, dtype)
    alphas = torch.tensor(ALPHAS, dtype=dtype)
    out = torch.full((len(ALPHAS), rows, cols), float("nan"), dtype=dtype)
    with threads(num_threads):
        C.lerp_relu_(out, a, b, alphas, None, False)
    expected = torch.lerp(a.unsqueeze(0), b.unsqueeze(0), alphas.view(-1, 1, 1))
    assert torch.equal(out, expected)


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_lerp_with_bias_and_relu_is_lerp_then_add_then_relu(dtype, bias, num_threads):
    torch.manual_seed(1)
    rows, cols = 37, 45
    a, b = stacked_halves(rows, cols, dtype)
    alphas = torch.tensor(ALPHAS, dtype=torch.float64)  # cast to the layer's dtype, as torch.lerp's weight is
    biases = torch.randn(len(ALPHAS), cols, dtype=dtype) if bias else None
    out = torch.empty(len(ALPHAS), rows, cols, dtype=dtype)
    with threads(num_threads):
        C.lerp_relu_(out, a, b, alphas, biases, True)
    expected = torch.lerp(a.unsqueeze(0), b.unsqueeze(0), alphas.to(dtype).view(-1, 1, 1))
    if bias:
        expected = expected + biases.unsqueeze(1)
    assert torch.equal(out, expected.relu()), "one rounding per step, as lerp, add and relu apart"
    assert (out >= 0).all()


@needs_extension
def test_relu_keeps_nan_and_clamps_infinities_as_torch_relu():
    a = torch.tensor([[float("nan"), float("-inf"), float("inf"), -1.0, 2.0]])
    b = torch.tensor([[0.0, float("-inf"), float("inf"), -1.0, 2.0]])
    out = torch.empty(1, 1, 5)
    C.lerp_relu_(out, a, b, torch.tensor([0.25]), None, True)
    expected = torch.lerp(a, b, 0.25).relu()
    assert torch.equal(out[0].isnan(), expected.isnan())
    assert torch.equal(out[0].nan_to_num(), expected.nan_to_num())
    in_place = torch.tensor([[[float("nan"), float("-inf"), -0.5, 3.0]]])
    expected = (in_place + 1).relu()
    C.bias_relu_(in_place, torch.ones(1, 4), True)
    assert torch.equal(in_place.isnan(), expected.isnan())
    assert torch.equal(in_place.nan_to_num(), expected.nan_to_num())


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_bias_relu_is_add_then_relu_in_place(dtype, relu, num_threads):
    torch.manual_seed(2)
    out = torch.randn(4, 29, 19, dtype=dtype)
    biases = torch.randn(4, 19, dtype=dtype)
    expected = out + biases.unsqueeze(1)
    expected = expected.relu() if relu else expected
    with threads(num_threads):
        returned = C.bias_relu_(out, biases, relu)
    assert returned.data_ptr() == out.data_ptr()
    assert torch.equal(out, expected)


@needs_extension
@pytest.mark.parametrize(
    "call, words",
    [
        (
            lambda: C.lerp_relu_(
                torch.empty(2, 3, 4), torch.randn(3, 4), torch.randn(3, 4).double(), torch.rand(2), None, False
            ),
            "one dtype",
        ),
        (
            lambda: C.lerp_relu_(
                torch.empty(2, 3, 4), torch.randn(3, 4), torch.randn(4, 3).t(), torch.rand(2), None, False
            ),
            "strides",
        ),
        (
            lambda: C.lerp_relu_(
                torch.empty(2, 3, 4), torch.randn(4, 3).t(), torch.randn(4, 3).t(), torch.rand(2), None, False
            ),
            "unit column stride",
        ),
        (
            lambda: C.lerp_relu_(
                torch.empty(2, 4, 3).transpose(1, 2), torch.randn(3, 4), torch.randn(3, 4), torch.rand(2), None, False
            ),
            "contiguous",
        ),
        (
            lambda: C.lerp_relu_(
                torch.empty(3, 3, 4), torch.randn(3, 4), torch.randn(3, 4), torch.rand(2), None, False
            ),
            r"is not \(A, rows, cols\)",
        ),
        (
            lambda: C.lerp_relu_(
                torch.empty(2, 3, 4), torch.randn(3, 4), torch.randn(3, 4), torch.rand(2), torch.randn(2, 3), False
            ),
            "bias must be",
        ),
        (
            lambda: C.lerp_relu_(
                torch.empty(2, 3, 4), torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1]), None, False
            ),
            "alphas must be floating",
        ),
        (
            lambda: C.lerp_relu_(
                torch.empty(2, 3, 4, dtype=torch.float16),
                torch.randn(3, 4).half(),
                torch.randn(3, 4).half(),
                torch.rand(2),
                None,
                False,
            ),
            "float32 or float64",
        ),
        (lambda: C.bias_relu_(torch.empty(2, 3, 4), torch.randn(2, 4).double(), True), "bias must be"),
    ],
)
def test_bad_arguments_raise_and_name_the_fault(call, words):
    with pytest.raises(RuntimeError, match=words):
        call()


def lenet_path():
    torch.manual_seed(0)
    model = create_model("lenet300", (1, 8, 8), 10)
    state_a = copy.deepcopy(model.state_dict())
    torch.manual_seed(1)
    state_b = copy.deepcopy(create_model("lenet300", (1, 8, 8), 10).state_dict())
    return model, state_a, state_b


def loop(model, state_a, state_b, alphas, x):
    outs = []
    for alpha in alphas:
        net = copy.deepcopy(model)
        net.load_state_dict(
            {
                k: torch.lerp(state_a[k], state_b[k], alpha) if state_a[k].is_floating_point() else state_a[k]
                for k in state_a
            }
        )
        outs.append(net.eval()(x))
    return torch.stack(outs)


@pytest.mark.parametrize("cache_bytes", [None, 0])
def test_weights_kept_across_passes_follow_the_alphas_and_the_endpoints(monkeypatch, cache_bytes):
    """The per-alpha weights a layer keeps are formed again for other alphas, and for an endpoint written in
    place; with no room to keep them (cache_bytes 0) each call forms its own: the same values either way."""
    if cache_bytes is not None:
        monkeypatch.setattr(interpolate_ops, "_CACHED_WEIGHT_BYTES", cache_bytes)
    model, state_a, state_b = lenet_path()
    path = PathNetwork(model, copy.deepcopy(state_a), copy.deepcopy(state_b))  # its buffers may be the states' tensors
    x = torch.randn(9, 1, 8, 8)
    for alphas in (
        torch.linspace(0, 1, 5),
        torch.linspace(0, 1, 5),
        torch.tensor([0.2, 0.9, 1.3]),
        torch.linspace(0, 1, 5),
    ):
        torch.testing.assert_close(path(x, alphas), loop(model, state_a, state_b, alphas, x))
    kept = [m._weights for m in path.net.modules() if hasattr(m, "_weights")]
    assert len(kept) == 3
    if cache_bytes == 0:  # only the stacked ends of the first layer (its input is shared)
        assert [sorted(k) for k in kept] == [[True], [], []]
    else:
        assert [sorted(k) for k in kept] == [[True], [False], [False]]
    # an endpoint written in place (its version counter moves): the kept weights are formed again
    fc1, fc2 = path.net.fc1, path.net.fc2
    with torch.no_grad():
        fc2.weight_b.mul_(-1)
        fc1.bias_a.add_(0.5)
    changed_b = dict(state_b, **{"fc2.weight": -state_b["fc2.weight"]})
    changed_a = dict(state_a, **{"fc1.bias": state_a["fc1.bias"] + 0.5})
    alphas = torch.linspace(0, 1, 5)
    torch.testing.assert_close(path(x, alphas), loop(model, changed_a, changed_b, alphas, x))


@pytest.mark.parametrize("order", [False, True])
def test_fused_and_plain_torch_paths_agree(use_backend, order):
    """With the C++ kernels (ends stacked, bias and ReLU in the lerp's pass) and without them (the torch
    backend: torch.lerp, add_, relu_), on a net with a conv, float64: the same values to float64 rounding."""
    torch.manual_seed(3)
    model = create_model("conv2", (1, 10, 10), 5).double()
    state_a = copy.deepcopy(model.state_dict())
    state_b = {k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state_a.items()}
    x = torch.randn(6, 1, 10, 10, dtype=torch.float64)
    alphas = torch.tensor([0.0, 0.3, 0.5, 0.8, 1.0, 1.4], dtype=torch.float64)
    fused = PathNetwork(model, state_a, state_b)(x, alphas, one_alpha_at_a_time=order)
    use_backend("torch")
    plain = PathNetwork(model, state_a, state_b)(x, alphas, one_alpha_at_a_time=order)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused, loop(model, state_a, state_b, alphas, x), rtol=1e-12, atol=1e-12)


def mlp_models():
    """MLPs: masked LeNet-300-100 (on 8x8 inputs), a plain Sequential with a layer without bias and two linear
    layers with no ReLU between them."""
    torch.manual_seed(5)
    plain = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, 12, bias=False),
        torch.nn.ReLU(),
        torch.nn.Linear(12, 9),
        torch.nn.Linear(9, 7),
        torch.nn.ReLU(),
        torch.nn.Linear(7, 4),
    )
    return {"lenet300": create_model("lenet300", (1, 8, 8), 10), "plain": plain}


@pytest.mark.parametrize("name", ["lenet300", "plain"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_mlps_path_equals_the_loop_in_every_order_and_without_the_extension(use_backend, name, dtype):
    model = mlp_models()[name].to(dtype)
    state_a = copy.deepcopy(model.state_dict())
    torch.manual_seed(6)
    state_b = {k: v + 0.2 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state_a.items()}
    path = PathNetwork(model, state_a, state_b)
    x = torch.randn(13, 1, 8, 8, dtype=dtype)
    alphas = torch.tensor([0.0, 0.25, 0.5, 0.6, 1.0, -0.3, 1.2], dtype=dtype)
    expected = loop(model, state_a, state_b, alphas, x)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    for _ in range(2):  # the second pass reuses the layers' results and kept weights
        torch.testing.assert_close(path(x, alphas), expected, **tolerance)
    torch.testing.assert_close(path(x, alphas, one_alpha_at_a_time=True), expected, **tolerance)
    torch.testing.assert_close(path(x, alphas[:1]), expected[:1], **tolerance)
    use_backend("torch")  # torch's ops alone, as where the extension is not built
    torch.testing.assert_close(PathNetwork(model, state_a, state_b)(x, alphas), expected, **tolerance)


def test_shared_activations_count_once_in_the_pass_size():
    """LeNet-300-100's flattened input (784 values) is shared by the alphas; each alpha's own largest
    activation is the first hidden layer's 300 units: 21 alphas x 300 x 4 bytes per example under the CPU budget."""
    from lth_sparse.nn import path as path_module

    model = create_model("lenet300", (1, 28, 28), 10)
    state = copy.deepcopy(model.state_dict())
    path = PathNetwork(model, state, state)
    alphas = torch.linspace(0, 1, 21)
    assert path_module._activation_bytes(path, torch.randn(3, 1, 28, 28), alphas) == (300 * 4, 784 * 4)
    order, size = path_module._pass_order(path, torch.randn(2000, 1, 28, 28), alphas, 1000, False)
    assert (order, size) == (False, path_module._ACTIVATION_BYTES // (21 * 300 * 4))
