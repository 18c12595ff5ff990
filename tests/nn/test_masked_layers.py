"""MaskedLinear and MaskedConv2d: forward and gradients against the reference, and pruned weights under training.

The reference is ``lth_sparse.ops.reference`` (``F.linear``/``F.conv2d`` with ``weight * mask``).
Pruned weights must never reach the output or the input gradient, must get exactly
zero gradient, and must stay exactly zero (with zero optimizer state) under
SGD with momentum and weight decay, Adam and AdamW, however the mask is changed.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lth_sparse.nn import MaskedConv2d, MaskedLinear, masked
from lth_sparse.ops import _cpu, reference
from tests.conftest import backend_variants
from tests.tolerances import assert_close

DENSITIES = [1.0, 0.5, 0.0]  # sparsity 0%, ~50%, 100%


def random_mask(shape, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < density


def randn(*shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def where_kept(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The weight with its pruned entries zero, whatever they held (inf * 0 would be NaN)."""
    return torch.where(mask, weight.detach(), torch.zeros((), dtype=weight.dtype))


# --- class contract ---------------------------------------------------------------------------------------------


def test_masked_layers_are_subclasses_of_the_torch_layers_with_a_bool_mask_buffer():
    linear, conv = MaskedLinear(3, 2), MaskedConv2d(2, 4, 3)
    assert isinstance(linear, nn.Linear) and isinstance(conv, nn.Conv2d)
    for layer in (linear, conv):
        assert layer.mask.dtype == torch.bool
        assert layer.mask.shape == layer.weight.shape
        assert layer.mask.all(), "a new masked layer prunes nothing"
        assert "mask" in dict(layer.named_buffers())


def test_constructor_mask_is_applied_and_zeroes_pruned_weights():
    mask = random_mask((4, 5), 0.5, seed=1)
    layer = MaskedLinear(5, 4, mask=mask)
    assert torch.equal(layer.mask, mask)
    assert not layer.weight[~mask].any()


def test_set_mask_rejects_a_float_mask_with_type_error():
    layer = MaskedLinear(3, 2)
    with pytest.raises(TypeError, match="bool"):
        layer.set_mask(torch.ones(2, 3))
    assert layer.mask.all(), "a rejected mask must leave the layer's mask alone"


@pytest.mark.parametrize("kind,bad_shape", [("linear", (3, 2)), ("conv", (4, 2, 3, 1))])
def test_set_mask_rejects_a_wrong_shape_with_value_error_naming_both_shapes(kind, bad_shape):
    layer = MaskedLinear(3, 2) if kind == "linear" else MaskedConv2d(2, 4, 3)
    with pytest.raises(ValueError) as info:
        layer.set_mask(torch.ones(bad_shape, dtype=torch.bool))
    assert str(bad_shape) in str(info.value) and str(tuple(layer.weight.shape)) in str(info.value)
    assert layer.mask.all()


def test_set_mask_zeroes_pruned_weights_and_keeps_the_others():
    torch.manual_seed(0)
    layer = MaskedConv2d(3, 4, 3)
    before = layer.weight.detach().clone()
    mask = random_mask(layer.weight.shape, 0.5, seed=2)
    layer.set_mask(mask)
    assert torch.equal(layer.mask, mask)
    assert not layer.weight[~mask].any()
    assert torch.equal(layer.weight[mask], before[mask])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("contiguous", [True, False])
def test_zero_pruned_is_an_in_place_change_that_autograd_and_the_mask_cache_see(dtype, contiguous):
    """The optimizer hook zeroes pruned weights with the C++ kernel on the CPU: same result as
    masked_fill_, and the version counter moves as it would under masked_fill_."""
    from lth_sparse.ops import zero_pruned_

    weight = randn(9, 14, seed=1, dtype=dtype)
    weight = weight if contiguous else weight.t().contiguous().t()
    mask = random_mask(weight.shape, 0.4, seed=2)
    expected = weight.masked_fill(~mask, 0)
    version = weight._version
    assert zero_pruned_(weight, mask) is weight
    assert torch.equal(weight, expected)
    assert weight._version > version
    # a weight the sparse path saved for the backward, zeroed in between: autograd must refuse
    leaf = randn(9, 14, seed=3).requires_grad_()
    x = randn(5, 14, seed=4).requires_grad_()
    from lth_sparse.ops import masked_linear

    with _cpu.held_on("sparse"):
        out = masked_linear(x, leaf, mask)
    with torch.no_grad():
        zero_pruned_(leaf, mask)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_zero_pruned_of_an_inference_tensor_works_in_inference_mode_and_is_refused_outside_untouched():
    from lth_sparse.ops import zero_pruned_

    mask = random_mask((4, 8), 0.5, seed=0)
    with torch.inference_mode():
        layer = MaskedLinear(8, 4)
        layer.set_mask(mask)
        assert not layer.weight[~mask].any()
        t = randn(4, 8, seed=1)
    before = t.clone()
    with pytest.raises(RuntimeError, match="inference tensor outside InferenceMode"):
        zero_pruned_(t, mask)
    assert torch.equal(t, before), "refused before any write, as masked_fill_ is"


