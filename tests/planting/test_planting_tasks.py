"""The planting tasks' data (Plant 'n' Seek, Appendix B.1): sizes, distributions, noise, reproducibility."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from lth_sparse.planting import TASKS, planting_data
from lth_sparse.planting.tasks import (
    CIRCLE_BOUNDARIES,
    circle_classes,
    circle_flip,
    helix_function,
    task_function,
)


@functools.cache
def data(task: str, seed: int = 0) -> dict:
    return planting_data(task, seed=seed)


def all_x(d: dict) -> torch.Tensor:
    return torch.cat([d["train"][0], d["test"][0]])


@pytest.mark.parametrize("task", TASKS)
def test_split_sizes_shapes_and_dtypes(task):
    d = data(task)
    (train_x, train_y), (test_x, test_y) = d["train"], d["test"]
    d_in, d_out = {"relu": (1, 1), "circle": (2, 4), "helix": (1, 3)}[task]
    assert train_x.shape == (9000, d_in) and test_x.shape == (1000, d_in)
    assert train_x.dtype == test_x.dtype == torch.float32
    assert d["input_dim"] == d_in and d["num_outputs"] == d_out
    if task == "circle":
        assert d["kind"] == "classification" and d["num_classes"] == 4
        assert train_y.shape == (9000,) and test_y.shape == (1000,) and train_y.dtype == torch.int64
        assert set(torch.cat([train_y, test_y]).tolist()) == {0, 1, 2, 3}
    else:
        assert d["kind"] == "regression" and d["num_classes"] is None
        assert train_y.shape == (9000, d_out) and test_y.shape == (1000, d_out) and train_y.dtype == torch.float32


@pytest.mark.parametrize(("n", "n_train"), [(10, 9), (11, 10), (101, 91), (2, 1)])
def test_train_is_ceil_nine_tenths(n, n_train):
    d = planting_data("relu", n=n)
    assert len(d["train"][0]) == n_train and len(d["test"][0]) == n - n_train


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_data_another_seed_other_data(task):
    a, b, c = data(task, 0), planting_data(task, seed=0), data(task, 1)
    for part in ("train", "test"):
        for i in (0, 1):
            assert torch.equal(a[part][i], b[part][i])
        assert not torch.equal(a[part][0], c[part][0])


@pytest.mark.parametrize("task", TASKS)
def test_inputs_are_uniform_on_the_square(task):
    x = all_x(data(task)).double()
    n = x.shape[0]
    assert x.min() >= -1 and x.max() <= 1
    # mean 0, variance 1/3 per coordinate; 5 standard errors
    assert x.mean(0).abs().max() < 5 * math.sqrt(1 / 3 / n)
    assert (x.var(0) - 1 / 3).abs().max() < 5 * math.sqrt(4 / 45 / n)  # Var(x^2) = 1/5 - 1/9 for U[-1, 1]


def test_circle_class_fractions_are_the_ring_areas():
    d = data("circle")
    classes = torch.cat(d["clean"])
    n = classes.numel()
    discs = [b * math.pi / 4 for b in CIRCLE_BOUNDARIES]  # area of r^2 <= b inside [-1, 1]^2, over its area 4
    expected = [discs[0], discs[1] - discs[0], discs[2] - discs[1], 1 - discs[2]]
    fractions = torch.bincount(classes, minlength=4).double() / n
    for k, p in enumerate(expected):
        assert abs(fractions[k] - p) < 5 * math.sqrt(p * (1 - p) / n), (k, fractions[k], p)


def test_circle_chance_is_the_majority_class_not_a_quarter():
    d = data("circle")
    outer = 1 - 0.7 * math.pi / 4  # the outermost class, the majority: 0.450
    assert d["chance"] == pytest.approx(float((d["test"][1] == 3).double().mean()))
    assert abs(d["chance"] - outer) < 5 * math.sqrt(outer * (1 - outer) / 1000)
    assert d["chance"] > 0.4


def test_circle_flips_about_one_percent_to_an_adjacent_ring():
    d = data("circle")
    x, noisy, clean = all_x(d), torch.cat([d["train"][1], d["test"][1]]), torch.cat(d["clean"])
    flipped = noisy != clean
    rate = float(flipped.double().mean())
    assert abs(rate - 0.01) < 5 * math.sqrt(0.01 * 0.99 / len(noisy)), rate
    assert torch.equal((noisy[flipped] - clean[flipped]).abs(), torch.ones_like(noisy[flipped]))
    # across the nearer boundary, in radius: class k lies between edges k and k + 1
    radius = (x[flipped].double() ** 2).sum(1).sqrt()
    edges = torch.tensor([-math.inf, *(math.sqrt(b) for b in CIRCLE_BOUNDARIES), math.inf], dtype=torch.float64)
    outwards, k = noisy[flipped] > clean[flipped], clean[flipped]
    crossed = torch.where(outwards, edges[k + 1], edges[k])
    other = torch.where(outwards, edges[k], edges[k + 1])
    assert bool(((radius - crossed).abs() <= (radius - other).abs()).all())


@pytest.mark.parametrize(
    ("radius", "label", "flipped"),
    [
        (0.30, 0, 1),  # innermost: only outwards
        (0.50, 1, 0),  # between sqrt(.2) = .447 and sqrt(.5) = .707: nearer .447
        (0.65, 1, 2),
        (0.75, 2, 1),  # between .707 and sqrt(.7) = .837: nearer .707
        (0.82, 2, 3),
        (1.20, 3, 2),  # outermost: only inwards
    ],
)
def test_circle_flip_goes_across_the_nearer_boundary(radius, label, flipped):
    angle = 0.3
    x = torch.tensor([[radius * math.cos(angle), radius * math.sin(angle)]])
    assert int(circle_classes(x)) == label
    assert int(circle_flip(x, circle_classes(x))) == flipped


@pytest.mark.parametrize("task", ["relu", "helix"])
def test_regression_noise_is_gaussian_with_std_one_hundredth(task):
    d = data(task)
    x, y = all_x(d), torch.cat([d["train"][1], d["test"][1]]).double()
    noise = y - task_function(task, x)
    n = noise.shape[0]
    # the float32 rounding of y adds ~1e-8, far below the tolerances
    assert noise.mean(0).abs().max() < 5 * 0.01 / math.sqrt(n)
    assert (noise.std(0) / 0.01 - 1).abs().max() < 5 / math.sqrt(2 * n)
    # Gaussian: about 4.55% of the draws lie beyond two standard deviations
    beyond = float((noise.abs() > 0.02).double().mean())
    assert abs(beyond - 0.0455) < 5 * math.sqrt(0.0455 * 0.9545 / noise.numel())


def test_regression_chance_is_the_variance_of_the_targets():
    # relu(x), x ~ U[-1, 1]: E = 1/4, E[.^2] = 1/6, variance 5/48, plus the noise variance 1e-4
    assert data("relu")["chance"] == pytest.approx(5 / 48 + 1e-4, rel=0.15)
    grid = torch.linspace(-1, 1, 200001, dtype=torch.float64)[:, None]
    helix_variance = float(helix_function(grid).var(0).mean())
    assert data("helix")["chance"] == pytest.approx(helix_variance + 1e-4, rel=0.15)


def test_helix_function_known_values():
    x = torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64)
    y = helix_function(x)
    # y = 2 pi, 5 pi, 8 pi: cos = 1, -1, 1 and sin = 0
    expected = torch.tensor([[0.25, 0.0, 0.25], [-0.625, 0.0, 0.625], [1.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=0)


def test_unknown_task_and_bad_n_raise():
    with pytest.raises(ValueError, match="unknown planting task 'ring'.*relu, circle, helix"):
        planting_data("ring")
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        planting_data("relu", n=1)


def test_circle_is_registered_and_loads_the_same_points(tmp_path):
    from lth_sparse.data import available_datasets, load_dataset

    assert "circle" in available_datasets()
    loaded = load_dataset("circle", data_dir=tmp_path, download=False, val_fraction=0.1, seed=3)
    assert (len(loaded.train), len(loaded.val), len(loaded.test)) == (8100, 900, 1000)
    assert loaded.num_classes == 4 and loaded.input_shape == (2,)
    d = data("circle")
    # inputs standardised by load_dataset: undo it
    raw_test = loaded.test.x * loaded.std[0] + loaded.mean[0]
    torch.testing.assert_close(raw_test, d["test"][0], atol=1e-6, rtol=0)
    assert torch.equal(loaded.test.y, d["test"][1])
    assert not any(tmp_path.iterdir())  # generated, nothing written
