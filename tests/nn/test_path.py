"""PathNetwork / evaluate_path against loading each interpolated state dict."""

import copy

import pytest
import torch

from lth_sparse.masks import Masks
from lth_sparse.models import create_model
from lth_sparse.nn.path import PathNetwork, evaluate_path

MODELS = [
    ("lenet300", (1, 28, 28), {}),
    ("mlp", (40,), {"depth": 2, "width": 16}),
    ("conv2", (1, 12, 12), {}),
    ("lenet5", (1, 28, 28), {}),
    ("resnet20", (3, 16, 16), {"width": 4}),
    ("vgg11", (3, 16, 16), {}),
]


def endpoints(name, shape, options, seed_b=1):
    torch.manual_seed(0)
    model = create_model(name, shape, 10, **options)
    state_a = copy.deepcopy(model.state_dict())
    torch.manual_seed(seed_b)
    other = create_model(name, shape, 10, **options)
    for key, value in other.state_dict().items():  # non-trivial batch-norm statistics at end b
        if key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif key.endswith("running_mean"):
            value.normal_()
    return model, state_a, copy.deepcopy(other.state_dict())


def loop_reference(model, state_a, state_b, alphas, x):
    outs = []
    for alpha in alphas:
        state = {
            k: torch.lerp(state_a[k], state_b[k], alpha) if state_a[k].is_floating_point() else state_a[k]
            for k in state_a
        }
        m = copy.deepcopy(model)
        m.load_state_dict(state)
        outs.append(m.eval()(x))
    return torch.stack(outs)


@pytest.mark.parametrize("name,shape,options", MODELS, ids=[m[0] for m in MODELS])
@pytest.mark.parametrize("num_alphas", [1, 2, 5])
def test_path_network_equals_loading_each_interpolated_state(name, shape, options, num_alphas):
    model, state_a, state_b = endpoints(name, shape, options)
    alphas = torch.linspace(0, 1, num_alphas) if num_alphas > 1 else torch.tensor([0.3])
    x = torch.randn(6, *shape)
    out = PathNetwork(model, state_a, state_b)(x, alphas)
    assert out.shape == (num_alphas, 6, 10)
    torch.testing.assert_close(out, loop_reference(model, state_a, state_b, alphas, x), atol=2e-5, rtol=1e-4)


def test_each_endpoint_uses_its_own_mask():
    model, state_a, state_b = endpoints("lenet300", (1, 28, 28), {})
    masks = Masks.from_model(model)
    pruned = Masks({n: torch.rand(m.shape) < 0.3 for n, m in masks.items()})
    for name, mask in pruned.items():
        state_b[name.replace("weight", "mask")] = mask
    x = torch.randn(4, 1, 28, 28)
    out = PathNetwork(model, state_a, state_b)(x, torch.tensor([1.0]))
    end_b = copy.deepcopy(model)
    end_b.load_state_dict(state_b)
    torch.testing.assert_close(out[0], end_b.eval()(x))


def test_evaluate_path_matches_per_alpha_evaluation():
    model, state_a, state_b = endpoints("mlp", (40,), {"depth": 1, "width": 8})
    x, y = torch.randn(37, 40), torch.randint(0, 10, (37,))
    alphas = torch.linspace(0, 1, 3)
    loss, acc = evaluate_path(model, state_a, state_b, alphas, x, y, batch_size=10)
    logits = loop_reference(model, state_a, state_b, alphas, x)
    for i in range(3):
        assert loss[i].item() == pytest.approx(torch.nn.functional.cross_entropy(logits[i], y).item(), rel=1e-5)
        assert acc[i].item() == pytest.approx((logits[i].argmax(1) == y).float().mean().item())


def test_bad_input_is_refused():
    model, state_a, state_b = endpoints("mlp", (40,), {"depth": 1, "width": 8})
    with pytest.raises(KeyError, match="differ in their keys"):
        PathNetwork(model, state_a, {k: v for k, v in state_b.items() if "fc1" not in k})
    with pytest.raises(ValueError, match="1-D"):
        PathNetwork(model, state_a, state_b)(torch.randn(2, 40), torch.tensor(0.5))


