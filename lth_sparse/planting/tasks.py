"""The three planting tasks of Plant 'n' Seek (Fischer & Burkholz, 2022): their functions and data.

- ``relu``: regression of ``f(x) = max(x, 0)``, ``x`` uniform in ``[-1, 1]``.
- ``circle``: 4-class classification of ``x`` uniform in ``[-1, 1]^2`` by the ring its squared radius
  ``x1^2 + x2^2`` falls in, the boundaries at ``r^2 = 0.2, 0.5, 0.7`` (Appendix B.1: radii ``sqrt(0.2)``,
  ``sqrt(0.5)``, ``sqrt(0.7)``).
- ``helix``: regression of the 3-D helix ``f1 = y cos(y) / (8 pi)``, ``f2 = y sin(y) / (8 pi)``,
  ``f3 = y / (8 pi)`` with ``y = 5 pi + 3 pi x``, ``x`` uniform in ``[-1, 1]`` (Section 2.3).

Readings of the paper (Appendix B.1) and why:

- **Circle is 2-D.** B.1 says inputs are drawn from ``[-1, 1]^3`` for Circle; Section 2.3, Appendix A.4.2
  and the reference code (``plant_lottery_tickets/datagen.py``, ``draw_data_sphere``: ``d_in = 2``) are all
  2-D, so the 3 is a typo.
- **Label noise flips to an adjacent ring.** "About 1% of the samples flipped to the next closest class":
  each label is flipped independently with probability 0.01 to the class across the nearer of its ring's
  two boundaries, measured in radius (the innermost and outermost classes have one neighbour). The
  reference code draws the same Bernoulli(0.01) and takes the second-largest logit of its class-score
  function, which is always an adjacent class too; the two rules differ only in where a middle ring is
  split between its two neighbours.
- **Regression noise has standard deviation 0.01.** B.1 writes ``N(0, 0.01)``; the reference code passes
  0.01 as the ``scale`` (standard deviation) of ``np.random.normal``; it is added to every output coordinate.
- **10,000 samples, a fixed 90/10 train/test split.** As the reference code: the samples are permuted by a
  generator seeded with 42 whatever the data seed, and the first ``ceil(0.9 n)`` are the training set.
- **Chance level.** Circle's classes are unbalanced (their areas are ``0.2 pi/4, 0.3 pi/4, 0.2 pi/4`` and
  ``1 - 0.7 pi/4`` of the square, so the outer class holds about 45%): the chance accuracy is that of the
  best constant guess, the training set's majority class, on the test set, not 25%. For a regression the
  chance level is the test MSE of the best constant guess, the training set's mean target.

Inputs are float32 and every label or target is computed from the float32 inputs, so that the data set is
consistent with itself at the precision it is trained in.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "TASKS",
    "CIRCLE_BOUNDARIES",
    "CIRCLE_FLIP_PROBABILITY",
    "REGRESSION_NOISE_STD",
    "SPLIT_SEED",
    "TRAIN_FRACTION",
    "check_task",
    "circle_classes",
    "circle_flip",
    "helix_function",
    "relu_function",
    "task_function",
    "task_input_dim",
    "task_kind",
    "task_output_dim",
    "planting_data",
    "chance_level",
]

#: The planting tasks' names, in the paper's order: the one list of them, which every other is built from.
TASKS: tuple[str, ...] = ("relu", "circle", "helix")

#: The squared radii at which Circle's class changes (Appendix B.1: radii sqrt(0.2), sqrt(0.5), sqrt(0.7)).
CIRCLE_BOUNDARIES: tuple[float, ...] = (0.2, 0.5, 0.7)
#: The probability that a Circle label is flipped to an adjacent ring's class (Appendix B.1: "approximately 1%").
CIRCLE_FLIP_PROBABILITY = 0.01
#: The standard deviation of the Gaussian noise added to each regression output (Appendix B.1).
REGRESSION_NOISE_STD = 0.01
#: The seed of the permutation that splits train from test, the same for every data seed (reference code: 42).
SPLIT_SEED = 42
TRAIN_FRACTION = 0.9

_INPUT_DIM = {"relu": 1, "circle": 2, "helix": 1}
_OUTPUT_DIM = {"relu": 1, "circle": 4, "helix": 3}


def check_task(task: str) -> str:
    """``task`` if it is one of :data:`TASKS`; a ValueError naming them otherwise."""
    if task not in TASKS:
        raise ValueError(f"unknown planting task {task!r}; choose one of {', '.join(TASKS)}")
    return task


def task_kind(task: str) -> str:
    """``"classification"`` (circle) or ``"regression"`` (relu, helix)."""
    return "classification" if check_task(task) == "circle" else "regression"


def task_input_dim(task: str) -> int:
    """The input dimension: 2 for circle, 1 for relu and helix."""
    return _INPUT_DIM[check_task(task)]


def task_output_dim(task: str) -> int:
    """The number of outputs: the 4 class scores of circle, 1 for relu, the 3 coordinates of helix."""
    return _OUTPUT_DIM[check_task(task)]


def relu_function(x: Tensor) -> Tensor:
    """``max(x, 0)``. x: ``(N, 1)`` -> ``(N, 1)``."""
    return x.clamp_min(0)


def helix_function(x: Tensor) -> Tensor:
    """The helix ``(y cos y, y sin y, y) / (8 pi)``, ``y = 5 pi + 3 pi x`` (Section 2.3).

    x: ``(N, 1)`` -> ``(N, 3)``."""
    y = 5 * math.pi + 3 * math.pi * x[:, :1]
    return torch.cat([y * torch.cos(y), y * torch.sin(y), y], dim=1) / (8 * math.pi)


def circle_classes(x: Tensor) -> Tensor:
    """The noise-free Circle class of each point: how many of :data:`CIRCLE_BOUNDARIES` its squared radius
    exceeds. x: ``(N, 2)`` -> int64 ``(N,)`` in 0..3."""
    radius2 = (x.double() ** 2).sum(dim=1)
    boundaries = torch.tensor(CIRCLE_BOUNDARIES, dtype=torch.float64, device=x.device)
    return (radius2[:, None] > boundaries).sum(dim=1)


def circle_flip(x: Tensor, classes: Tensor) -> Tensor:
    """The adjacent class each point's label is flipped to when it is noisy: across the nearer, in radius,
    of its ring's boundaries (class 0 always goes to 1, class 3 to 2). x: ``(N, 2)``, classes: ``(N,)``."""
    radius = (x.double() ** 2).sum(dim=1).sqrt()
    edges = torch.tensor(
        [-math.inf, *(math.sqrt(b) for b in CIRCLE_BOUNDARIES), math.inf], dtype=torch.float64, device=x.device
    )
    inner, outer = edges[classes], edges[classes + 1]
    go_out = (outer - radius) < (radius - inner)
    return torch.where(go_out, classes + 1, classes - 1)


