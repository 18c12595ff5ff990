"""Regression data sets in the registry (Plant 'n' Seek's relu and helix): float targets kept, raw inputs kept
where the loader says so, and the training loop's default loss the mean squared error for them."""

import pytest
import torch
import torch.nn.functional as F

from lth_sparse.data import load_dataset
from lth_sparse.models import create_model
from lth_sparse.planting.tasks import planting_data
from lth_sparse.train import TrainConfig, evaluate, train


@pytest.mark.parametrize("task, outputs", [("relu", 1), ("helix", 3)])
def test_regression_targets_stay_floats_and_the_inputs_raw(task, outputs):
    data = load_dataset(task, val_fraction=0.1)
    raw = planting_data(task)
    assert data.num_classes == outputs and data.train.y.dtype == torch.float32
    assert data.train.y.shape == (len(data.train), outputs) and data.test.y.shape == (1000, outputs)
    assert data.mean == (0.0,) and data.std == (1.0,)
    torch.testing.assert_close(data.test.x, raw["test"][0].float())  # not standardised
    torch.testing.assert_close(data.test.y, raw["test"][1].float())


def test_circle_keeps_its_raw_inputs_and_integer_classes():
    data = load_dataset("circle")
    assert data.train.y.dtype == torch.int64 and data.num_classes == 4
    torch.testing.assert_close(data.test.x, planting_data("circle")["test"][0].float())


def test_the_default_loss_of_a_regression_is_the_mean_squared_error():
    data = load_dataset("helix", train_size=2000)
    torch.manual_seed(0)
    model = create_model("mlp", data.input_shape, data.num_classes)
    loss, accuracy = evaluate(model, data.test)
    assert accuracy is None
    with torch.no_grad():
        assert loss == pytest.approx(float(F.mse_loss(model(data.test.x), data.test.y)), rel=1e-5)
    result = train(model, data, TrainConfig(epochs=3, lr=0.01, batch_size=32, optimizer="adam"), progress=False)
    assert result.test_accuracy is None and result.test_loss < 0.5 * loss