def test_relu_after_an_interpolating_layer_is_fused_and_no_other():
    """The ReLU right after a Linear/Conv2d path layer in a Sequential is applied by that layer (it sees only
    the layer's fresh output) and becomes an identity; right after a batch norm it works in place; one that
    sees the caller's input, or another module's output, stays as it is. The values are the loop's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.ReLU(),
        torch.nn.Linear(5, 7),
        torch.nn.ReLU(),
        torch.nn.Dropout(),
        torch.nn.ReLU(),
        torch.nn.Linear(7, 6),
        torch.nn.BatchNorm1d(6),
        torch.nn.ReLU(),
        torch.nn.Linear(6, 3),
    )
    model[6].running_mean.uniform_(-1, 1)
    model[6].running_var.uniform_(0.5, 2)
    state_a = copy.deepcopy(model.state_dict())
    state_b = {k: v + 1 if v.is_floating_point() else v for k, v in state_a.items()}
    path = PathNetwork(model, state_a, state_b)
    assert [type(m).__name__ for m in path.net] == [
        "ReLU",
        "_PathLinear",
        "_FusedReLU",
        "Dropout",
        "ReLU",
        "_PathLinear",
        "_PathBatchNorm",
        "ReLU",
        "_PathLinear",
    ]
    assert [path.net[i].relu for i in (1, 5, 8)] == [True, False, False]
    assert [path.net[i].inplace for i in (0, 4, 7)] == [False, False, True]
    assert isinstance(model[2], torch.nn.ReLU) and not model[7].inplace, "the caller's model is untouched"
    x = torch.randn(4, 5)
    before = x.clone()
    alphas = torch.linspace(0, 1, 3)
    out = path(x, alphas)
    assert torch.equal(x, before), "the input is never written"
    reference = loop_reference(model, state_a, state_b, alphas, x)
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(path(x, alphas, one_alpha_at_a_time=True), reference)
    assert torch.equal(x, before)


def test_results_reused_between_passes_never_change_what_a_caller_holds():
    """On the CPU each interpolating layer writes the next pass into its last result, but only when
    nothing else refers to it: outputs returned earlier and activations kept by a hook stay intact."""
    model, state_a, state_b = endpoints("conv2", (1, 12, 12), {})
    path = PathNetwork(model, state_a, state_b)
    alphas = torch.linspace(0, 1, 4)
    kept = []
    first_conv = next(m for m in path.net.modules() if type(m).__name__ == "_PathConv2d")
    x1, x2 = torch.randn(3, 1, 12, 12), torch.randn(3, 1, 12, 12)
    out1 = path(x1, alphas)
    saved1 = out1.clone()
    handle = first_conv.register_forward_hook(lambda m, i, o: kept.append(o))
    hooked = path(x2, alphas)  # pass 2: reuses pass 1's buffers (nothing holds them), then the hook keeps one
    hooked_copy = kept[0].clone()
    handle.remove()
    out3 = path(x1, alphas)  # pass 3: must not write into the tensor the hook kept
    assert torch.equal(out1, saved1), "a returned output changed"
    assert torch.equal(kept[0], hooked_copy), "an activation a hook kept was overwritten"
    torch.testing.assert_close(out3, saved1)
    torch.testing.assert_close(hooked, loop_reference(model, state_a, state_b, alphas, x2), atol=2e-5, rtol=1e-4)
    reused = first_conv._result
    path(x2, alphas)
    assert first_conv._result.data_ptr() == reused.data_ptr(), "with nothing holding it, the buffer is reused"


@pytest.mark.parametrize("how", ["extension", "torch-private", "unknown"])
def test_storage_users_counts_the_other_tensors_on_a_storage(how, monkeypatch):
    """The reuse of a path layer's buffer rests on this count: wrong low would overwrite a live tensor."""
    import lth_sparse.ops.interpolate as interpolate_ops

    ext = interpolate_ops.cpp_extension() if how == "extension" else None
    if how == "unknown":
        monkeypatch.delattr(torch._C, "_storage_Use_Count", raising=False)
    elif how == "extension" and ext is None:
        pytest.skip("the C++ extension is not built")
    t = torch.empty(4, 5)
    counts = [interpolate_ops._storage_users(t, ext)]
    view = t[1:]
    counts.append(interpolate_ops._storage_users(t, ext))
    counts.append(interpolate_ops._storage_users(view, ext))  # view itself; its base t is not counted
    other = view.view(-1)
    counts.append(interpolate_ops._storage_users(view, ext))
    del view, other
    counts.append(interpolate_ops._storage_users(t, ext))
    if how == "unknown":
        assert all(c >= 1 << 30 for c in counts), "unknown: never reused"
    else:
        assert counts == [1, 2, 1, 2, 1], "t itself counts; a view's base does not"


RELU_FIRST = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))