def test_zero_pruned_refuses_a_mask_that_is_not_bool_or_not_of_the_tensors_shape():
    from lth_sparse.ops import zero_pruned_

    t = randn(3, 4, seed=0)
    before = t.clone()
    with pytest.raises(TypeError, match="mask must be a bool tensor, got torch.uint8"):
        zero_pruned_(t, torch.ones(3, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"shape of t \(3, 4\), got \(4, 3\)"):
        zero_pruned_(t, torch.ones(4, 3, dtype=torch.bool))
    assert torch.equal(t, before)


# --- forward against the reference ------------------------------------------------------------------------------

LINEAR_SHAPES = [  # (input shape, in_features, out_features)
    ((1, 1), 1, 1),
    ((5, 17), 17, 3),
    ((2, 3, 13), 13, 7),
    ((0, 6), 6, 4),
    ((6,), 6, 5),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("input_shape,fin,fout", LINEAR_SHAPES)
def test_masked_linear_matches_reference(input_shape, fin, fout, density, bias):
    torch.manual_seed(0)
    layer = MaskedLinear(fin, fout, bias=bias)
    mask = random_mask((fout, fin), density, seed=3)
    layer.mask.copy_(mask)  # written directly: the pruned weights still hold their values
    x = randn(*input_shape, seed=4)
    bias = None if layer.bias is None else layer.bias.detach()
    expected = reference.masked_linear(x, layer.weight.detach(), mask, bias)
    assert_close(layer(x), expected)


CONV_CASES = [  # (constructor kwargs, input shape)
    (dict(in_channels=3, out_channels=5, kernel_size=3), (2, 3, 9, 7)),
    (dict(in_channels=1, out_channels=1, kernel_size=1), (1, 1, 1, 1)),
    (dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1), (3, 4, 10, 9)),
    (dict(in_channels=4, out_channels=6, kernel_size=3, stride=(2, 1), padding=(2, 0), dilation=2), (2, 4, 11, 8)),
    (dict(in_channels=6, out_channels=4, kernel_size=3, padding=1, groups=2), (2, 6, 7, 7)),
    (dict(in_channels=4, out_channels=8, kernel_size=3, padding=1, groups=4), (2, 4, 5, 6)),  # depthwise x2
    (dict(in_channels=3, out_channels=5, kernel_size=3, padding="same"), (2, 3, 8, 5)),
    (dict(in_channels=3, out_channels=4, kernel_size=(5, 3), padding="same", dilation=(1, 2)), (1, 3, 9, 9)),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding="valid"), (2, 3, 6, 7)),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, stride=2), (3, 8, 11)),  # unbatched
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("kwargs,input_shape", CONV_CASES)
def test_masked_conv2d_matches_reference(kwargs, input_shape, density, bias):
    torch.manual_seed(0)
    layer = MaskedConv2d(**kwargs, bias=bias)
    mask = random_mask(layer.weight.shape, density, seed=5)
    layer.mask.copy_(mask)
    x = randn(*input_shape, seed=6)
    bias = None if layer.bias is None else layer.bias.detach()
    expected = reference.masked_conv2d(
        x, layer.weight.detach(), mask, bias, layer.stride, layer.padding, layer.dilation, layer.groups
    )
    assert_close(layer(x), expected)


