"""Whole-model conversion: ``masked``, ``unmasked``, and ``torch.nn.utils.prune`` interop (both ways)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import prune

from lth_sparse.nn import MaskedConv2d, MaskedLinear, MaskedMixin, masked, to_torch_prune, unmasked
from lth_sparse.ops import prune_lowest
from lth_sparse.ops.select import IMPLEMENTED as SELECT_BACKENDS
from tests.conftest import available_backends
from tests.tolerances import assert_close


class Block(nn.Module):
    """A custom module nesting a conv and a linear head, as model code does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 3 * 3, 5))

    def forward(self, x):
        return self.head(F.relu(self.conv(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.block = Block()
        self.classifier = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.classifier(self.block(self.features(x)))


LAYER_NAMES = ["features.0", "block.conv", "block.head.1", "classifier"]


def make_net(seed: int = 0, dtype=torch.float32) -> Net:
    torch.manual_seed(seed)
    return Net().to(dtype)


def make_input(seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 6, 6, generator=g).to(dtype)


def random_mask(shape, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < density


def prune_randomly(model: nn.Module, density: float = 0.5, seed: int = 10) -> dict[str, torch.Tensor]:
    """Give each masked layer a random mask; returns the masks by layer name."""
    masks = {}
    for i, name in enumerate(LAYER_NAMES):
        layer = model.get_submodule(name)
        masks[name] = random_mask(layer.weight.shape, density, seed + i)
        layer.set_mask(masks[name])
    return masks


# --- masked() ---------------------------------------------------------------------------------------------------


def test_masked_converts_every_linear_and_conv_in_place_and_returns_the_model():
    model = make_net()
    modules_before = {name: model.get_submodule(name) for name in LAYER_NAMES}
    assert masked(model) is model
    for name, module in modules_before.items():
        assert model.get_submodule(name) is module, "converted in place, not replaced"
        expected = MaskedConv2d if isinstance(module, nn.Conv2d) else MaskedLinear
        assert type(module) is expected
        assert module.mask.dtype == torch.bool and module.mask.all()
    assert sum(isinstance(m, MaskedMixin) for m in model.modules()) == len(LAYER_NAMES)


def test_masked_keeps_the_parameter_objects_their_values_and_dtype():
    model = make_net(dtype=torch.float64)
    params = dict(model.named_parameters())
    values = {name: p.detach().clone() for name, p in params.items()}
    x = make_input(dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
    masked(model)
    after = dict(model.named_parameters())
    assert after.keys() == params.keys()
    for name, p in after.items():
        assert p is params[name], f"{name} must be the very same Parameter"
        assert p.dtype == torch.float64
        assert torch.equal(p, values[name])
    with torch.no_grad():
        assert_close(model(x), expected)


def test_optimizer_built_before_masked_still_updates_and_keeps_pruned_weights_zero():
    model = make_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    masked(model)
    masks = prune_randomly(model)
    before = {name: model.get_submodule(name).weight.detach().clone() for name in LAYER_NAMES}
    for step in range(5):
        optimizer.zero_grad()
        model(make_input(seed=step)).pow(2).mean().backward()
        optimizer.step()
    for name in LAYER_NAMES:
        weight, mask = model.get_submodule(name).weight, masks[name]
        assert not weight[~mask].any(), f"{name}: pruned weights moved"
        assert not optimizer.state[weight]["momentum_buffer"][~mask].any()
        assert (weight[mask] != before[name][mask]).all(), f"{name}: the optimizer did not update the weights"


def test_masked_does_not_consume_the_global_rng():
    model = make_net()
    state = torch.get_rng_state()
    masked(model)
    assert torch.equal(torch.get_rng_state(), state)


def test_masked_is_idempotent_and_leaves_masked_layers_alone():
    model = masked(make_net())
    masks = prune_randomly(model)
    weights = {name: model.get_submodule(name).weight for name in LAYER_NAMES}
    values = {name: w.detach().clone() for name, w in weights.items()}
    masked(model)
    for name in LAYER_NAMES:
        layer = model.get_submodule(name)
        assert torch.equal(layer.mask, masks[name]), f"{name}: a second masked() must not reset the mask"
        assert layer.weight is weights[name]
        assert torch.equal(layer.weight, values[name])


def test_masked_leaves_multihead_attention_out_proj_untouched():
    torch.manual_seed(0)
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2, batch_first=True), "proj": nn.Linear(8, 4)})
    x = torch.randn(2, 5, 8)

    def run(m):
        with torch.no_grad():
            return m["proj"](m["attn"](x, x, x, need_weights=False)[0])

    expected = run(model)
    out_proj_type = type(model["attn"].out_proj)
    masked(model)
    assert type(model["attn"].out_proj) is out_proj_type
    assert not hasattr(model["attn"].out_proj, "mask")
    assert type(model["proj"]) is MaskedLinear
    assert_close(run(model), expected)


def test_masked_rejects_a_non_module_with_type_error():
    with pytest.raises(TypeError, match="nn.Module"):
        masked([nn.Linear(2, 2)])


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
def test_masked_keeps_outputs_of_a_conv_with_same_padding_and_an_even_kernel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, kernel_size=2, padding="same"))
    x = make_input()
    with torch.no_grad():
        expected = model(x)
        assert_close(masked(model)(x), expected)