@pytest.mark.parametrize(
    "name,shape,options", MODELS + [("conv4", (3, 8, 8), {})], ids=[m[0] for m in MODELS] + ["conv4"]
)
@pytest.mark.parametrize("num_alphas", [1, 2, 5])
def test_one_alpha_at_a_time_equals_loading_each_interpolated_state(name, shape, options, num_alphas):
    model, state_a, state_b = endpoints(name, shape, options)
    alphas = torch.linspace(0, 1, num_alphas) if num_alphas > 1 else torch.tensor([0.3])
    x = torch.randn(6, *shape)
    path = PathNetwork(model, state_a, state_b)
    expected = loop_reference(model, state_a, state_b, alphas, x)
    torch.testing.assert_close(path(x, alphas, one_alpha_at_a_time=True), expected, atol=2e-5, rtol=1e-4)
    x2 = torch.randn(6, *shape)  # a second pass: the first layer's kept end outputs are recomputed for it
    torch.testing.assert_close(
        path(x2, alphas, one_alpha_at_a_time=True),
        loop_reference(model, state_a, state_b, alphas, x2),
        atol=2e-5,
        rtol=1e-4,
    )


def test_one_alpha_at_a_time_shares_only_the_layers_that_see_the_input():
    """The layer fed the input itself computes both ends once per pass (two products for all alphas);
    a layer fed anything else (here a ReLU of the input) is evaluated at each alpha's weight."""
    torch.manual_seed(0)
    direct = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    alphas = torch.linspace(0, 1, 4)
    x = torch.randn(3, 5)
    for model, shared_calls in ((direct, 1), (RELU_FIRST, 0)):
        state_a = copy.deepcopy(model.state_dict())
        state_b = {k: v + 1 for k, v in state_a.items()}
        path = PathNetwork(model, state_a, state_b)
        first = path.net[1] if model is RELU_FIRST else path.net[0]
        calls = []
        original = first._interpolated
        first._interpolated = lambda *args, calls=calls, original=original, **kwargs: (
            calls.append(args[3].tolist()) or original(*args, **kwargs)
        )
        out = path(x, alphas, one_alpha_at_a_time=True)
        assert calls == [[0.0, 1.0]] * shared_calls
        torch.testing.assert_close(out, loop_reference(model, state_a, state_b, alphas, x))


@pytest.mark.parametrize(
    "name,shape,options,expect_one_alpha",
    [("mlp", (40,), {"depth": 1, "width": 8}, False), ("conv4", (3, 32, 32), {}, True)],
)
def test_evaluate_path_runs_conv4_one_alpha_at_a_time_and_the_same_either_way(
    name, shape, options, expect_one_alpha, monkeypatch
):
    """On the CPU Conv-4's activations of all 21 alphas overflow the pass budget: evaluate_path runs it
    one alpha at a time; an MLP's fit and stay folded. Both orders give the per-alpha results."""
    model, state_a, state_b = endpoints(name, shape, options)
    x, y = torch.randn(5, *shape), torch.randint(0, 10, (5,))
    alphas = torch.linspace(0, 1, 21)
    orders = []
    forward = PathNetwork.forward
    monkeypatch.setattr(
        PathNetwork,
        "forward",
        lambda self, xb, a, one_alpha_at_a_time=False: (
            orders.append(one_alpha_at_a_time) or forward(self, xb, a, one_alpha_at_a_time)
        ),
    )
    chosen = evaluate_path(model, state_a, state_b, alphas, x, y, batch_size=2)
    assert orders[1:] == [expect_one_alpha] * 3  # orders[0]: the one-example probe of the activation size
    logits = loop_reference(model, state_a, state_b, alphas, x)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(21), reduction="none")
    for forced in (True, False):
        loss, acc = evaluate_path(model, state_a, state_b, alphas, x, y, batch_size=2, one_alpha_at_a_time=forced)
        torch.testing.assert_close(loss, chosen[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(loss.float(), expected.reshape(21, 5).mean(1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(acc, (logits.argmax(-1) == y).double().mean(1))


class Skipping(torch.nn.Sequential):
    """A Sequential subclass whose forward does not feed each child the one before it."""

    def forward(self, x):
        hidden = self[0](x)
        return self[2](self[1](hidden)) + self[3](hidden)


def test_a_sequential_with_its_own_forward_keeps_its_relus_and_layers():
    """Fusing a ReLU into the layer before it assumes Sequential's own forward;
    a subclass with another forward (here the first layer's output also feeds a skip branch, before the
    ReLU) is left as it is, and still equals the loop."""
    torch.manual_seed(0)
    model = Skipping(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3), torch.nn.Linear(7, 3))
    state_a = copy.deepcopy(model.state_dict())
    state_b = {k: v + 1 for k, v in state_a.items()}
    path = PathNetwork(model, state_a, state_b)
    assert [type(m).__name__ for m in path.net] == ["_PathLinear", "ReLU", "_PathLinear", "_PathLinear"]
    assert not path.net[0].relu
    x, alphas = torch.randn(4, 5), torch.linspace(0, 1, 3)
    torch.testing.assert_close(path(x, alphas), loop_reference(model, state_a, state_b, alphas, x))