@pytest.mark.parametrize("padding", [1, (2, 1), "same", "valid"])
@pytest.mark.parametrize("padding_mode", ["reflect", "circular", "replicate"])
def test_masked_conv2d_with_padding_mode_matches_reference_on_padded_input(padding_mode, padding):
    torch.manual_seed(0)
    layer = MaskedConv2d(3, 4, kernel_size=3, padding=padding, padding_mode=padding_mode)
    mask = random_mask(layer.weight.shape, 0.5, seed=7)
    layer.set_mask(mask)
    x = randn(2, 3, 7, 6, seed=8)
    ph, pw = {1: (1, 1), (2, 1): (2, 1), "same": (1, 1), "valid": (0, 0)}[padding]
    padded = F.pad(x, (pw, pw, ph, ph), mode=padding_mode)
    expected = reference.masked_conv2d(padded, layer.weight.detach(), mask, layer.bias.detach())
    out = layer(x)
    assert_close(out, expected)
    # and the plain torch layer with the same (zeroed) weights agrees
    plain = nn.Conv2d(3, 4, kernel_size=3, padding=padding, padding_mode=padding_mode)
    plain.load_state_dict({"weight": where_kept(layer.weight, mask), "bias": layer.bias.detach()})
    assert_close(out, plain(x))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_masked_conv2d_same_padding_with_even_kernel_matches_conv2d(padding_mode):
    torch.manual_seed(0)
    layer = MaskedConv2d(2, 3, kernel_size=(4, 3), padding="same", padding_mode=padding_mode)
    mask = random_mask(layer.weight.shape, 0.5, seed=9)
    layer.set_mask(mask)
    plain = nn.Conv2d(2, 3, kernel_size=(4, 3), padding="same", padding_mode=padding_mode)
    plain.load_state_dict({"weight": layer.weight.detach().clone(), "bias": layer.bias.detach()})
    x = randn(1, 2, 7, 6, seed=10)
    assert_close(layer(x), plain(x))


