"""The ReLU, Circle and Helix targets (Plant 'n' Seek, Section 2.3, Appendix A.4): what they compute, their
size (the planted densities of the paper), and their own scores on the tasks' data."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn as nn

from lth_sparse.planting import TASKS, make_target, planting_data, target_performance, ticket_density
from lth_sparse.planting.targets import CIRCLE_SLOPES, HELIX_KNOTS, knot_grid, univariate_pieces
from lth_sparse.planting.tasks import CIRCLE_BOUNDARIES, helix_function

DEPTHS = [3, 4, 5, 6, 7, 10]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


# Non-zero weights of the reference code's targets (RelationalML/PlantNSeek, plant_lottery_tickets/tickets.py:
# lottery_sphere(depth, [.2, .5, .7], 10, "class"), lottery_relu(depth, "reg")), counted by running it.
REFERENCE_WEIGHTS = {
    "circle": {3: 100, 4: 124, 5: 108, 6: 119, 7: 126, 10: 153},
    "relu": {3: 2, 4: 3, 5: 4, 6: 5, 7: 6, 10: 9},
}
# Helix: the reference code (lottery_helix_wide(..., depth, 30)) counts 115, 117, 120, 123, 126, 135, of which
# 24-25 are the rounding residue (|w| < 4e-15) of f_3's slope changes, zero in exact arithmetic; without them:
# 30 knot weights, 30 + 30 outer weights for f_1 and f_2, 1 for f_3, + 1 (the x + 1 neuron) from depth 4,
# + 3 per identity layer from depth 5.
HELIX_WEIGHTS = {3: 91, 4: 92, 5: 95, 6: 98, 7: 101, 10: 110}
# The reference code's Helix counts (lottery_helix_wide(fun_ex1, fun_ex2, fun_ex3, depth, 30), run), per layer,
# and the knots at which its f_3 output weight is non-zero (all but the first are rounding residues).
REFERENCE_HELIX_LAYERS = {
    3: [30, 85],
    4: [1, 30, 86],
    5: [1, 30, 86, 3],
    6: [1, 30, 86, 3, 3],
    7: [1, 30, 86, 3, 3, 3],
    10: [1, 30, 86, 3, 3, 3, 3, 3, 3],
}
REFERENCE_HELIX_F3_KNOTS = {
    3: [0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13, 14, 15, 17, 18, 19, 20, 22, 23, 24, 25, 26, 27, 28],
    4: [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 17, 18, 19, 20, 22, 23, 24, 25, 26, 27, 28],
}


def weight_count(target: nn.Sequential) -> int:
    return sum(int((m.weight != 0).sum()) for m in target if isinstance(m, nn.Linear))


@functools.cache
def data(task: str) -> dict:
    return planting_data(task)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("depth", DEPTHS)
def test_target_is_linear_relu_layers_of_its_depth(task, depth):
    target = make_target(task, depth)
    kinds = [type(m) for m in target]
    assert kinds == [nn.Linear, nn.ReLU] * (depth - 2) + [nn.Linear]
    assert target[0].in_features == {"relu": 1, "circle": 2, "helix": 1}[task]
    assert target[-1].out_features == {"relu": 1, "circle": 4, "helix": 3}[task]
    assert all(p.dtype == torch.float64 for p in target.parameters())


@pytest.mark.parametrize("depth", DEPTHS)
def test_weight_counts_match_the_reference_code(depth):
    assert weight_count(make_target("circle", depth, planting="exact")) == REFERENCE_WEIGHTS["circle"][depth]
    assert weight_count(make_target("relu", depth, planting="exact")) == REFERENCE_WEIGHTS["relu"][depth]
    assert weight_count(make_target("helix", depth, planting="exact")) == HELIX_WEIGHTS[depth]


@pytest.mark.parametrize("depth", DEPTHS)
def test_reference_planting_has_the_reference_codes_non_zeros(depth):
    # planting="reference" (the default): the reference code's counts for every task, its Helix residues included
    assert weight_count(make_target("circle", depth)) == REFERENCE_WEIGHTS["circle"][depth]
    assert weight_count(make_target("relu", depth)) == REFERENCE_WEIGHTS["relu"][depth]
    helix = make_target("helix", depth)
    layers = [m.weight for m in helix if isinstance(m, nn.Linear)]
    assert [int((w != 0).sum()) for w in layers] == REFERENCE_HELIX_LAYERS[depth]
    assert sum(REFERENCE_HELIX_LAYERS[depth]) - HELIX_WEIGHTS[depth] in (24, 25)  # the residues
    if depth in REFERENCE_HELIX_F3_KNOTS:
        f3 = layers[-1][2]
        assert (f3 != 0).nonzero().flatten().tolist() == REFERENCE_HELIX_F3_KNOTS[depth]
        assert 0 < float(f3[1:].abs().max()) <= 4e-15  # residues, not weights of the function
    # the two plantings build the same function, weight by weight to rounding
    exact = make_target("helix", depth, planting="exact")
    for a, b in zip(helix.parameters(), exact.parameters()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_reference_knots_are_spaced_as_numpy_linspace():
    # numpy.linspace(start, stop, n): start + i * (stop - start) / (n - 1), the last one stop; the two grids differ
    # in the last bit of some knots (these are numpy 2's values, printed with float.hex)
    grid = knot_grid(-1, 1, 30, "reference")
    step = 2 / 29
    assert grid.tolist() == [i * step - 1 for i in range(29)] + [1.0]
    assert knot_grid(0, 2, 30, "reference")[14].item().hex() == (14 * (2 / 29)).hex()
    assert not torch.equal(grid, knot_grid(-1, 1, 30, "exact"))
    torch.testing.assert_close(grid, knot_grid(-1, 1, 30, "exact"), atol=1e-15, rtol=0)
    with pytest.raises(ValueError, match="unknown planting 'paper'; choose one of reference, exact"):
        make_target("helix", 3, planting="paper")


def test_planted_densities_at_width_100_are_the_papers():
    # Figure 6 (depth 3): "Baseline tickets have sparsities of .16, .01, and .29" (densities, Circle / ReLU /
    # Helix). Circle: 100 of 2*100 + 100*4 weights.
    assert ticket_density(make_target("circle", 3), 100) == pytest.approx(100 / 600)
    assert math.floor(ticket_density(make_target("circle", 3), 100) * 100) / 100 == 0.16
    assert ticket_density(make_target("relu", 3), 100) == pytest.approx(0.01)
    # Helix: the paper's .29 is the reference code's 115 / 400, which counts 24 rounding residues of f_3
    # (see HELIX_WEIGHTS); the exact construction keeps 91 / 400.
    assert ticket_density(make_target("helix", 3, planting="exact"), 100) == pytest.approx(91 / 400)
    assert round((91 + 24) / 400, 2) == 0.29
    assert ticket_density(make_target("helix", 3), 100) == pytest.approx(115 / 400)  # planting="reference"
    assert round(ticket_density(make_target("helix", 3), 100), 2) == 0.29
    # Depth 5 (Figure 7, the leftmost sparsity; the reference code's counts): 4 weight layers,
    # 2*100 + 100*100*2 + 100*4 = 20600 weights for Circle, 20200 for ReLU, 20400 for Helix.
    assert ticket_density(make_target("circle", 5), 100) == pytest.approx(108 / 20600)
    assert ticket_density(make_target("relu", 5), 100) == pytest.approx(4 / 20200)
    assert ticket_density(make_target("helix", 5, planting="exact"), 100) == pytest.approx(95 / 20400)
    assert ticket_density(make_target("helix", 5), 100) == pytest.approx(120 / 20400)


def test_known_parameters_of_the_reference_code():
    # Values printed by the reference code (tickets.py: lottery_sphere, lottery_helix_wide; its weight
    # matrices are (in, out), ours (out, in)).
    def close(actual, expected):
        torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), atol=1e-11, rtol=0)

    circle3 = make_target("circle", 3)
    close(circle3[2].bias, [-14.691358024691, -30.382716049383, -64.765432098765, -137.530864197531])
    close(circle3[2].weight[:, 0], [2.222222222222, 4.444444444444, 8.888888888889, 17.777777777778])
    circle7 = make_target("circle", 7)
    close(circle7[10].bias, [-5.272540362996, -11.545080725991, -27.090161451982, -62.180322903965])
    close(
        circle7[6].weight.T,
        [
            [0.923879532511, -0.382683432365, 0.382683432365],  # the fold at pi/8
            [0.382683432365, 0.923879532511, -0.923879532511],
            [0.382683432365, 0.923879532511, -0.923879532511],
        ],
    )
    helix3 = make_target("helix", 3)
    close(helix3[2].bias, [6.429759340205, -8.24239844472, 0.25])
    close(helix3[2].weight[:, 0], [-3.516316401662, 5.315639761709, 0.375])
    helix6 = make_target("helix", 6)
    close(helix6[4].bias, [7.429759340205, -7.24239844472, 1.25])  # + 1 before the identity layers
    close(helix6[8].bias, [-1.0, -1.0, -1.0])


@pytest.mark.parametrize("depth", DEPTHS)
def test_relu_target_is_relu_everywhere(depth):
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64)[:, None]
    assert torch.equal(make_target("relu", depth)(x), x.clamp_min(0))


def interpolate(f, knots: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The piecewise-linear interpolant of f through knots, at x inside [knots[0], knots[-1]] (plain torch)."""
    values = f(knots)
    i = torch.searchsorted(knots, x.contiguous(), right=True).clamp(1, len(knots) - 1)
    lo, hi = knots[i - 1], knots[i]
    t = (x - lo) / (hi - lo)
    return values[i - 1] * (1 - t) + values[i] * t


