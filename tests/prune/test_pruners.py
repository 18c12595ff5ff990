"""``lth_sparse.prune`` pruners: each importance against a hand computation (layerwise-importance paper,
Sec. 2.1; LAMP of Lee et al. 2021), global and layerwise scopes against a plain sort, exclusion, nesting,
``torch.nn.utils.prune`` agreement, random and structured pruning, and the argument errors."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.nn as nn
from tolerances import assert_close
from torch.nn.utils import prune as torch_prune

from lth_sparse import Masks
from lth_sparse.nn import masked
from lth_sparse.prune import (
    IMPORTANCES,
    LAYER_NORMALISED,
    importance_scores,
    prune_magnitude,
    prune_random,
    prune_structured,
    random_masks_like,
)

NAMES = ["0.weight", "2.weight", "4.weight"]


def mlp(seed: int = 0, dtype=torch.float64) -> nn.Module:
    """A masked 7 -> 6 -> 5 -> 3 MLP (weights named ``0.weight``, ``2.weight``, ``4.weight``).

    float64 so that the hand-computed scores order exactly as the library's do.
    """
    torch.manual_seed(seed)
    return masked(nn.Sequential(nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))).to(dtype)


def layers_of(model: nn.Module) -> dict[str, nn.Module]:
    return {name: model.get_submodule(name[: -len(".weight")]) for name in NAMES}


def random_partial_masks(model: nn.Module, seed: int, density: float = 0.7) -> Masks:
    g = torch.Generator().manual_seed(seed)
    return Masks(
        {name: torch.rand(layer.weight.shape, generator=g) < density for name, layer in layers_of(model).items()}
    )


def pruned_mlp(seed: int = 0) -> nn.Module:
    """``mlp(seed)`` with about 30% of each layer already pruned (those weights zeroed)."""
    model = mlp(seed)
    random_partial_masks(model, seed + 100).apply_to(model)
    return model


# --- hand computations ----------------------------------------------------------------------------------------


def hand_scores(weights: list[float], importance: str) -> list[float]:
    """Scores of a layer's unpruned weights, computed from the formulas with plain Python floats."""
    mags = [abs(w) for w in weights]
    if importance == "magnitude":
        return mags
    if importance == "l1":
        total = sum(mags)
        return [m / total for m in mags]
    if importance == "l2":
        total = sum(m * m for m in mags)
        return [m * m / total for m in mags]
    if importance == "softmax":
        total = sum(math.exp(m) for m in mags)
        return [math.exp(m) / total for m in mags]
    if importance == "minmax":
        low, high = min(mags), max(mags)
        return [(m - low) / (high - low) for m in mags]
    if importance == "lamp":
        return [m * m / sum(v * v for v in mags if v >= m) for m in mags]
    raise AssertionError(importance)


def hand_layer_scores(weight: torch.Tensor, mask: torch.Tensor, importance: str) -> dict[int, float]:
    """Flat index -> score, for the unpruned entries only."""
    flat_w, flat_m = weight.detach().reshape(-1).tolist(), mask.reshape(-1).tolist()
    active = [i for i, keep in enumerate(flat_m) if keep]
    return dict(zip(active, hand_scores([flat_w[i] for i in active], importance)))


def expected_global(
    model: nn.Module, masks: Masks, importance: str, fraction: float, exclude: tuple[str, ...] = ()
) -> Masks:
    """The masks after removing the round(fraction * remaining) lowest hand scores over all non-excluded layers."""
    layers = layers_of(model)
    pool = []  # (score, layer position, flat index)
    for pos, name in enumerate(NAMES):
        if name in exclude:
            continue
        for index, score in hand_layer_scores(layers[name].weight, masks[name], importance).items():
            pool.append((score, pos, index))
    pool.sort()
    k = round(fraction * len(pool))
    out = {name: masks[name].clone().reshape(-1) for name in NAMES}
    for _, pos, index in pool[:k]:
        out[NAMES[pos]][index] = False
    return Masks({name: out[name].reshape(masks[name].shape) for name in NAMES})