def make_layer(kind: str, density: float = 0.5, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "linear":
        layer, x = MaskedLinear(9, 6), randn(4, 9, seed=seed + 1)
    else:
        layer, x = MaskedConv2d(4, 6, 3, padding=1, stride=2, groups=2), randn(2, 4, 7, 8, seed=seed + 1)
    mask = random_mask(layer.weight.shape, density, seed=seed + 2)
    layer.set_mask(mask)
    return layer, mask, x


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("poison", [float("inf"), float("-inf"), float("nan")])
def test_pruned_weights_holding_inf_or_nan_do_not_change_the_output(kind, poison):
    layer, mask, x = make_layer(kind)
    clean = layer(x)
    with torch.no_grad():
        layer.weight[~mask] = poison
    out = layer(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, clean, rtol=0, atol=0)


# --- gradients --------------------------------------------------------------------------------------------------


def reference_forward(layer, weight, x, bias):
    if isinstance(layer, nn.Linear):
        return reference.masked_linear(x, weight, layer.mask, bias)
    return reference.masked_conv2d(
        x, weight, layer.mask, bias, layer.stride, layer.padding, layer.dilation, layer.groups
    )


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("density", DENSITIES)
def test_weight_gradient_is_exactly_zero_where_pruned_and_matches_reference_elsewhere(kind, density):
    layer, mask, x = make_layer(kind, density)
    x_ours = x.clone().requires_grad_()
    x_ref = x.clone().requires_grad_()
    w_ref = layer.weight.detach().clone().requires_grad_()
    b_ref = layer.bias.detach().clone().requires_grad_()
    out = layer(x_ours)
    expected = reference_forward(layer, w_ref, x_ref, b_ref)
    grad = randn(*out.shape, seed=11)
    out.backward(grad)
    expected.backward(grad)
    assert torch.equal(layer.weight.grad[~mask], torch.zeros_like(layer.weight.grad[~mask]))
    assert_close(layer.weight.grad, w_ref.grad * mask)
    assert_close(layer.bias.grad, b_ref.grad)
    assert_close(x_ours.grad, x_ref.grad)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_input_gradient_ignores_pruned_weights_holding_nan(kind):
    layer, mask, x = make_layer(kind)
    x_clean = x.clone().requires_grad_()
    layer(x_clean).sum().backward()
    with torch.no_grad():
        layer.weight[~mask] = float("nan")
    layer.weight.grad = None
    x_poisoned = x.clone().requires_grad_()
    layer(x_poisoned).sum().backward()
    torch.testing.assert_close(x_poisoned.grad, x_clean.grad, rtol=0, atol=0)
    assert not layer.weight.grad[~mask].any()


# --- masks written behind torch's back ----------------------------------------------------------------------------

# Writes that bypass the mask's version counter: `.data` has a counter of its own, numpy none. Common in
# lottery-ticket code (OpenLTH writes `param.data` in place) and what collectives may do to a buffer.
BYPASSING_WRITES = {
    "data.copy_": lambda mask, new: mask.data.copy_(new),
    "data-setitem": lambda mask, new: mask.data.__setitem__(Ellipsis, new),
    "numpy": lambda mask, new: mask.numpy().__setitem__(Ellipsis, new.numpy()),
}
LAYER_IMPLEMENTED = ("triton", "cpp", "torch")


def _layer_and_input(kind: str):
    torch.manual_seed(0)
    if kind == "linear":
        return MaskedLinear(24, 10), randn(5, 24, seed=1)
    return MaskedConv2d(3, 6, 3, padding=1), randn(2, 3, 6, 5, seed=1)


def _reference_of(layer, x):
    if isinstance(layer, MaskedLinear):
        return reference.masked_linear(x, layer.weight, layer.mask, layer.bias)
    return reference.masked_conv2d(
        x, layer.weight, layer.mask, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
    )


def assert_layer_matches_reference(layer, x):
    """Forward and the input, weight and bias gradients of ``layer`` for its mask as it is now."""
    ref_layer = copy.deepcopy(layer)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = layer(x_ours), _reference_of(ref_layer, x_ref)
    assert_close(y, y_ref)
    grad = torch.randn_like(y_ref)
    y.backward(grad)
    y_ref.backward(grad)
    assert_close(x_ours.grad, x_ref.grad)
    assert_close(layer.weight.grad, ref_layer.weight.grad)
    assert_close(layer.bias.grad, ref_layer.bias.grad)
    layer.zero_grad(set_to_none=True)
    return y.detach()


@pytest.mark.parametrize("start", ["pruned", "all-ones"])
@pytest.mark.parametrize("write", list(BYPASSING_WRITES))
@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("backend", ["auto", "cpp-dense", *backend_variants(LAYER_IMPLEMENTED)])
def test_a_mask_written_behind_torchs_back_is_seen_by_the_next_forward_and_backward(
    backend, kind, write, start, use_backend
):
    """ "auto" takes the C++ layer with its nothing-pruned shortcut (an all-ones mask runs torch's own
    layer) and the policy's path; "cpp-dense" and "cpp-sparse" hold the C++ backend on one path."""
    if backend == "cpp-dense":
        use_backend("cpp")
        held = _cpu.held_on("dense")
        held.__enter__()
    elif backend != "auto":
        use_backend(backend)
    try:
        layer, x = _layer_and_input(kind)
        if start == "pruned":
            layer.set_mask(random_mask(layer.weight.shape, 0.3, seed=2))
        before = assert_layer_matches_reference(layer, x)  # the layer has seen (and cached) this mask
        new = random_mask(layer.weight.shape, 0.2, seed=3)
        version = layer.mask._version
        BYPASSING_WRITES[write](layer.mask, new)
        assert torch.equal(layer.mask, new)
        assert layer.mask._version == version, "the write must bypass the version counter for this test to mean it"
        after = assert_layer_matches_reference(layer, x)
        assert not torch.equal(before, after)
    finally:
        if backend == "cpp-dense":
            held.__exit__(None, None, None)


# --- training: pruned weights stay exactly zero -----------------------------------------------------------------

OPTIMIZERS = {
    "sgd_nesterov": (
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
        ("momentum_buffer",),
    ),
    "adam": (lambda p: torch.optim.Adam(p, lr=1e-2), ("exp_avg", "exp_avg_sq")),
    "adamw": (lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), ("exp_avg", "exp_avg_sq")),
}


def small_masked_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = masked(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 7)))
    for i, layer in ((0, model[0]), (3, model[3])):
        layer.set_mask(random_mask(layer.weight.shape, 0.5, seed=100 + i + 10 * seed))
    return model


def batch(seed: int):
    return randn(8, 3, 5, 5, seed=seed), randn(8, 7, seed=seed + 1)


def train_step(model, optimizer, seed: int) -> None:
    x, y = batch(seed)
    optimizer.zero_grad()
    F.mse_loss(model(x), y).backward()
    optimizer.step()


def masked_layers_of(model):
    return [model[0], model[3]]


def reference_model_output(model, x):
    conv, linear = model[0], model[3]
    h = reference.masked_conv2d(
        x, conv.weight, conv.mask, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
    )
    return reference.masked_linear(h.relu().flatten(1), linear.weight, linear.mask, linear.bias)