@pytest.mark.parametrize("depth", DEPTHS)
def test_helix_target_is_the_interpolant_through_30_knots(depth):
    target = make_target("helix", depth)
    knots = torch.linspace(-1, 1, HELIX_KNOTS, dtype=torch.float64)
    torch.testing.assert_close(target(knots[:, None]), helix_function(knots[:, None]), atol=1e-12, rtol=0)
    x = torch.rand(5000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = torch.stack(
        [interpolate(lambda t, i=i: helix_function(t[:, None])[:, i], knots, x) for i in range(3)], dim=1
    )
    torch.testing.assert_close(target(x[:, None]), expected, atol=1e-12, rtol=0)


def test_helix_third_coordinate_is_a_single_path():
    # f_3 is linear: its only outer weight is on the first knot (Section 2.3: "a path ... a single neuron per layer")
    outer = make_target("helix", 3, planting="exact")[2].weight
    assert (outer[0] != 0).sum() == HELIX_KNOTS and (outer[1] != 0).sum() == HELIX_KNOTS
    assert (outer[2] != 0).nonzero().flatten().tolist() == [0]


def circle_g(target: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The g ~ x1^2 + x2^2 the Circle target's scores are built on: score_1 - score_0 = (a_1 - a_0)(g - B_0)."""
    scores = target(x)
    return (scores[:, 1] - scores[:, 0]) / (CIRCLE_SLOPES[1] - CIRCLE_SLOPES[0]) + CIRCLE_BOUNDARIES[0]


def test_circle_depth_3_squares_each_coordinate_through_10_knots():
    x = torch.rand(5000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    knots = torch.linspace(-1, 1, 10, dtype=torch.float64)
    expected = interpolate(torch.square, knots, x[:, 0]) + interpolate(torch.square, knots, x[:, 1])
    torch.testing.assert_close(circle_g(make_target("circle", 3), x), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("depth", [4, 5])
def test_circle_depth_4_and_5_square_the_absolute_values_through_10_knots(depth):
    x = torch.rand(5000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    knots = torch.linspace(0, 1, 10, dtype=torch.float64)
    expected = interpolate(torch.square, knots, x[:, 0].abs()) + interpolate(torch.square, knots, x[:, 1].abs())
    torch.testing.assert_close(circle_g(make_target("circle", depth), x), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("depth", [6, 7, 10])
def test_circle_mirrored_targets_approximate_the_squared_radius(depth):
    x = torch.rand(20000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    radius2 = (x**2).sum(1)
    g = circle_g(make_target("circle", depth), x)
    inside = radius2 <= CIRCLE_BOUNDARIES[-1]
    # Inside the outermost ring both components lie within their knots, where interpolating t^2 never
    # under-estimates it, and over-estimates it by h^2 / 4 at most (h the knot spacing): with 20 knots in all,
    # less than 0.01, a twentieth of the narrowest ring (0.2 in r^2).
    assert bool((g[inside] >= radius2[inside] - 1e-12).all())
    assert float((g[inside] - radius2[inside]).max()) < 0.01


def test_circle_scores_pick_the_ring_of_g():
    # the class-score layer alone: g -> a_k g + beta_k is largest for the ring g lies in
    target = make_target("circle", 3)
    g = torch.tensor([0.0, 0.1, 0.19, 0.21, 0.49, 0.51, 0.69, 0.71, 1.5], dtype=torch.float64)
    weight, bias = target[2].weight, target[2].bias
    g_weight = weight[0] / CIRCLE_SLOPES[0]
    g_bias = bias[0] / CIRCLE_SLOPES[0]
    assert torch.allclose(weight, torch.tensor(CIRCLE_SLOPES, dtype=torch.float64)[:, None] * g_weight)
    offsets = bias - torch.tensor(CIRCLE_SLOPES, dtype=torch.float64) * g_bias
    scores = torch.tensor(CIRCLE_SLOPES, dtype=torch.float64) * g[:, None] + offsets
    assert scores.argmax(1).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]


def test_univariate_pieces_known_answer_with_the_first_weight_corrected():
    # f = x^2 through knots 0, 1, 2 with signs +, -, +: slopes 1, 3, 5 (the last one on [2, 3]), kinks 2, 2;
    # the negative knot at 1 adds -2x, which the first weight takes back: a = (1 + 2, 2, 2), b = -2:
    # g(x) = 3 relu(x) + 2 relu(1 - x) + 2 relu(x - 2) - 2
    pieces = univariate_pieces(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), [torch.square])
    assert pieces.inner_weight.tolist() == [1.0, -1.0, 1.0]
    assert pieces.inner_bias.tolist() == [0.0, 1.0, -2.0]
    assert pieces.outer_weight.tolist() == [[3.0, 2.0, 2.0]]
    assert pieces.outer_bias.tolist() == [-2.0]
    x = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    g = (pieces.outer_weight[0] * torch.relu(pieces.inner_weight * x[:, None] + pieces.inner_bias)).sum(
        1
    ) + pieces.outer_bias[0]
    assert g.tolist() == [0.0, 0.5, 1.0, 2.5, 4.0]
    # the appendix's uncorrected a_1 = m_1 = 1 would give g(2) = 4 - 2 * 2
    uncorrected = g - 2 * torch.relu(x)
    assert uncorrected[-1] == 0.0


@pytest.mark.parametrize("depth", [3, 5, 10])
def test_circle_target_is_near_perfect_and_far_above_chance(depth):
    score = target_performance("circle", depth, data("circle"))
    assert score["metric"] == "accuracy"
    assert score["test_clean"] >= (0.95 if depth == 3 else 0.985)  # 10 knots: errors only next to the rings
    assert score["test"] >= score["test_clean"] - 0.025  # ~1% of the labels are flipped
    assert score["test"] <= score["test_clean"] + 0.01
    assert 0.4 < score["chance"] < 0.5


@pytest.mark.parametrize("depth", [3, 5, 10])
def test_regression_targets_reach_the_noise_floor(depth):
    relu = target_performance("relu", depth, data("relu"))
    assert relu["metric"] == "mse" and relu["test_clean"] < 1e-14
    assert relu["test"] == pytest.approx(1e-4, rel=0.2)  # the noise variance 0.01^2
    helix = target_performance("helix", depth, data("helix"))
    assert 1e-5 < helix["test_clean"] < 5e-4  # 30 knots over three turns: a small interpolation error
    assert helix["test"] == pytest.approx(helix["test_clean"] + 1e-4, rel=0.25)
    assert helix["chance"] > 100 * helix["test"]


def test_bad_task_or_depth_raise():
    with pytest.raises(ValueError, match="unknown planting task 'square'"):
        make_target("square", 5)
    for task in TASKS:
        with pytest.raises(ValueError, match=rf"the {task} target needs an integer depth >= 3.*got 2"):
            make_target(task, 2)
    with pytest.raises(ValueError, match="depth >= 3"):
        make_target("circle", 4.0)
    with pytest.raises(ValueError, match="depth >= 3"):
        make_target("circle", True)
