"""PathNetwork / evaluate_path against loading each interpolated state dict."""

import copy

import pytest
import torch

from lth_sparse.masks import Masks
from lth_sparse.models import create_model
from lth_sparse.nn.path import PathNetwork, evaluate_path

MODELS = [("lenet300", (1, 28, 28), {}), ("mlp", (40,), {"depth": 2, "width": 16}), ("conv2", (1, 12, 12), {}),
          ("lenet5", (1, 28, 28), {}), ("resnet20", (3, 16, 16), {"width": 4}), ("vgg11", (3, 16, 16), {})]


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
        state = {k: torch.lerp(state_a[k], state_b[k], alpha) if state_a[k].is_floating_point() else state_a[k]
                 for k in state_a}
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


def test_relu_after_an_interpolating_layer_runs_in_place_and_no_other():
    """The ReLU right after a path layer in a Sequential works in place (its input is that layer's
    fresh output); one that sees the caller's input, or a shared ReLU module, does not."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Dropout(),
                                torch.nn.ReLU(), torch.nn.Linear(7, 3))
    state_a = copy.deepcopy(model.state_dict())
    state_b = {k: v + 1 for k, v in state_a.items()}
    path = PathNetwork(model, state_a, state_b)
    assert [getattr(m, "inplace", None) for m in path.net] == [False, None, True, False, False, None]
    assert not model[2].inplace, "the caller's model is untouched"
    x = torch.randn(4, 5)
    before = x.clone()
    alphas = torch.linspace(0, 1, 3)
    out = path(x, alphas)
    assert torch.equal(x, before), "the input is never written"
    torch.testing.assert_close(out, loop_reference(model, state_a, state_b, alphas, x))


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

    if how != "extension":
        monkeypatch.setattr(interpolate_ops, "cpp_extension", lambda: None)
    if how == "unknown":
        monkeypatch.delattr(torch._C, "_storage_Use_Count", raising=False)
    elif how == "extension" and interpolate_ops.cpp_extension() is None:
        pytest.skip("the C++ extension is not built")
    t = torch.empty(4, 5)
    counts = [interpolate_ops._storage_users(t)]
    view = t[1:]
    counts.append(interpolate_ops._storage_users(t))
    counts.append(interpolate_ops._storage_users(view))  # view itself; its base t is not counted
    other = view.view(-1)
    counts.append(interpolate_ops._storage_users(view))
    del view, other
    counts.append(interpolate_ops._storage_users(t))
    if how == "unknown":
        assert all(c >= 1 << 30 for c in counts), "unknown: never reused"
    else:
        assert counts == [1, 2, 1, 2, 1], "t itself counts; a view's base does not"