def assert_pruned_weights_and_state_are_zero(model, optimizer, state_keys) -> None:
    for layer in masked_layers_of(model):
        pruned = ~layer.mask
        assert torch.equal(layer.weight[pruned], torch.zeros_like(layer.weight[pruned])), "a pruned weight moved"
        state = optimizer.state[layer.weight]
        for key in state_keys:
            assert key in state, f"the optimizer has no {key!r}: this check would be vacuous"
            assert not state[key][pruned].any(), f"optimizer state {key!r} is non-zero at pruned positions"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_pruned_weights_stay_exactly_zero_under_training(name):
    make_optimizer, state_keys = OPTIMIZERS[name]
    model = small_masked_model()
    optimizer = make_optimizer(model.parameters())
    before = [layer.weight.detach().clone() for layer in masked_layers_of(model)]
    for step in range(20):
        train_step(model, optimizer, seed=step)
    assert_pruned_weights_and_state_are_zero(model, optimizer, state_keys)
    for layer, w0 in zip(masked_layers_of(model), before):
        assert (layer.weight[layer.mask] != w0[layer.mask]).all(), "every unpruned weight must have moved"
    x, _ = batch(999)
    with torch.no_grad():
        assert_close(model(x), reference_model_output(model, x))


def change_mask(model, how: str, new_masks) -> None:
    layers = masked_layers_of(model)
    if how == "set_mask":
        for layer, m in zip(layers, new_masks):
            layer.set_mask(m)
    elif how == "copy_":
        for layer, m in zip(layers, new_masks):
            layer.mask.copy_(m)
    elif how == "load_state_dict":
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["0.mask"], state["3.mask"] = new_masks
        model.load_state_dict(state)
    elif how in BYPASSING_WRITES:
        for layer, m in zip(layers, new_masks):
            BYPASSING_WRITES[how](layer.mask, m)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["set_mask", "copy_", "load_state_dict", *BYPASSING_WRITES])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_newly_pruned_weights_and_their_optimizer_state_are_zero_after_the_next_step(name, how):
    make_optimizer, state_keys = OPTIMIZERS[name]
    model = small_masked_model()
    optimizer = make_optimizer(model.parameters())
    for step in range(3):
        train_step(model, optimizer, seed=step)
    old = [layer.mask.clone() for layer in masked_layers_of(model)]
    new = [m & random_mask(m.shape, 0.6, seed=200 + i) for i, m in enumerate(old)]
    newly_pruned = [o & ~n for o, n in zip(old, new)]
    assert all(p.any() for p in newly_pruned)
    assert all(layer.weight[p].ne(0).all() for layer, p in zip(masked_layers_of(model), newly_pruned))
    state_before = {
        key: [optimizer.state[layer.weight][key].clone() for layer in masked_layers_of(model)] for key in state_keys
    }
    assert all(s[p].ne(0).any() for key in state_keys for s, p in zip(state_before[key], newly_pruned))

    change_mask(model, how, new)
    for layer, m in zip(masked_layers_of(model), new):
        assert torch.equal(layer.mask, m)
    x, _ = batch(500)
    with torch.no_grad():  # the output ignores the newly pruned weights at once, zeroed or not
        assert_close(model(x), reference_model_output(model, x))

    kept_before = [layer.weight.detach().clone() for layer in masked_layers_of(model)]
    train_step(model, optimizer, seed=3)
    assert_pruned_weights_and_state_are_zero(model, optimizer, state_keys)
    for layer, m, w0 in zip(masked_layers_of(model), new, kept_before):
        assert (layer.weight[m] != w0[m]).any(), "unpruned weights must keep learning"
    for step in range(4, 10):
        train_step(model, optimizer, seed=step)
    assert_pruned_weights_and_state_are_zero(model, optimizer, state_keys)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_mask_written_between_backward_and_step_still_leaves_pruned_weights_zero(name):
    make_optimizer, state_keys = OPTIMIZERS[name]
    model = small_masked_model()
    optimizer = make_optimizer(model.parameters())
    train_step(model, optimizer, seed=0)
    x, y = batch(1)
    optimizer.zero_grad()
    F.mse_loss(model(x), y).backward()
    # the gradients were computed under the old mask: non-zero where the new one prunes
    new = [
        layer.mask & random_mask(layer.mask.shape, 0.5, seed=300 + i) for i, layer in enumerate(masked_layers_of(model))
    ]
    assert any(layer.weight.grad[~m].ne(0).any() for layer, m in zip(masked_layers_of(model), new))
    for layer, m in zip(masked_layers_of(model), new):
        layer.mask.copy_(m)
    optimizer.step()
    assert_pruned_weights_and_state_are_zero(model, optimizer, state_keys)


# --- state_dict, deepcopy, .to() --------------------------------------------------------------------------------


