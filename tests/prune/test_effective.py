"""``lth_sparse.prune.effective_masks``: kept weights on no input-output path count as pruned
(Vysogorets & Kempe 2023), checked on hand-built masked networks and on the registry's models."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lth_sparse import Masks
from lth_sparse.models import create_model
from lth_sparse.nn import masked
from lth_sparse.prune import effective_masks, output_connected_masks, prune_magnitude


def masks_from_rows(rows: dict[str, list[str]]) -> Masks:
    """Masks written as strings of 0/1, one string per output unit."""
    return Masks({name: torch.tensor([[c == "1" for c in row] for row in table]) for name, table in rows.items()})


def three_layer_mlp() -> nn.Module:
    """3 -> 4 -> 3 -> 2, ReLU, with biases (which must not count as paths)."""
    torch.manual_seed(0)
    model = masked(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    with torch.no_grad():
        for layer in (model[0], model[2], model[4]):
            layer.bias.fill_(1.0)  # a unit with a positive bias but no input is still on no path
    return model


def test_weights_of_a_unit_without_inputs_or_without_outputs_are_ineffective():
    # Hidden layer 1 (4 units):
    #   unit 0 receives no kept weight  -> its outgoing weights (column 0 of 2.weight) are ineffective;
    #   unit 1 sends no kept weight     -> its incoming weights (row 1 of 0.weight) are ineffective.
    # Hidden layer 2 (3 units):
    #   unit 2's only input is unit 0 (dead) -> its outgoing weights (column 2 of 4.weight) go too, and
    #   with them its incoming weight from unit 0 (already ineffective).
    masks = masks_from_rows(
        {
            "0.weight": ["000", "111", "101", "010"],
            "2.weight": ["1011", "1001", "1000"],
            "4.weight": ["111", "011"],
        }
    )
    expected = masks_from_rows(
        {
            "0.weight": ["000", "000", "101", "010"],
            "2.weight": ["0011", "0001", "0000"],
            "4.weight": ["110", "010"],
        }
    )
    model = three_layer_mlp()
    masks.apply_to(model)
    assert effective_masks(model, input_shape=(3,)) == expected
    # Given masks are used instead of the model's own (here the model is dense).
    dense = three_layer_mlp()
    assert effective_masks(dense, masks, input_shape=(3,)) == expected


def test_an_input_feature_with_no_kept_weight_does_not_make_other_weights_ineffective():
    # Input feature 2 feeds nothing: every other kept weight still lies on a path.
    masks = masks_from_rows(
        {
            "0.weight": ["110", "010", "100", "110"],
            "2.weight": ["1111", "0101", "1010"],
            "4.weight": ["111", "101"],
        }
    )
    model = three_layer_mlp()
    masks.apply_to(model)
    assert effective_masks(model, input_shape=(3,)) == masks


def test_a_layer_with_no_kept_weight_makes_every_weight_ineffective():
    masks = masks_from_rows(
        {
            "0.weight": ["111", "111", "111", "111"],
            "2.weight": ["0000", "0000", "0000"],
            "4.weight": ["111", "111"],
        }
    )
    model = three_layer_mlp()
    masks.apply_to(model)
    effective = effective_masks(model, input_shape=(3,))
    assert effective.num_unpruned() == 0
    assert list(effective) == list(masks)


def test_effective_masks_do_not_change_the_model():
    model = three_layer_mlp()
    masks_from_rows(
        {"0.weight": ["000", "111", "101", "010"], "2.weight": ["1011", "1001", "1000"], "4.weight": ["111", "011"]}
    ).apply_to(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    effective_masks(model, input_shape=(3,))
    after = model.state_dict()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in state.items())


def test_a_dense_mlp_is_fully_effective():
    torch.manual_seed(0)
    model = create_model("mlp", (1, 8, 8), 10, depth=2, width=16)
    masks = Masks.from_model(model)
    assert effective_masks(model) == masks  # input_shape from the model's attribute


def test_without_input_shape_is_a_value_error():
    with pytest.raises(ValueError, match="input_shape"):
        effective_masks(three_layer_mlp())


@pytest.mark.parametrize("name, shape", [("conv2", (1, 8, 8)), ("lenet5", (1, 12, 12))])
def test_conv_models_effective_sparsity_is_at_least_the_nominal_one(name, shape):
    torch.manual_seed(0)
    model = create_model(name, shape, 10)
    assert effective_masks(model) == Masks.from_model(model), "a dense conv net on these sizes is fully effective"
    # Layerwise pruning of 95% leaves too few weights for every kept one to be on a path.
    masks = prune_magnitude(model, 0.95, scope="layerwise")
    masks.apply_to(model)
    effective = effective_masks(model)
    assert effective.is_subset_of(masks)
    assert effective.sparsity() >= masks.sparsity()
    assert all(effective[n].shape == masks[n].shape for n in masks)


@pytest.fixture(scope="module")
def small_vgg11():
    torch.manual_seed(0)
    model = create_model("vgg11", (3, 16, 16), 10)
    return model, effective_masks(model)


def test_vgg_with_batchnorm_runs_and_taps_that_only_ever_read_padding_are_ineffective(small_vgg11):
    # On 16x16 inputs the last two 3x3 convolutions (conv7, conv8) see 1x1 maps: only the kernel's centre
    # ever multiplies a real value, its 8 other taps multiply the zero padding.
    model, effective = small_vgg11
    masks = Masks.from_model(model)
    assert effective.is_subset_of(masks)
    centre_only = torch.zeros(512, 512, 3, 3, dtype=torch.bool)
    centre_only[:, :, 1, 1] = True
    assert torch.equal(effective["conv7.weight"], centre_only)
    assert torch.equal(effective["conv8.weight"], centre_only)
    for name in ("conv1.weight", "conv2.weight", "conv3.weight", "conv4.weight", "conv5.weight", "fc.weight"):
        assert effective[name].all(), name
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_vgg_weights_reaching_a_max_pool_window_are_effective(small_vgg11):
    # conv6 sees a 2x2 map and pool4 takes the max of it: each of the 9 taps reaches some position of
    # that map, which max-pooling can pass on, so every conv6 weight is on an input-output path.
    _, effective = small_vgg11
    assert effective["conv6.weight"].all()


def test_a_path_through_a_position_that_max_pooling_does_not_pick_in_the_all_ones_pass_is_effective():
    # 1x2x2 input -> conv_a (1 -> 2 channels, 3x3, padding 1) -> conv_b (2 -> 1, 3x3, padding 1) -> ReLU
    #   -> MaxPool2d(2) (one value) -> Linear(1 -> 1).
    # conv_a channel 0 keeps only tap (+1, +1): its map is 1 at (0, 0) and 0 elsewhere; channel 1 keeps the
    # centre tap: 1 everywhere. conv_b keeps channel 0's centre tap, and channel 1's tap (-1, -1), which
    # carries channel 1's value at (0, 0) to position (1, 1). With all-ones weights conv_b's map is
    # [[1, 0], [0, 1]]: the pool's tie picks (0, 0), so channel 1's path through (1, 1) gets no gradient,
    # though with other weights (or inputs) the pool picks (1, 1) and that path carries the output.
    torch.manual_seed(0)
    model = masked(
        nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1),
            nn.Conv2d(2, 1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(1, 1),
        )
    )
    conv_a = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    conv_a[0, 0, 2, 2] = True
    conv_a[1, 0, 1, 1] = True
    conv_b = torch.zeros(1, 2, 3, 3, dtype=torch.bool)
    conv_b[0, 0, 1, 1] = True
    conv_b[0, 1, 0, 0] = True
    masks = Masks({"0.weight": conv_a, "1.weight": conv_b, "5.weight": torch.ones(1, 1, dtype=torch.bool)})
    masks.apply_to(model)
    # The path is real: with these weights the output depends on conv_b's channel-1 tap.
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].weight.fill_(1.0)
        model[1].weight[0, 1, 0, 0] = 5.0
        model[5].weight.fill_(1.0)
        for m in (model[0], model[1], model[5]):
            m.bias.zero_()
        x = torch.ones(1, 1, 2, 2)
        before = model(x)
        model[1].weight[0, 1, 0, 0] = 7.0
        assert model(x) != before
    assert effective_masks(model, input_shape=(1, 2, 2)) == masks


def test_resnet_with_batchnorm_and_shortcuts_runs_and_keeps_a_dense_net_dense():
    torch.manual_seed(0)
    model = create_model("resnet20", (3, 8, 8), 10, width=4)
    masks = Masks.from_model(model)
    assert effective_masks(model) == masks
    pruned = prune_magnitude(model, 0.9)
    pruned.apply_to(model)
    effective = effective_masks(model)
    assert effective.is_subset_of(pruned)
    assert effective.sparsity() >= pruned.sparsity()


def test_a_deep_mlp_whose_path_counts_overflow_float64_is_exact():
    # 400 layers of width 10: about 10**400 input-output paths, beyond float64 (1.8e308), where path counting
    # gives inf, then inf * 0 = NaN for a dead weight. By hand, all layers dense except:
    #   layer 50 keeps no weight into its unit 3  -> unit 3 receives nothing: column 3 of layer 51 is dead;
    #   layer 360 keeps no weight out of unit 7   -> unit 7 reaches nothing: row 7 of layer 359 is dead;
    #   unit 9 of every layer is fed by unit 9 alone -> one path among 10**400, every (9, 9) weight is effective.
    depth, width = 400, 10
    model = masked(nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU())]))
    names = [f"{2 * i}.weight" for i in range(depth)]
    rows = {name: torch.ones(width, width, dtype=torch.bool) for name in names}
    for mask in rows.values():
        mask[9] = False
        mask[9, 9] = True
    rows["100.weight"][3] = False  # layer 50
    rows["720.weight"][:, 7] = False  # layer 360
    masks = Masks(rows)
    masks.apply_to(model)
    effective = effective_masks(model, input_shape=(width,))
    expected = Masks({name: mask.clone() for name, mask in rows.items()})
    expected["102.weight"][:, 3] = False  # layer 51
    expected["718.weight"][7] = False  # layer 359
    assert effective == expected
    assert all(effective[name][9, 9] for name in names)
    assert effective.num_unpruned() == masks.num_unpruned() - 9 - 10


def test_a_layer_the_output_does_not_use_is_wholly_ineffective():
    class SideBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            self.unused(x)
            return self.used(x)

    model = masked(SideBranch())
    effective = effective_masks(model, input_shape=(3,))
    assert effective["used.weight"].all()
    assert not effective["unused.weight"].any()


def test_effective_masks_of_a_wrapped_model_are_the_bare_models(wrap):
    model = three_layer_mlp()
    masks_from_rows(
        {"0.weight": ["000", "111", "101", "010"], "2.weight": ["1011", "1001", "1000"], "4.weight": ["111", "011"]}
    ).apply_to(model)
    model.input_shape = (3,)
    expected = effective_masks(model)
    wrapped = wrap(model)
    assert effective_masks(wrapped) == expected
    assert effective_masks(wrapped, Masks.from_model(model), input_shape=(3,)) == expected


def test_output_connected_counts_only_weights_cut_off_from_the_output():
    # Paganini & Forde's count (Appendix C): unit 1 of hidden layer 1 sends no kept weight, so its incoming
    # weights (row 1 of 0.weight) receive no gradient and count as pruned; unit 0 receives no kept weight but
    # still reaches the output (through its bias it carries a signal): its outgoing weights stay.
    masks = masks_from_rows(
        {
            "0.weight": ["000", "111", "101", "010"],
            "2.weight": ["1011", "1001", "1000"],
            "4.weight": ["111", "011"],
        }
    )
    expected = masks_from_rows(
        {
            "0.weight": ["000", "000", "101", "010"],
            "2.weight": ["1011", "1001", "1000"],
            "4.weight": ["111", "011"],
        }
    )
    assert output_connected_masks(three_layer_mlp(), masks, input_shape=(3,)) == expected
    # a cut that runs through the last layer takes everything before it
    cut = masks_from_rows({"0.weight": ["111"] * 4, "2.weight": ["1111"] * 3, "4.weight": ["000", "000"]})
    assert output_connected_masks(three_layer_mlp(), cut, input_shape=(3,)).num_unpruned() == 0


@pytest.mark.parametrize("name,shape", [("lenet300", (1, 28, 28)), ("lenet5", (1, 28, 28)), ("conv2", (3, 32, 32))])
def test_effective_masks_lie_inside_the_output_connected_ones(name, shape):
    torch.manual_seed(0)
    model = create_model(name, shape, 10)
    masks = prune_magnitude(model, 0.995, scope="layerwise")
    masks.apply_to(model)
    both = effective_masks(model, input_shape=shape)
    output_side = output_connected_masks(model, input_shape=shape)
    assert both.is_subset_of(output_side) and output_side.is_subset_of(masks)
    assert output_side.num_unpruned() >= both.num_unpruned()
