"""Shared test fixtures: the backends available on this machine, and a clean backend setting."""

from __future__ import annotations

import os

import torch

# Without a GPU, Triton kernels run on CPU tensors under its interpreter: that is how they are tested here.
# Triton reads this when the kernels are defined, so it is set before anything imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from lth_sparse._dispatch import backend_status  # noqa: E402


def available_backends(implemented: tuple[str, ...], device: str = "cpu") -> list[str]:
    """The backends of an op that can run on ``device`` here (torch always)."""
    dev = torch.device(device)
    return [b for b in implemented if backend_status(b, dev)[0]]


@pytest.fixture(autouse=True)
def _default_backend(monkeypatch):
    """Every test starts from LTH_SPARSE_BACKEND=auto unless it sets it itself."""
    monkeypatch.delenv("LTH_SPARSE_BACKEND", raising=False)
    yield


@pytest.fixture
def use_backend(monkeypatch):
    """``use_backend("cpp")`` forces a backend for the rest of the test."""
    def set_backend(name: str) -> None:
        monkeypatch.setenv("LTH_SPARSE_BACKEND", name)
    return set_backend


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


os.environ.setdefault("PYTHONHASHSEED", "0")

# Test tensors are tiny: one thread avoids OpenMP's spin-waits, which cost far more than they
# gain here, and a lot on a loaded machine.
torch.set_num_threads(1)
