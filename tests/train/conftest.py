"""What the tests of ``lth_sparse.train`` share: a tiny real dataset, a small masked MLP, state comparisons."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lth_sparse.data import Dataset, load_dataset
from lth_sparse.models import create_model
from lth_sparse.train import TrainConfig

BATCH = 32
TRAIN_SIZE = 160  # 5 iterations per epoch


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits", seed=0, train_size=TRAIN_SIZE)


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", (1, 8, 8), 10, depth=1, width=16)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def config(**overrides) -> TrainConfig:
    base = dict(epochs=2, batch_size=BATCH, lr=0.05, momentum=0.0)
    base.update(overrides)
    return TrainConfig(**base)