def expected_layerwise(model: nn.Module, masks: Masks, importance: str, fraction: float) -> Masks:
    layers = layers_of(model)
    out = {}
    for name in NAMES:
        scores = hand_layer_scores(layers[name].weight, masks[name], importance)
        ranked = sorted(scores, key=lambda i: (scores[i], i))
        flat = masks[name].clone().reshape(-1)
        flat[ranked[: round(fraction * len(ranked))]] = False
        out[name] = flat.reshape(masks[name].shape)
    return Masks(out)


def removed(before: Masks, after: Masks, name: str) -> int:
    return int(before[name].sum()) - int(after[name].sum())


# --- importance scores ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_importance_scores_equal_the_formula_over_unpruned_entries(importance):
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(4, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 5, generator=g) < 0.6
    # The pruned entries hold large values: they must not enter any layer-wide sum, min or max.
    weight = torch.where(mask, weight, torch.full_like(weight, 50.0))
    scores = importance_scores({"fc.weight": weight}, Masks({"fc.weight": mask}), importance)["fc.weight"]
    assert scores.shape == weight.shape
    expected = hand_layer_scores(weight, mask, importance)
    got = scores.reshape(-1)
    for index, value in expected.items():
        assert got[index].item() == pytest.approx(value, rel=1e-12, abs=1e-300), index


def test_importances_on_a_layer_worked_by_hand():
    # |w| = 1, 2, 3, 4 (the sign must not matter); the last row is pruned.
    weight = torch.tensor([[1.0, -2.0], [3.0, -4.0], [100.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, True], [False, False]])
    got = {
        imp: importance_scores({"w.weight": weight}, Masks({"w.weight": mask}), imp)["w.weight"][:2].reshape(-1)
        for imp in IMPORTANCES
    }
    e = [math.exp(v) for v in (1, 2, 3, 4)]
    expected = {
        "magnitude": [1.0, 2.0, 3.0, 4.0],
        "l1": [0.1, 0.2, 0.3, 0.4],
        "l2": [1 / 30, 4 / 30, 9 / 30, 16 / 30],
        "softmax": [v / sum(e) for v in e],
        "minmax": [0.0, 1 / 3, 2 / 3, 1.0],
        "lamp": [1 / 30, 4 / 29, 9 / 25, 1.0],
    }
    for imp in IMPORTANCES:
        assert_close(got[imp], torch.tensor(expected[imp], dtype=torch.float64))


def test_lamp_keeps_the_magnitude_order_within_a_layer_and_scores_the_largest_one():
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(6, 9, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 9, generator=g) < 0.8
    scores = importance_scores({"w.weight": weight}, Masks({"w.weight": mask}), "lamp")["w.weight"][mask]
    mags = weight.abs()[mask]
    assert torch.equal(torch.argsort(scores), torch.argsort(mags))
    assert scores[mags.argmax()].item() == pytest.approx(1.0)


def test_unknown_importance_is_a_value_error():
    model = mlp()
    with pytest.raises(ValueError, match="importance"):
        importance_scores({n: layer.weight for n, layer in layers_of(model).items()}, Masks.from_model(model), "taylor")
    with pytest.raises(ValueError, match="importance"):
        prune_magnitude(model, 0.2, importance="taylor")


# --- scopes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("importance", IMPORTANCES)
@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.93])
def test_global_scope_removes_the_lowest_scores_over_all_layers(importance, fraction):
    model = pruned_mlp(seed=1)
    before = Masks.from_model(model)
    after = prune_magnitude(model, fraction, scope="global", importance=importance)
    assert before.num_unpruned() - after.num_unpruned() == round(fraction * before.num_unpruned())
    assert after == expected_global(model, before, importance, fraction)
    assert after.is_subset_of(before)
    assert Masks.from_model(model) == before, "pruning returns new masks and leaves the model as it was"


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_layerwise_scope_removes_the_fraction_of_each_layer(fraction):
    model = pruned_mlp(seed=2)
    before = Masks.from_model(model)
    after = prune_magnitude(model, fraction, scope="layerwise", importance="magnitude")
    for name in NAMES:
        assert removed(before, after, name) == round(fraction * int(before[name].sum())), name
    assert after == expected_layerwise(model, before, "magnitude", fraction)


