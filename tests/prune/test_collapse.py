"""Collapse for a task (:func:`lth_sparse.prune.collapse.task_collapse`): hand-made masks with known answers, the
needs of the planting targets, and SNIP's and GraSP's masks at the planted density of Plant 'n' Seek's Circle,
which keep a path (so the old "no path" reading calls them not collapsed) and still cannot compute the target."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from lth_sparse.masks import Masks
from lth_sparse.nn import masked
from lth_sparse.pipelines.steps import shared_dataset
from lth_sparse.planting import make_target, plant
from lth_sparse.prune import get_pruner, network_collapsed
from lth_sparse.prune.collapse import COLLAPSE_CRITERIA, TargetNeeds, structural_rank, target_needs, task_collapse
from lth_sparse.train import default_loss


def test_structural_rank_known_answers():
    assert structural_rank(torch.eye(3, dtype=torch.bool)) == 3
    assert structural_rank(torch.ones(2, 5, dtype=torch.bool)) == 2  # any full pattern: full rank
    one_column = torch.zeros(4, 3, dtype=torch.bool)
    one_column[:, 0] = True
    assert structural_rank(one_column) == 1  # four rows reading one input: one direction
    assert structural_rank(torch.zeros(3, 3, dtype=torch.bool)) == 0
    # a pattern whose rows cover three columns but can be matched to two of them only (rows 0 and 1 read column 0
    # alone, row 2 reads columns 1 and 2): rank 2, not 3
    pattern = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 1]], dtype=torch.bool)
    assert structural_rank(pattern) == 2
    assert structural_rank(torch.ones(4, 1, 3, 3, dtype=torch.bool)) == 4  # read as (out, in * kh * kw)


def mlp() -> nn.Sequential:
    """2 inputs, hidden layers of 4 and 4, 3 outputs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))


NEEDS = TargetNeeds(outputs=(0, 1, 2), input_rank=2, output_rank=3)


def masks_of(**changes: torch.Tensor) -> Masks:
    full = {"0.weight": torch.ones(4, 2), "2.weight": torch.ones(4, 4), "4.weight": torch.ones(3, 4)}
    full.update({f"{name}.weight": value for name, value in changes.items()})
    return Masks({name: value.bool() for name, value in full.items()})


def single_path() -> dict[str, torch.Tensor]:
    """input 0 -> hidden unit 0 -> hidden unit 0 -> output 0."""
    first, middle, last = torch.zeros(4, 2), torch.zeros(4, 4), torch.zeros(3, 4)
    first[0, 0] = middle[0, 0] = last[0, 0] = 1
    return {"0": first, "2": middle, "4": last}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, ()),
        ({"2": torch.zeros(4, 4)}, ("no_path",)),  # the old reading: no path at all
        ({"4": torch.tensor([[1.0] * 4, [1.0] * 4, [0.0] * 4])}, ("dead_output", "output_rank")),
        ({"0": torch.tensor([[1.0, 0.0]] * 4)}, ("input_rank",)),  # every kept input weight reads input 0
        ({"4": torch.tensor([[1.0, 0, 0, 0]] * 3)}, ("output_rank",)),  # every output reads hidden unit 0 alone
        (single_path(), ("dead_output", "input_rank", "output_rank")),
    ],
)
def test_task_collapse_of_hand_made_masks(changes, expected):
    model = mlp()
    masks = masks_of(**changes)
    assert task_collapse(model, masks, NEEDS, input_shape=(2,)) == expected
    assert network_collapsed(model, masks, input_shape=(2,)) == (expected == ("no_path",))
    assert set(expected) <= set(COLLAPSE_CRITERIA)


def test_weights_off_every_path_do_not_count():
    # input 1 reaches hidden unit 3 of the first layer, which the next layer no longer reads: the raw first-layer
    # mask has rank 2, its weights on input-output paths rank 1
    first = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    middle = torch.ones(4, 4)
    middle[:, 3] = 0
    masks = masks_of(**{"0": first, "2": middle})
    assert structural_rank(masks["0.weight"]) == 2
    assert task_collapse(mlp(), masks, NEEDS, input_shape=(2,)) == ("input_rank",)
    # a need the mask meets fires nothing: one input direction suffices for this target
    assert task_collapse(mlp(), masks, NEEDS._replace(input_rank=1), input_shape=(2,)) == ()


def test_the_needs_of_the_planting_targets():
    # Circle: its four scores a_k g + beta_k are affine in one radius g, which reads both coordinates; Helix:
    # three coordinates of one input; ReLU: one of one
    for depth in (3, 5, 10):
        assert target_needs(make_target("circle", depth), (2,)) == TargetNeeds((0, 1, 2, 3), 2, 1)
        assert target_needs(make_target("helix", depth), (1,)) == TargetNeeds((0, 1, 2), 1, 3)
        assert target_needs(make_target("relu", depth), (1,)) == TargetNeeds((0,), 1, 1)
    # an output the target leaves constant is not needed
    target = make_target("helix", 3)
    with torch.no_grad():
        target[2].weight[1] = 0
    assert target_needs(target, (1,)).outputs == (0, 2)


def test_the_planted_ticket_and_the_dense_host_do_not_collapse():
    for task, shape in (("circle", (2,)), ("helix", (1,)), ("relu", (1,))):
        target = make_target(task, 5)
        host, planted, _ = plant(target, 100, seed=0)
        needs = target_needs(target, shape)
        assert task_collapse(host, planted, needs, shape) == ()
        assert task_collapse(host, Masks.ones_like(masked(copy.deepcopy(host))), needs, shape) == ()


@pytest.mark.parametrize("pruner", ["snip", "grasp"])
@pytest.mark.parametrize("seed", [0, 1])
def test_snip_and_grasp_at_the_planted_density_keep_a_path_but_cannot_compute_circle(pruner, seed):
    # Circle planted in a depth-5, width-100 host, pruned to the planted density (0.0052, 108 weights) as the plant
    # pipeline's unit does (its data, its batch of 40 training points, its generator): a few weights on one or two
    # paths survive, so the old reading (no path at all) calls the mask not collapsed, while one or two of the four
    # scores get no path (the benchmark's masks, these, train to chance, 0.456)
    data = shared_dataset("circle", device="cpu", val_fraction=0.1, seed=0)
    target = make_target("circle", 5)
    host, planted, _ = plant(target, 100, seed=seed)
    model = masked(host.float())
    generator = torch.Generator().manual_seed(seed * 7919 + 13)
    order = torch.randperm(len(data.train), generator=generator)[:40]
    masks = get_pruner(pruner)(
        model,
        density=planted.density(),
        batch=(data.train.x[order], data.train.y[order]),
        loss_fn=default_loss(data.train.y),
        input_shape=(2,),
        generator=generator,
    )
    fired = task_collapse(model, masks, target_needs(target, (2,)), (2,))
    print(pruner, seed, [int(m.sum()) for m in masks.values()], fired)
    assert not network_collapsed(model, masks, input_shape=(2,))
    assert "dead_output" in fired and "no_path" not in fired