def task_function(task: str, x: Tensor) -> Tensor:
    """The noise-free task: float64 regression targets ``(N, d_out)``, or int64 Circle classes ``(N,)``."""
    check_task(task)
    if task == "circle":
        return circle_classes(x)
    x = x.double()
    return relu_function(x) if task == "relu" else helix_function(x)


def chance_level(kind: str, train_y: Tensor, test_y: Tensor) -> float:
    """The score of the best constant guess fitted on the training set, measured on the test set.

    Classification: the accuracy of always answering the training set's majority class. Regression: the
    MSE (mean over examples and outputs) of always answering the training set's mean target.
    """
    if kind == "classification":
        majority = torch.bincount(train_y).argmax()
        return float((test_y == majority).double().mean())
    if kind == "regression":
        mean = train_y.double().mean(dim=0, keepdim=True)
        return float(((test_y.double() - mean) ** 2).mean())
    raise ValueError(f"kind must be 'classification' or 'regression', got {kind!r}")


def planting_data(task: str, seed: int = 0, n: int = 10000) -> dict:
    """The data of a planting task (Appendix B.1): ``n`` noisy samples, split 90/10 into train and test.

    Returns a dict:

    - ``train``, ``test``: ``(x, y)``; x float32 ``(N, d_in)`` uniform in ``[-1, 1]^d_in``; y int64 ``(N,)``
      classes for circle, float32 ``(N, d_out)`` targets for relu and helix. The training set holds
      ``ceil(0.9 n)`` samples, the rest is the test set (:data:`SPLIT_SEED` fixes the split).
    - ``clean``: ``(train_y, test_y)`` without noise (Circle classes int64, regression targets float64).
    - ``kind``: ``"classification"`` or ``"regression"``; ``num_classes``: 4 for circle, ``None`` for a
      regression; ``num_outputs``: the network's output width (4, 1 or 3); ``input_dim``.
    - ``chance``: see :func:`chance_level` (accuracy for circle, MSE for a regression).
    - ``noise``: the flip probability (circle) or the noise standard deviation (regression).

    Everything is drawn from one ``torch.Generator`` seeded with ``seed``: the same seed gives the same data.

    Raises:
        ValueError: unknown ``task``, or ``n < 2``.
    """
    check_task(task)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (a training and a test sample), got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, task_input_dim(task), generator=generator, dtype=torch.float64) * 2 - 1).float()
    clean = task_function(task, x)
    if task == "circle":
        flip = torch.rand(n, generator=generator, dtype=torch.float64) < CIRCLE_FLIP_PROBABILITY
        y = torch.where(flip, circle_flip(x, clean), clean)
        noise = CIRCLE_FLIP_PROBABILITY
    else:
        noise = REGRESSION_NOISE_STD
        y = (clean + noise * torch.randn(clean.shape, generator=generator, dtype=torch.float64)).float()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train = math.ceil(TRAIN_FRACTION * n)
    if n_train == n:
        n_train = n - 1
    train, test = order[:n_train], order[n_train:]
    kind = task_kind(task)
    return {
        "train": (x[train], y[train]),
        "test": (x[test], y[test]),
        "clean": (clean[train], clean[test]),
        "kind": kind,
        "num_classes": 4 if task == "circle" else None,
        "num_outputs": task_output_dim(task),
        "input_dim": task_input_dim(task),
        "chance": chance_level(kind, y[train], y[test]),
        "noise": noise,
    }