@pytest.mark.parametrize("importance", LAYER_NORMALISED)
def test_each_layer_normalised_importance_ranks_a_layers_weights_as_magnitude_does(importance):
    # Why layerwise scope refuses them: within one layer their order is |W|'s, ties included
    # (equal magnitudes, the pruned entries' large values and a zero weight).
    assert set(LAYER_NORMALISED) == set(IMPORTANCES) - {"magnitude"}, "a new importance must be classified"
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(8, 9, generator=g, dtype=torch.float64)
    weight[0, :3] = torch.tensor([0.5, -0.5, 0.5], dtype=torch.float64)
    weight[1, 0] = 0.0
    mask = torch.rand(8, 9, generator=g) < 0.8
    mask[:2] = True
    weight = torch.where(mask, weight, torch.full_like(weight, 50.0))
    scores = importance_scores({"w.weight": weight}, Masks({"w.weight": mask}), importance)["w.weight"][mask]
    mags = weight.abs()[mask]
    # lamp gives tied magnitudes different scores, the earlier position the lower one: prune_lowest's tie order.
    assert torch.equal(torch.argsort(scores, stable=True), torch.argsort(mags, stable=True))


@pytest.mark.parametrize("importance", LAYER_NORMALISED)
def test_layerwise_scope_with_a_layer_normalised_importance_is_a_value_error_saying_why(importance):
    model = pruned_mlp(seed=3)
    with pytest.raises(
        ValueError, match=f"importance='{importance}' with scope='layerwise' would be plain layerwise magnitude pruning"
    ) as info:
        prune_magnitude(model, 0.4, scope="layerwise", importance=importance)
    assert "ranks each layer's weights exactly as magnitude does" in str(info.value)
    assert (
        prune_magnitude(model, 0.4, scope="global", importance=importance).num_unpruned()
        < Masks.from_model(model).num_unpruned()
    )


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_excluded_layers_are_untouched_and_not_counted(scope):
    model = pruned_mlp(seed=4)
    before = Masks.from_model(model)
    after = prune_magnitude(model, 0.5, scope=scope, exclude=["4.weight"])
    assert torch.equal(after["4.weight"], before["4.weight"])
    remaining = int(before["0.weight"].sum()) + int(before["2.weight"].sum())
    if scope == "global":
        assert before.num_unpruned() - after.num_unpruned() == round(0.5 * remaining)
        assert after == expected_global(model, before, "magnitude", 0.5, exclude=("4.weight",))
    else:
        for name in ("0.weight", "2.weight"):
            assert removed(before, after, name) == round(0.5 * int(before[name].sum()))


@pytest.mark.parametrize("importance", ["magnitude", "l2", "lamp"])
def test_repeated_pruning_is_nested_and_counts_only_the_remaining_weights(importance):
    model = mlp(seed=5)
    masks = Masks.from_model(model)
    for _ in range(4):
        new = prune_magnitude(model, 0.3, importance=importance)
        assert new.is_subset_of(masks)
        assert masks.num_unpruned() - new.num_unpruned() == round(0.3 * masks.num_unpruned())
        new.apply_to(model)
        masks = new