# --- unmasked() -------------------------------------------------------------------------------------------------


def test_unmasked_gives_plain_layers_with_pruned_weights_zero_and_the_same_outputs():
    model = masked(make_net())
    masks = prune_randomly(model)
    # masks written directly leave the pruned weights holding values: unmasked() must zero them
    extra = random_mask(model.classifier.weight.shape, 0.5, seed=50)
    model.classifier.mask.copy_(masks["classifier"] & extra)
    masks["classifier"] = masks["classifier"] & extra
    assert model.classifier.weight[~masks["classifier"]].ne(0).any()
    x = make_input()
    with torch.no_grad():
        expected = model(x)
    params = dict(model.named_parameters())
    assert unmasked(model) is model
    for name in LAYER_NAMES:
        layer = model.get_submodule(name)
        assert type(layer) in (nn.Linear, nn.Conv2d)
        assert "mask" not in dict(layer.named_buffers()) and not hasattr(layer, "mask")
        assert torch.equal(layer.weight[~masks[name]], torch.zeros_like(layer.weight[~masks[name]]))
    assert all(p is params[n] for n, p in model.named_parameters())
    assert not any(k.endswith(".mask") for k in model.state_dict())
    with torch.no_grad():
        assert_close(model(x), expected)


# --- torch.nn.utils.prune interop -------------------------------------------------------------------------------


def weight_params(model: nn.Module):
    return [(model.get_submodule(name), "weight") for name in LAYER_NAMES]


def torch_pruned_net(seed: int = 0) -> Net:
    model = make_net(seed)
    prune.global_unstructured(weight_params(model), pruning_method=prune.L1Unstructured, amount=0.2)
    return model


def test_masked_of_a_torch_pruned_model_keeps_its_masks_and_outputs():
    model = torch_pruned_net()
    expected_masks = {name: model.get_submodule(name).weight_mask.bool().clone() for name in LAYER_NAMES}
    assert 0 < sum(int((~m).sum()) for m in expected_masks.values())
    x = make_input()
    with torch.no_grad():
        expected = model(x)
    masked(model)
    for name in LAYER_NAMES:
        layer = model.get_submodule(name)
        assert isinstance(layer, MaskedMixin)
        assert torch.equal(layer.mask, expected_masks[name])
        assert not layer.weight[~layer.mask].any()
        assert not hasattr(layer, "weight_orig") and not hasattr(layer, "weight_mask")
        assert isinstance(layer.weight, nn.Parameter)
    with torch.no_grad():
        assert_close(model(x), expected)


def test_to_torch_prune_gives_weight_orig_and_weight_mask_with_the_same_masks_and_outputs():
    model = masked(make_net())
    masks = prune_randomly(model)
    x = make_input()
    with torch.no_grad():
        expected = model(x)
    assert to_torch_prune(model) is model
    for name in LAYER_NAMES:
        layer = model.get_submodule(name)
        assert type(layer) in (nn.Linear, nn.Conv2d)
        assert not hasattr(layer, "mask")
        assert "weight_orig" in dict(layer.named_parameters())
        assert torch.equal(layer.weight_mask.bool(), masks[name])
        assert prune.is_pruned(layer)
    with torch.no_grad():
        assert_close(model(x), expected)


def test_torch_prune_round_trip_preserves_masks_and_outputs():
    model = masked(make_net())
    masks = prune_randomly(model)
    x = make_input()
    with torch.no_grad():
        expected = model(x)
    masked(to_torch_prune(model))
    for name in LAYER_NAMES:
        assert torch.equal(model.get_submodule(name).mask, masks[name])
    with torch.no_grad():
        assert_close(model(x), expected)


def test_torch_pruned_model_round_trip_through_masked_layers_preserves_masks():
    model = torch_pruned_net()
    expected = {name: model.get_submodule(name).weight_mask.bool().clone() for name in LAYER_NAMES}
    to_torch_prune(masked(model))
    for name in LAYER_NAMES:
        assert torch.equal(model.get_submodule(name).weight_mask.bool(), expected[name])


@pytest.mark.parametrize("backend", available_backends(SELECT_BACKENDS))
def test_prune_lowest_over_abs_weights_matches_torch_global_l1_unstructured(backend, use_backend):
    use_backend(backend)
    model = make_net(seed=3)
    reference_model = copy.deepcopy(model)
    prune.global_unstructured(weight_params(reference_model), pruning_method=prune.L1Unstructured, amount=0.2)
    weights = [model.get_submodule(name).weight.detach() for name in LAYER_NAMES]
    total = sum(w.numel() for w in weights)
    ours = prune_lowest([w.abs() for w in weights], None, round(0.2 * total))
    for name, mask in zip(LAYER_NAMES, ours):
        assert torch.equal(mask, reference_model.get_submodule(name).weight_mask.bool()), name
    assert sum(int((~m).sum()) for m in ours) == round(0.2 * total)
