"""``planting="reference"`` reproduces Plant 'n' Seek's code's planting: the same host neurons, weights and scales
as a transcription of that code run on the same host, and its matching rule on small cases worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from lth_sparse.masks import jaccard_distance
from lth_sparse.planting import host_widths, init_host, make_target, plant, reference_match


# A transcription of the reference code: RelationalML/PlantNSeek, plant_lottery_tickets/plant.py, functions
# target_ind, find_ind and plant_target, line for line (its weights are (in, out) numpy arrays; the unused
# copies and prints left out).
def target_ind(w, v):
    dd = w.shape
    v2 = np.sum(v**2)
    diff = 1000
    ind = -1
    c = 0
    for i in range(dd[1]):
        scale = np.sum(v * w[:, i]) / v2
        x = np.sum(np.abs(w[:, i] - v * scale))
        indsign = np.where(v != 0)[0]
        if x < diff and scale > 0 and all(np.sign(w[indsign, i]).flatten() == np.sign(v[indsign]).flatten()):
            diff = x
            ind = i
            c = scale
    return ind, c


def find_ind(scale, winit, binit, wt, bt):
    din, dout = wt.shape
    ind = np.zeros(dout, dtype=int)
    scale_new = np.ones(dout)
    for i in range(dout):
        iloc = np.where(wt[:, i] != 0)[0]
        tk = np.concatenate([np.array([bt[i]]), wt[iloc, i] / scale[iloc]])
        indk, ck = target_ind(np.vstack([binit, winit[iloc, :]]), tk)
        if ck == 0:
            indk = i
            ck = np.abs(winit[0, i] / tk[1])
        if indk in ind:
            ind_list = np.setdiff1d(np.arange(winit.shape[1]), ind)
            if len(ind_list) > 0:
                indk = ind_list[0]
                ck = np.abs(winit[0, indk] / tk[1])
            else:
                indk = 0
                ck = np.abs(winit[0, indk] / tk[1])
        ind[i] = indk
        scale_new[i] = ck
        winit[iloc, indk] = ck * tk[1:]
        binit[indk] = ck * tk[0]
    return winit, binit, ind, scale_new


def plant_target(weight_target, bias_target, weight_init, bias_init):
    length = len(bias_init)
    weight_plant = []
    din = weight_init[0].shape[0]
    scale = np.ones(din)
    ind_old = np.arange(din)
    for layer in range(length):
        wplant = weight_init[layer] * 0
        wi, bi, ind, scale = find_ind(
            scale, weight_init[layer][ind_old, :], bias_init[layer], weight_target[layer], bias_target[layer]
        )
        weight_init[layer][ind_old, :] = wi
        bias_init[layer][ind] = bi[ind]
        for i in range(weight_target[layer].shape[0]):
            for j in range(weight_target[layer].shape[1]):
                if weight_target[layer][i, j] != 0:
                    wplant[ind_old[i], ind[j]] = wi[i, ind[j]]
        weight_plant.append(wplant)
        ind_old = ind
    weight_init[-1] = weight_init[-1][:, ind]
    bias_init[-1] = bias_init[-1][ind]
    weight_plant[-1] = weight_plant[-1][:, ind]
    return weight_init, bias_init, weight_plant, scale


def linears(model: nn.Sequential) -> list[nn.Linear]:
    return [m for m in model if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("task", "depth"), [("circle", 3), ("circle", 5), ("circle", 7), ("relu", 4), ("helix", 3), ("helix", 5)]
)
def test_reference_planting_is_the_reference_codes_on_the_same_host(task, depth, seed):
    target = make_target(task, depth)  # planting="reference": the reference code's targets, residues included
    fresh = linears(init_host(host_widths(target, 100), seed))
    weights = [layer.weight.detach().T.numpy().copy() for layer in fresh]
    biases = [layer.bias.detach().numpy().copy() for layer in fresh]
    targets = [layer.weight.detach().T.numpy().copy() for layer in linears(target)]
    target_biases = [layer.bias.detach().numpy().copy() for layer in linears(target)]
    weights, biases, planted, scale = plant_target(targets, target_biases, weights, biases)

    host, masks, scales = plant(target, 100, seed)  # planting="reference" is the default
    for layer, weight, bias, mask, planted_weights in zip(linears(host), weights, biases, masks.values(), planted):
        assert torch.equal(mask, torch.from_numpy(planted_weights != 0).T)  # the same host neurons and weights
        torch.testing.assert_close(layer.weight.detach(), torch.from_numpy(weight).T, atol=1e-15, rtol=1e-13)
        torch.testing.assert_close(layer.bias.detach(), torch.from_numpy(bias), atol=1e-15, rtol=1e-13)
    torch.testing.assert_close(scales, torch.from_numpy(scale), atol=0, rtol=1e-13)


def test_the_two_matchings_plant_into_other_host_neurons():
    # the same exact target, matched by the reference code's L1 rule and by the paper's L2 one: other tickets
    target = make_target("circle", 5, planting="exact")
    distances = []
    for seed in range(3):
        _, reference, _ = plant(target, 100, seed, planting="reference")
        _, exact, _ = plant(target, 100, seed, planting="exact")
        assert reference.num_unpruned() == exact.num_unpruned() == 108
        distances.append(float(jaccard_distance(reference, exact)))
    assert all(d > 0.5 for d in distances), distances


def test_reference_match_by_hand():
    theta = torch.tensor([0.5, 1.0], dtype=torch.float64)  # bias 0.5, one weight 1.0
    candidates = torch.tensor(
        [
            [0.5, 1.0],  # theta itself, L1 distance 0: but host neuron 0 counts as taken in the reference code
            [-0.1, 2.0],  # the bias's sign differs from theta's: never matched by the projection
            [0.3, 0.5],  # c = 0.65 / 1.25 = 0.52, m - c theta = (0.04, -0.02): L1 0.06
            [3.0, 6.2],  # c = 7.7 / 1.25 = 6.16, m - c theta = (-0.08, 0.04): L1 0.12
        ],
        dtype=torch.float64,
    )
    first = torch.tensor([0.7, -0.4, 0.9, 0.2], dtype=torch.float64)  # each neuron's weight from the first source
    free = torch.ones(4, dtype=torch.bool)
    # the best, neuron 0, is "taken": the first free other one, 1, with the scale |0.4 / 1.0|
    j, c = reference_match(theta, candidates, first, 0, free)
    assert (j, c) == (1, pytest.approx(0.4))
    # without neuron 0's perfect copy (a negative scale): neuron 2 by L1, where the paper's L2 distance
    # q(m) = sqrt(||theta||^2 - (theta.m)^2 / ||m||^2) prefers neuron 3 (0.0144 against 0.0857)
    candidates[0] = -candidates[0]
    j, c = reference_match(theta, candidates, first, 0, free)
    assert (j, c) == (2, pytest.approx(0.52))
    q = [math.sqrt(max(1.25 - float(m @ theta) ** 2 / float(m @ m), 0.0)) for m in candidates[2:]]
    assert q[1] < q[0]
    # neuron 2 taken: the first free one (not the next best, 3), with the scale |first / theta_1|
    free[2] = False
    j, c = reference_match(theta, candidates, first, 0, free)
    assert (j, c) == (1, pytest.approx(0.4))
    # no candidate qualifies (every sign wrong): neuron i itself, 3 here, with |0.2 / 1.0|
    j, c = reference_match(theta, -candidates.abs(), first, 3, torch.ones(4, dtype=torch.bool))
    assert (j, c) == (3, pytest.approx(0.2))
    # every other neuron taken: neuron 0
    j, c = reference_match(theta, candidates, first, 1, torch.tensor([True, False, False, False]))
    assert (j, c) == (0, pytest.approx(0.7))