def test_given_masks_are_used_instead_of_the_models_and_their_pruned_entries_stay_pruned():
    # The model is dense, so the weights under the given masks' pruned entries are not zero:
    # they must neither come back nor enter the layer-normalised scores.
    model = mlp(seed=6)
    masks = random_partial_masks(model, seed=7, density=0.5)
    after = prune_magnitude(model, 0.3, importance="l1", masks=masks)
    assert after.is_subset_of(masks)
    assert after == expected_global(model, masks, "l1", 0.3)
    assert Masks.from_model(model).num_unpruned() == Masks.from_model(model).num_weights()


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_fraction_zero_prunes_nothing_and_fraction_one_prunes_everything(scope):
    model = pruned_mlp(seed=8)
    before = Masks.from_model(model)
    assert prune_magnitude(model, 0.0, scope=scope) == before
    everything = prune_magnitude(model, 1.0, scope=scope, exclude=["4.weight"])
    assert not everything["0.weight"].any() and not everything["2.weight"].any()
    assert torch.equal(everything["4.weight"], before["4.weight"])


@pytest.mark.parametrize("fraction", [0.2, 0.55])
def test_global_magnitude_equals_torch_global_unstructured(fraction):
    torch.manual_seed(9)
    plain = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    ours = masked(copy.deepcopy(plain))
    torch_prune.global_unstructured(
        [(m, "weight") for m in plain if isinstance(m, nn.Linear)],
        pruning_method=torch_prune.L1Unstructured,
        amount=fraction,
    )
    got = prune_magnitude(ours, fraction, scope="global", importance="magnitude")
    assert list(got) == NAMES
    for name, module in zip(NAMES, [m for m in plain if isinstance(m, nn.Linear)]):
        assert torch.equal(got[name], module.weight_mask.bool()), name


def test_layer_normalised_importances_spare_a_layer_of_small_weights_that_magnitude_empties():
    # Layer 0's weights are all larger (|w| in [10, 11]) than the others' (|w| in [0.1, 1.1]): global
    # magnitude removes nothing from layer 0, the sum-to-one importances compare within-layer shares
    # and take from it too.
    model = mlp(seed=10)
    g = torch.Generator().manual_seed(10)
    with torch.no_grad():
        for name, layer in layers_of(model).items():
            offset = 10.0 if name == "0.weight" else 0.1
            sign = torch.where(torch.rand(layer.weight.shape, generator=g) < 0.5, -1.0, 1.0).double()
            layer.weight.copy_(sign * (offset + torch.rand(layer.weight.shape, generator=g, dtype=torch.float64)))
    before = Masks.from_model(model)
    fraction = 0.3  # 26 of 87 weights, fewer than the 45 outside layer 0
    by_magnitude = prune_magnitude(model, fraction, importance="magnitude")
    assert removed(before, by_magnitude, "0.weight") == 0
    for importance in ("l1", "l2"):
        normalised = prune_magnitude(model, fraction, importance=importance)
        assert removed(before, normalised, "0.weight") > 0, importance
        assert normalised == expected_global(model, before, importance, fraction)


# --- NaN and inf -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_nan_and_inf_weights_are_a_value_error_naming_each_layer_and_count(importance):
    # A NaN sorts above every number: ranked, it would be kept as the most important weight.
    model = mlp(seed=18)
    with torch.no_grad():
        model[0].weight[1, 2] = float("inf")
        model[4].weight[0, 0] = float("nan")
        model[4].weight[2, 1] = float("nan")
    with pytest.raises(ValueError, match=re.escape("0.weight (0 NaN, 1 inf), 4.weight (2 NaN, 0 inf)")):
        prune_magnitude(model, 0.2, importance=importance)
    with pytest.raises(ValueError, match="4.weight"):
        prune_structured(model, 0.2)


def test_nan_weights_that_are_pruned_or_excluded_do_not_matter():
    model = mlp(seed=19)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")  # pruned by the given masks
        model[4].weight[1, 1] = float("nan")  # in the excluded layer
    masks = Masks.from_model(model)
    masks["0.weight"][0, 0] = False
    after = prune_magnitude(model, 0.3, masks=masks, exclude=["4.weight"])
    assert not after["0.weight"][0, 0]
    assert torch.equal(after["4.weight"], masks["4.weight"])
    assert masks.num_unpruned() - after.num_unpruned() == round(0.3 * (int(masks["0.weight"].sum()) + 30))


