"""``lth_sparse.Masks``: from and onto a model, counts, algebra, and the safetensors file."""

from __future__ import annotations

import json
import re
import struct

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file
from torch.nn.utils import prune

from lth_sparse import Masks
from lth_sparse.nn import masked


class Named(nn.Module):
    """Names like ``features.0.weight`` and ``classifier.weight``, as torchvision models have."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU())
        self.classifier = nn.Linear(12, 4)


def named_model(seed: int = 0) -> Named:
    torch.manual_seed(seed)
    return masked(Named())


NAMES = ["features.0.weight", "classifier.weight"]
SHAPES = {"features.0.weight": (3, 2, 3, 3), "classifier.weight": (4, 12)}


def random_masks(seed: int, density: float = 0.5) -> Masks:
    g = torch.Generator().manual_seed(seed)
    return Masks({name: torch.rand(SHAPES[name], generator=g) < density for name in NAMES})


def layer(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name[: -len(".weight")])


# --- from_model / apply_to --------------------------------------------------------------------------------------


def test_from_model_names_masks_by_weight_parameter_and_copies_them():
    model = named_model()
    masks = random_masks(seed=1)
    for name in NAMES:
        layer(model, name).set_mask(masks[name])
    got = Masks.from_model(model)
    assert list(got) == NAMES
    for name in NAMES:
        assert got[name].dtype == torch.bool
        assert torch.equal(got[name], masks[name])
    got["classifier.weight"].fill_(False)
    assert torch.equal(model.classifier.mask, masks["classifier.weight"]), "from_model must copy, not view"
    model.features[0].mask.fill_(True)
    assert torch.equal(got["features.0.weight"], masks["features.0.weight"])


def test_from_model_without_masked_layers_is_a_value_error():
    with pytest.raises(ValueError, match="no masked layers"):
        Masks.from_model(nn.Sequential(nn.Linear(2, 2)))


def test_apply_to_writes_the_masks_and_zeroes_the_pruned_weights():
    model = named_model()
    before = {name: layer(model, name).weight.detach().clone() for name in NAMES}
    masks = random_masks(seed=2)
    assert masks.apply_to(model) is model
    for name in NAMES:
        mod = layer(model, name)
        assert torch.equal(mod.mask, masks[name])
        assert not mod.weight[~masks[name]].any()
        assert torch.equal(mod.weight[masks[name]], before[name][masks[name]])
    assert Masks.from_model(model) == masks


def test_apply_to_an_unknown_name_is_a_key_error_naming_it_and_changes_nothing():
    model = named_model()
    masks = dict(random_masks(seed=3))
    masks["features.9.weight"] = torch.zeros(3, 2, 3, 3, dtype=torch.bool)
    with pytest.raises(KeyError, match=re.escape("features.9.weight")):
        Masks(masks).apply_to(model, strict=False)
    assert all(layer(model, name).mask.all() for name in NAMES), "a rejected Masks must not be half applied"


def test_apply_to_a_mask_of_the_wrong_shape_is_a_value_error_naming_the_layer_and_both_shapes():
    model = named_model()
    masks = dict(random_masks(seed=4))
    masks["classifier.weight"] = torch.ones(4, 11, dtype=torch.bool)
    with pytest.raises(ValueError) as info:
        Masks(masks).apply_to(model)
    message = str(info.value)
    assert "classifier.weight" in message and "(4, 11)" in message and "(4, 12)" in message
    assert model.features[0].mask.all(), "a rejected Masks must not be half applied"


def test_apply_to_strict_requires_a_mask_for_every_masked_layer():
    model = named_model()
    partial = Masks({"classifier.weight": random_masks(seed=5)["classifier.weight"]})
    with pytest.raises(KeyError, match=re.escape("features.0.weight")):
        partial.apply_to(model)
    assert model.classifier.mask.all()
    partial.apply_to(model, strict=False)
    assert torch.equal(model.classifier.mask, partial["classifier.weight"])
    assert model.features[0].mask.all(), "strict=False leaves layers without a mask as they are"


def test_masks_reject_non_bool_tensors_and_non_weight_names():
    with pytest.raises(TypeError, match="classifier.weight"):
        Masks({"classifier.weight": torch.ones(2, 2)})
    with pytest.raises(ValueError, match="classifier.bias"):
        Masks({"classifier.bias": torch.ones(2, dtype=torch.bool)})


# --- wrapped models: DDP, torch.compile -------------------------------------------------------------------------


def test_masks_move_between_a_wrapped_model_and_the_bare_one_under_the_bare_names(wrap):
    model = named_model()
    wrapped = wrap(model)
    prefixed = [n for n, _ in wrapped.named_parameters()]
    assert prefixed and all(n.startswith(("module.", "_orig_mod.")) for n in prefixed), "a wrapper that renames"
    masks = random_masks(seed=20)
    assert masks.apply_to(wrapped) is wrapped
    for name in NAMES:  # written into the model the wrapper holds, pruned weights zeroed
        assert torch.equal(layer(model, name).mask, masks[name])
        assert not layer(model, name).weight[~masks[name]].any()
    taken = Masks.from_model(wrapped)
    assert list(taken) == NAMES
    assert taken == masks
    bare = named_model(seed=1)
    taken.apply_to(bare)
    assert Masks.from_model(bare) == masks
    assert list(Masks.ones_like(wrapped)) == NAMES
    assert Masks.ones_like(wrapped).sparsity() == 0.0


def test_apply_to_a_wrapped_model_refuses_prefixed_names_and_lists_the_bare_ones(wrap):
    wrapped = wrap(named_model())
    prefixed = Masks({f"module.{n}": m for n, m in random_masks(seed=21).items()})
    with pytest.raises(KeyError, match=re.escape("(its masked weights: features.0.weight, classifier.weight)")):
        prefixed.apply_to(wrapped)


def test_a_compiled_submodule_adds_nothing_to_the_names():
    model = named_model()
    model.features = torch.compile(model.features)
    assert "features._orig_mod.0.weight" in dict(model.named_parameters())
    masks = random_masks(seed=22)
    masks.apply_to(model)
    assert torch.equal(model.features._orig_mod[0].mask, masks["features.0.weight"])
    assert list(Masks.from_model(model)) == NAMES
    assert Masks.from_model(model) == masks


def test_from_model_reads_a_compiled_model_pruned_with_torch_prune_under_the_bare_names():
    torch.manual_seed(0)
    model = Named()
    prune.l1_unstructured(model.classifier, "weight", amount=0.5)
    masks = Masks.from_model(torch.compile(model))
    assert list(masks) == ["classifier.weight"]
    assert torch.equal(masks["classifier.weight"], model.classifier.weight_mask.bool())


# --- counts -----------------------------------------------------------------------------------------------------


def hand_made() -> Masks:
    a = torch.tensor([[True, False, False, True], [True, True, True, True]])  # 2 of 8 pruned
    b = torch.tensor([False, False, False, True, True, True, True, True])  # 3 of 8 pruned
    c = torch.zeros(0, 3, dtype=torch.bool)  # no weights at all
    return Masks({"a.weight": a, "b.weight": b, "c.weight": c})


def test_sparsity_and_density_are_exact_on_hand_made_masks():
    masks = hand_made()
    assert masks.num_weights() == 16
    assert masks.num_unpruned() == 11
    assert masks.sparsity() == 5 / 16
    assert masks.density() == 11 / 16
    assert masks.layer_sparsity() == {"a.weight": 0.25, "b.weight": 0.375, "c.weight": 0.0}


def test_sparsity_at_zero_and_full_pruning():
    dense = Masks({"a.weight": torch.ones(3, 5, dtype=torch.bool)})
    empty = Masks({"a.weight": torch.zeros(3, 5, dtype=torch.bool)})
    assert dense.sparsity() == 0.0 and dense.density() == 1.0
    assert empty.sparsity() == 1.0 and empty.density() == 0.0
    assert empty.layer_sparsity() == {"a.weight": 1.0}


# --- files ------------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    masks = hand_made()
    path = tmp_path / "masks.safetensors"
    masks.save(path)
    loaded = Masks.load(path)
    assert loaded == masks
    assert list(loaded) == list(masks)
    assert all(loaded[n].dtype == torch.bool and loaded[n].shape == masks[n].shape for n in masks)
    assert not list(tmp_path.glob("*.tmp")), "the temporary file must be renamed away"


def test_saved_file_is_safetensors_not_a_pickle(tmp_path):
    path = tmp_path / "masks.safetensors"
    random_masks(seed=6).save(path)
    data = path.read_bytes()
    assert not data.startswith(b"\x80"), "a pickle protocol header"
    (header_length,) = struct.unpack("<Q", data[:8])
    assert 8 + header_length <= len(data)
    header = json.loads(data[8 : 8 + header_length])
    assert set(header) == {"__metadata__", *NAMES}
    assert header["classifier.weight"]["dtype"] == "BOOL"
    assert header["classifier.weight"]["shape"] == [4, 12]


def test_loading_a_safetensors_file_with_other_metadata_is_a_value_error(tmp_path):
    tensors = {"classifier.weight": torch.ones(4, 12, dtype=torch.bool)}
    other, bare = tmp_path / "other.safetensors", tmp_path / "bare.safetensors"
    save_file(tensors, str(other), metadata={"format": "pt"})
    save_file(tensors, str(bare))
    for path in (other, bare):
        with pytest.raises(ValueError, match="not an lth_sparse masks file"):
            Masks.load(path)


def test_loading_a_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        Masks.load(tmp_path / "nothing-here.safetensors")


# --- algebra ----------------------------------------------------------------------------------------------------


def test_and_or_are_elementwise_per_layer():
    x, y = random_masks(seed=7), random_masks(seed=8)
    both, either = x & y, x | y
    assert isinstance(both, Masks) and isinstance(either, Masks)
    for name in NAMES:
        assert torch.equal(both[name], x[name] & y[name])
        assert torch.equal(either[name], x[name] | y[name])
    assert both.num_unpruned() < x.num_unpruned() < either.num_unpruned()


def test_equality_compares_every_mask():
    x = random_masks(seed=9)
    same = Masks({n: m.clone() for n, m in x.items()})
    assert x == same
    flipped = Masks({n: m.clone() for n, m in x.items()})
    flipped["classifier.weight"][0, 0] ^= True
    assert x != flipped
    assert x != Masks({"classifier.weight": x["classifier.weight"]})
    assert x != {n: m for n, m in x.items()}


def test_is_subset_of_holds_for_nested_masks_only():
    x = random_masks(seed=10)
    smaller = x & random_masks(seed=11)
    assert smaller.is_subset_of(x)
    assert x.is_subset_of(x)
    assert not x.is_subset_of(smaller)
    assert not random_masks(seed=12).is_subset_of(x)


def test_combining_masks_over_different_layers_is_a_key_error():
    x = random_masks(seed=13)
    other = Masks({"classifier.weight": x["classifier.weight"]})
    with pytest.raises(KeyError, match="features.0.weight"):
        x & other


# --- torch.nn.utils.prune ---------------------------------------------------------------------------------------


def test_from_model_reads_a_model_pruned_with_torch_prune():
    torch.manual_seed(0)
    model = Named()
    prune.global_unstructured(
        [(model.features[0], "weight"), (model.classifier, "weight")], pruning_method=prune.L1Unstructured, amount=0.3
    )
    masks = Masks.from_model(model)
    assert list(masks) == NAMES
    assert torch.equal(masks["features.0.weight"], model.features[0].weight_mask.bool())
    assert torch.equal(masks["classifier.weight"], model.classifier.weight_mask.bool())
    assert masks.num_weights() - masks.num_unpruned() == round(0.3 * masks.num_weights())
    # and they fit the same model converted to masked layers
    converted = masked(model)
    assert Masks.from_model(converted) == masks