def test_state_dict_holds_bool_masks_and_load_state_dict_restores_them_in_a_fresh_model():
    model = small_masked_model(seed=0)
    state = model.state_dict()
    for name in ("0", "3"):
        assert state[f"{name}.mask"].dtype == torch.bool
        assert torch.equal(state[f"{name}.mask"], model.get_submodule(name).mask)
    fresh = small_masked_model(seed=1)
    assert not torch.equal(fresh[0].mask, model[0].mask)
    fresh.load_state_dict(state)
    for ours, theirs in zip(masked_layers_of(fresh), masked_layers_of(model)):
        assert torch.equal(ours.mask, theirs.mask)
    x, _ = batch(7)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("bad", ["float", "int-with-2", "uint8-0-1"])
def test_load_state_dict_refuses_a_mask_that_is_not_bool_naming_the_key_and_dtype(bad):
    """copy_ into the bool buffer would cast (0.5 and 2 become True). 0/1 integer masks are refused too,
    as Masks refuses them: the caller converts with .bool()."""
    model = small_masked_model(seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    mask = state["3.mask"]
    state["3.mask"] = {"float": mask.float() * 0.5, "int-with-2": mask.long() * 2, "uint8-0-1": mask.to(torch.uint8)}[
        bad
    ]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match=rf"'3\.mask'.*must be a bool mask, got {state['3.mask'].dtype}"):
        model.load_state_dict(state)
    assert torch.equal(model[3].mask, before["3.mask"]), "a refused mask leaves the layer's mask alone"
    assert model[3].mask.dtype == torch.bool


def test_deepcopy_keeps_masks_in_separate_storage():
    model = small_masked_model()
    clone = copy.deepcopy(model)
    for ours, theirs in zip(masked_layers_of(clone), masked_layers_of(model)):
        assert isinstance(ours, type(theirs))
        assert torch.equal(ours.mask, theirs.mask)
    clone[3].mask.fill_(False)
    assert model[3].mask.any(), "the copy's mask must not share storage with the original's"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_deepcopy_pruned_weights_stay_zero_under_an_optimizer_also_after_a_mask_change(name):
    make_optimizer, state_keys = OPTIMIZERS[name]
    model = small_masked_model()
    clone = copy.deepcopy(model)
    optimizer = make_optimizer(clone.parameters())
    for step in range(3):
        train_step(clone, optimizer, seed=step)
    new = [
        layer.mask & random_mask(layer.mask.shape, 0.6, seed=400 + i) for i, layer in enumerate(masked_layers_of(clone))
    ]
    for layer, m in zip(masked_layers_of(clone), new):
        layer.mask.copy_(m)
    for step in range(3, 6):
        train_step(clone, optimizer, seed=step)
    assert_pruned_weights_and_state_are_zero(clone, optimizer, state_keys)
    for layer, original in zip(masked_layers_of(clone), masked_layers_of(model)):
        assert not torch.equal(layer.weight, original.weight), "the copy trained, not the original"


def test_deepcopy_pruned_weights_stay_zero_under_a_step_before_its_first_forward():
    model = small_masked_model()
    clone = copy.deepcopy(model)
    results = []
    for net in (model, clone):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        for p in net.parameters():  # gradients from elsewhere, e.g. averaged from other replicas
            p.grad = torch.ones_like(p)
        optimizer.step()
        results.append(all(not layer.weight[~layer.mask].any() for layer in masked_layers_of(net)))
    assert results[0], "the original's pruned weights stay zero"
    assert results[1], "the copy's pruned weights must stay zero too"


def test_to_float64_keeps_masks_bool_and_equal_and_output_matches_reference():
    model = small_masked_model()
    masks = [layer.mask.clone() for layer in masked_layers_of(model)]
    model.to(torch.float64)
    for layer, m in zip(masked_layers_of(model), masks):
        assert layer.weight.dtype == torch.float64
        assert layer.mask.dtype == torch.bool
        assert torch.equal(layer.mask, m)
    x = batch(8)[0].double()
    with torch.no_grad():
        assert_close(model(x), reference_model_output(model, x))


def test_pruned_weights_stay_zero_after_to_float64_under_adamw():
    model = small_masked_model().to(torch.float64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(3):
        x, y = batch(step)
        optimizer.zero_grad()
        F.mse_loss(model(x.double()), y.double()).backward()
        optimizer.step()
    assert_pruned_weights_and_state_are_zero(model, optimizer, ("exp_avg", "exp_avg_sq"))