def test_finite_weights_whose_scores_overflow_are_a_value_error():
    model = mlp(seed=20)
    with torch.no_grad():
        model[2].weight[0, 0] = 1e200  # its square is inf in float64: l2 scores become inf / inf
    with pytest.raises(ValueError, match=re.escape("l2 scores of unpruned weights (overflow?) must be finite")):
        prune_magnitude(model, 0.2, importance="l2")
    assert prune_magnitude(model, 0.2)["2.weight"][0, 0], "magnitude ranks it fine: the largest weight"


# --- wrapped models -------------------------------------------------------------------------------------------


def test_pruning_a_wrapped_model_gives_the_bare_models_masks(wrap):
    model = pruned_mlp(seed=21)

    def prune_all(m):
        return [
            prune_magnitude(m, 0.3),
            prune_magnitude(m, 0.3, scope="layerwise", exclude=["4.weight"]),
            prune_magnitude(m, 0.3, importance="lamp", masks=Masks.from_model(model)),
            prune_random(m, 0.3, generator=torch.Generator().manual_seed(0)),
            prune_structured(m, 0.3),
        ]

    expected = prune_all(model)
    got = prune_all(wrap(model))
    assert all(list(g) == NAMES for g in got)
    assert got == expected


# --- random pruning -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_prune_random_removes_the_counts_from_the_remaining_weights(scope):
    model = pruned_mlp(seed=11)
    before = Masks.from_model(model)
    after = prune_random(model, 0.4, scope=scope, exclude=["4.weight"], generator=torch.Generator().manual_seed(0))
    assert after.is_subset_of(before)
    assert torch.equal(after["4.weight"], before["4.weight"])
    if scope == "global":
        remaining = int(before["0.weight"].sum()) + int(before["2.weight"].sum())
        assert before.num_unpruned() - after.num_unpruned() == round(0.4 * remaining)
    else:
        for name in ("0.weight", "2.weight"):
            assert removed(before, after, name) == round(0.4 * int(before[name].sum()))


def test_prune_random_is_reproducible_with_a_seeded_generator():
    model = pruned_mlp(seed=12)

    def run(seed):
        return prune_random(model, 0.5, generator=torch.Generator().manual_seed(seed))

    assert run(0) == run(0)
    assert run(0) != run(1)
    assert run(0) != prune_magnitude(model, 0.5)


def test_random_masks_like_keeps_each_layers_count_and_moves_the_weights():
    model = pruned_mlp(seed=13)
    masks = prune_magnitude(model, 0.5)
    shuffled = random_masks_like(masks, generator=torch.Generator().manual_seed(0))
    assert list(shuffled) == list(masks)
    for name in masks:
        assert shuffled[name].shape == masks[name].shape
        assert shuffled[name].dtype == torch.bool
        assert int(shuffled[name].sum()) == int(masks[name].sum()), name
        assert not torch.equal(shuffled[name], masks[name]), name
    assert random_masks_like(masks, generator=torch.Generator().manual_seed(0)) == shuffled


# --- structured pruning ---------------------------------------------------------------------------------------


def conv_net(seed: int = 0) -> nn.Module:
    """Conv2d(2 -> 8, 3x3) on 4x4 inputs, then Linear(32 -> 7): weights ``0.weight`` and ``3.weight``."""
    torch.manual_seed(seed)
    return masked(nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 7))).double()


UNIT_NORMS = {
    "l1": lambda w: w.abs().sum(1),
    "l2": lambda w: w.square().sum(1).sqrt(),
    "linf": lambda w: w.abs().max(1).values,
}


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_structured_pruning_removes_the_lowest_norm_rows_and_channels_of_each_layer(norm, fraction):
    model = conv_net(seed=14)
    layers = {"0.weight": model[0], "3.weight": model[3]}
    g = torch.Generator().manual_seed(1)
    # Partly pruned already (and one unit of each layer entirely), the pruned entries holding large
    # values in the weights: the norms are over the unpruned entries only.
    masks = {name: torch.rand(layer.weight.shape, generator=g) < 0.8 for name, layer in layers.items()}
    masks["0.weight"][5] = False
    masks["3.weight"][2] = False
    masks = Masks(masks)
    with torch.no_grad():
        for name, layer in layers.items():
            layer.weight.copy_(torch.where(masks[name], layer.weight, torch.full_like(layer.weight, 9.0)))
    after = prune_structured(model, fraction, norm=norm, masks=masks)
    assert after.is_subset_of(masks)
    for name, layer in layers.items():
        w = torch.where(masks[name], layer.weight.detach(), 0.0).flatten(1)
        alive = masks[name].flatten(1).any(1)
        kept = after[name].flatten(1).any(1)
        # Whole units: a unit keeps all of its unpruned weights or none.
        for unit in range(w.shape[0]):
            row = after[name].flatten(1)[unit]
            assert torch.equal(row, masks[name].flatten(1)[unit]) or not row.any(), (name, unit)
        remaining_units = int(alive.sum())
        assert int(alive.sum()) - int(kept.sum()) == round(fraction * remaining_units), name
        norms = UNIT_NORMS[norm](w)
        gone = alive & ~kept
        assert norms[gone].max() < norms[kept].min(), name


def test_structured_pruning_of_linear_removes_rows_and_of_conv_removes_output_channels():
    model = conv_net(seed=15)
    with torch.no_grad():
        model[0].weight[3].mul_(1e-3)  # the conv's weakest output channel
        model[3].weight[6].mul_(1e-3)  # the linear layer's weakest output row
    after = prune_structured(model, 0.1, norm="l2")  # round(0.1 * 8) = 1, round(0.1 * 7) = 1
    conv_expected = torch.ones(8, 2, 3, 3, dtype=torch.bool)
    conv_expected[3] = False
    fc_expected = torch.ones(7, 32, dtype=torch.bool)
    fc_expected[6] = False
    assert torch.equal(after["0.weight"], conv_expected)
    assert torch.equal(after["3.weight"], fc_expected)


def test_structured_global_scope_removes_the_fraction_of_all_remaining_units():
    model = conv_net(seed=16)
    before = Masks.from_model(model)
    after = prune_structured(model, 0.4, norm="l2", scope="global")
    units_before = sum(int(m.flatten(1).any(1).sum()) for m in before.values())
    units_after = sum(int(m.flatten(1).any(1).sum()) for m in after.values())
    assert units_before - units_after == round(0.4 * units_before)
    for name in after:
        rows = after[name].flatten(1)
        assert torch.equal(rows.any(1), rows.all(1)), "whole units only"


# --- errors ---------------------------------------------------------------------------------------------------


def test_unknown_scope_and_norm_are_value_errors():
    model = mlp()
    with pytest.raises(ValueError, match="scope"):
        prune_magnitude(model, 0.2, scope="per-channel")
    with pytest.raises(ValueError, match="scope"):
        prune_random(model, 0.2, scope="per-channel")
    with pytest.raises(ValueError, match="norm"):
        prune_structured(model, 0.2, norm="l0")


@pytest.mark.parametrize("prune", [prune_magnitude, prune_random, prune_structured])
def test_unknown_exclude_name_is_a_key_error(prune):
    with pytest.raises(KeyError, match="fc9.weight"):
        prune(mlp(), 0.2, exclude=["fc9.weight"])


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
@pytest.mark.parametrize("prune", [prune_magnitude, prune_random, prune_structured])
def test_fraction_outside_zero_one_is_a_value_error(prune, fraction):
    with pytest.raises(ValueError, match="fraction"):
        prune(mlp(), fraction)


@pytest.mark.parametrize("prune", [prune_magnitude, prune_random, prune_structured])
def test_model_without_masked_layers_is_a_value_error(prune):
    plain = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="masked"):
        prune(plain, 0.2)
