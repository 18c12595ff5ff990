"""The target networks planted by Plant 'n' Seek (Fischer & Burkholz, 2022, Section 2.3, Appendix A.4).

``make_target(task, depth)`` builds the ReLU, Circle or Helix target as an ``nn.Sequential`` of
``nn.Linear`` and ``nn.ReLU`` (float64 by default: the constructions are exact up to rounding), with
``depth - 1`` Linear layers: **depth counts the layers including the input layer**, as the reference code
does (``plant_lottery_tickets/tickets.py``: "depth = number of layers (including input layer)"), so depth 5
is four weight layers. Every task needs depth >= 3 (one hidden layer at least: :data:`MIN_DEPTH`).

Univariate pieces (Appendix A.4.3, Figure 2c). A function ``f`` on ``[s_1, s_N]`` is written through N knots
``s_j`` (equidistant) as ``g(x) = sum_j a_j relu(p_j (x - s_j)) + b`` with alternating signs ``p_j = +1, -1,
+1, ...``; ``g`` interpolates ``f`` linearly between the knots. The slopes are ``m_j = (f(s_{j+1}) -
f(s_j)) / (s_{j+1} - s_j)`` (``s_{N+1} = s_N + (s_2 - s_1)``), ``a_j = m_j - m_{j-1}`` for ``j >= 2``. The
appendix's ``a_1 = m_1`` is exact only when every sign is +1: a neuron ``relu(s_j - x)`` equals ``relu(x - s_j)
- (x - s_j)``, so every negative-sign knot adds a linear term ``-a_j (x - s_j)`` that must be cancelled. The first
knot (sign +1, ``relu(x - s_1) = x - s_1`` on the domain) takes it: ``a_1 = m_1 + sum_{j >= 2, p_j = -1} a_j``
and ``b = f(s_1) - sum_j a_j relu(p_j (s_1 - s_j))``, as the reference code's ``param_outer`` does. Then
``g(x)`` equals the interpolant exactly for every ``x >= s_1``. Outer weights that are zero up to rounding
(``|a_j| <= 1e-9 max(1, max_j |m_j|)``: a linear ``f`` has no kinks) are set to exactly zero, so they are
not counted as ticket weights: see Helix below.

Two plantings (:data:`PLANTINGS`, ``make_target(..., planting=)``): ``reference`` builds every univariate
piece with the reference code's arithmetic, its knots as ``numpy.linspace`` spaces them (``start + i * step``,
the last set to ``stop``) and every outer weight kept as computed, rounding residues included, so that its
targets have the reference code's non-zeros (Helix: 115 at depth 3, the paper's density .29); ``exact`` spaces
the knots as ``torch.linspace`` and zeroes the residues (Helix: 91 at depth 3). The two agree to 1e-13 in every
weight; they differ in which weights are non-zero, which is what a planted ticket counts.

ReLU (A.4.1): one neuron per layer, weights 1 and biases 0: ``relu(x)`` through ``depth - 1`` layers.

Circle (A.4.2, ``lottery_sphere`` in the reference code, with its 10 knots and its depth cases):

- depth 3: the pieces of ``x^2`` on ``[-1, 1]`` for both inputs (20 hidden neurons);
- depth 4: ``relu(+-x_i)`` (4 neurons), then the pieces of ``t^2`` on ``[0, 1]`` for ``t = |x_i|``, each knot
  neuron reading both halves ``relu(x_i) + relu(-x_i)``;
- depth 5: ``relu(+-x_i)``, then ``|x_1|, |x_2|``, then the pieces on ``[0, 1]``;
- depth >= 6: after ``|x_1|, |x_2|``, ``depth - 5`` mirroring layers fold the point onto the axis at angle
  ``pi/4, pi/8, ...``: three neurons, the component parallel to the axis and the two signs of the
  perpendicular one. The last layer squares the parallel component (knots on ``[0, sqrt 2]``) and the
  perpendicular one (knots on ``[0, c]``, ``c = sin(angle) sqrt(0.7) + 0.01``, enough for every point
  inside the outermost boundary); the 20 knots are shared in proportion to the two ranges, at least 3 each
  (the reference code's ``nk``, ``nko``).

The output layer turns ``g ~ x_1^2 + x_2^2`` into four class scores ``a_k g + beta_k`` with slopes ``a_k =
5, 10, 20, 40`` and ``beta_k = beta_{k-1} + (a_{k-1} - a_k) B_{k-1}``, so that score ``k`` is the largest
exactly when ``g`` lies between the boundaries ``B_{k-1}`` and ``B_k`` (0.2, 0.5, 0.7): the reference code's
construction, whose softmax is the class probability.

Helix (A.4.3, ``lottery_helix_wide`` with its 30 knots): depth 3 is the pieces of ``f_1, f_2, f_3`` on
``[-1, 1]`` sharing their 30 hidden neurons. From depth 4, a first neuron maps ``x`` to ``x + 1 in [0, 2]``
(so that later layers can carry values as ``relu(v) = v``), the pieces of ``f_i(t - 1)`` on ``[0, 2]`` follow,
and from depth 5 the three outputs get ``+1`` (``f_1, f_2 >= -1``), pass ``depth - 5`` identity layers
``relu(I v)``, and a last identity layer subtracts the 1 again. ``f_3`` is linear, so its only outer weight is
on the first knot: it is the single-neuron path of Section 2.3 ("f_3 can be represented by a path ... that
only contains a single neuron per layer"). The reference code instead keeps the rounding residue of ``f_3``'s
slope changes (values of 1e-16..1e-15) as weights: that is why its depth-3 ticket counts 115 weights, the
paper's density 0.29 (Figure 6), where the exact construction has 91 (0.2275 at width 100);
``planting="reference"`` keeps them too, at the same knots.

Every target's weights and biases are the reference code's (``lottery_relu``, ``lottery_sphere(depth, [.2, .5,
.7], 10, "class")``, ``lottery_helix_wide(f1, f2, f3, depth, 30)``) up to rounding (1e-13), for every depth,
knot signs included; with ``planting="reference"`` its non-zeros too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .tasks import CIRCLE_BOUNDARIES, TASKS, check_task, planting_data, task_kind

__all__ = [
    "PLANTINGS",
    "check_planting",
    "knot_grid",
    "MIN_DEPTH",
    "CIRCLE_KNOTS",
    "HELIX_KNOTS",
    "CIRCLE_SLOPES",
    "UnivariatePieces",
    "univariate_pieces",
    "make_target",
    "target_performance",
]

#: The smallest depth (layers including the input layer) each target can be built for.
MIN_DEPTH: dict[str, int] = dict.fromkeys(TASKS, 3)
#: Knots of each univariate piece (Appendix B.1: 10 for Circle, 30 for Helix).
CIRCLE_KNOTS = 10
HELIX_KNOTS = 30
#: The slopes of Circle's four class scores in ``g = x_1^2 + x_2^2`` (the reference code's 5, doubled per class).
CIRCLE_SLOPES: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0)
# Circle's perpendicular knots reach a little beyond the outermost boundary (the reference code's eps).
_CIRCLE_PERPENDICULAR_MARGIN = 0.01

#: The plantings: ``reference``, Plant 'n' Seek's code's targets (rounding residues kept as weights) and host-neuron
#: matching; ``exact``, the targets' exact non-zeros and the paper's L2 matching (see the module docstrings).
PLANTINGS: tuple[str, ...] = ("reference", "exact")

Layer = tuple[Tensor, Tensor]  # (weight (out, in), bias (out,)), float64


class UnivariatePieces(NamedTuple):
    """A depth-2 univariate network ``g_i(x) = sum_j outer_weight[i, j] relu(inner_weight[j] x + inner_bias[j])
    + outer_bias[i]`` for several functions sharing their knots. Shapes ``(N,)``, ``(N,)``, ``(m, N)``, ``(m,)``."""

    inner_weight: Tensor
    inner_bias: Tensor
    outer_weight: Tensor
    outer_bias: Tensor


def check_planting(planting: str) -> str:
    """``planting`` if it is one of :data:`PLANTINGS`; a ValueError naming them otherwise."""
    if planting not in PLANTINGS:
        raise ValueError(f"unknown planting {planting!r}; choose one of {', '.join(PLANTINGS)}")
    return planting


def knot_grid(start: float, stop: float, n: int, planting: str = "reference") -> Tensor:
    """``n`` equidistant float64 knots from ``start`` to ``stop``: spaced as ``numpy.linspace`` does (``start + i *
    step``, the last one ``stop``), the reference code's, for ``planting="reference"``; as ``torch.linspace`` for
    ``"exact"``. The two differ in the last bit of some knots, which decides which rounding residues appear."""
    if check_planting(planting) == "exact":
        return torch.linspace(start, stop, n, dtype=torch.float64)
    spaced = torch.arange(n, dtype=torch.float64) * ((stop - start) / (n - 1)) + start
    spaced[-1] = stop
    return spaced


def univariate_pieces(
    knots: Tensor,
    functions: Sequence[Callable[[Tensor], Tensor]],
    last_sign: float | None = None,
    keep_residues: bool = False,
) -> UnivariatePieces:
    """The piecewise-linear interpolants of ``functions`` through ``knots`` as depth-2 ReLU networks with
    alternating knot signs ``+1, -1, ...`` and the first outer weight corrected (see the module docstring);
    exact for every ``x >= knots[0]``.

    knots: float64 ``(N,)``, equidistant and increasing, ``N >= 2``. Each function maps a float64 ``(K,)``
    tensor to ``(K,)``. last_sign: the last knot's sign instead of the alternating one (the reference code
    sets +1 for Circle from depth 5); any signs after the first give the same function on ``x >= knots[0]``.
    keep_residues: keep the outer weights that are zero in exact arithmetic at their rounded values, as the
    reference code does, instead of setting them to zero.
    """
    knots = knots.double()
    n = knots.numel()
    if n < 2:
        raise ValueError(f"a univariate piece needs at least 2 knots, got {n}")
    signs = torch.ones(n, dtype=torch.float64)
    signs[1::2] = -1.0
    if last_sign is not None:
        if last_sign not in (1.0, -1.0):
            raise ValueError(f"last_sign must be +1 or -1, got {last_sign!r}")
        signs[-1] = last_sign
    ends = torch.cat([knots, knots[-1:] + (knots[1] - knots[0])])
    outer_weight, outer_bias = [], []
    for function in functions:
        values = function(ends)
        slopes = (values[1:] - values[:-1]) / (ends[1:] - ends[:-1])
        kinks = slopes[1:] - slopes[:-1]
        if not keep_residues:
            tolerance = 1e-9 * max(1.0, float(slopes.abs().max()))
            kinks = torch.where(kinks.abs() <= tolerance, torch.zeros_like(kinks), kinks)
        first = slopes[0] + kinks[signs[1:] < 0].sum()
        weights = torch.cat([first.reshape(1), kinks])
        bias = values[0] - (weights * F.relu(signs * (knots[0] - knots))).sum()
        outer_weight.append(weights)
        outer_bias.append(bias)
    return UnivariatePieces(signs, -signs * knots, torch.stack(outer_weight), torch.stack(outer_bias))


def _square(t: Tensor) -> Tensor:
    return t * t


def _helix_coordinates(shift: float) -> list[Callable[[Tensor], Tensor]]:
    """``f_1, f_2, f_3`` of the helix at ``t - shift``."""

    def coordinate(i: int) -> Callable[[Tensor], Tensor]:
        def f(t: Tensor) -> Tensor:
            y = 5 * math.pi + 3 * math.pi * (t - shift)
            return (y * torch.cos(y), y * torch.sin(y), y)[i] / (8 * math.pi)

        return f

    return [coordinate(i) for i in range(3)]


def _identity_layer(width: int, bias: float = 0.0) -> Layer:
    return torch.eye(width, dtype=torch.float64), torch.full((width,), bias, dtype=torch.float64)


def _relu_layers(depth: int, planting: str) -> list[Layer]:
    one = (torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    return [tuple(t.clone() for t in one) for _ in range(depth - 1)]


def _helix_layers(depth: int, planting: str) -> list[Layer]:
    residues = planting == "reference"
    if depth == 3:
        grid = knot_grid(-1, 1, HELIX_KNOTS, planting)
        pieces = univariate_pieces(grid, _helix_coordinates(0.0), keep_residues=residues)
        return [(pieces.inner_weight[:, None], pieces.inner_bias), (pieces.outer_weight, pieces.outer_bias)]
    pieces = univariate_pieces(knot_grid(0, 2, HELIX_KNOTS, planting), _helix_coordinates(1.0), keep_residues=residues)
    layers = [
        (torch.ones(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)),  # x + 1 in [0, 2]
        (pieces.inner_weight[:, None], pieces.inner_bias),
        (pieces.outer_weight, pieces.outer_bias.clone()),
    ]
    if depth >= 5:
        layers[-1][1].add_(1.0)  # f_1, f_2 >= -1: the outputs pass the identity layers' ReLU as f + 1 >= 0
        layers += [_identity_layer(3) for _ in range(depth - 5)]
        layers.append(_identity_layer(3, bias=-1.0))
    return layers


def _circle_output(g_weight: Tensor, g_bias: Tensor) -> Layer:
    """The class-score layer ``a_k g + beta_k`` from ``g = g_weight . h + g_bias``."""
    slopes = torch.tensor(CIRCLE_SLOPES, dtype=torch.float64)
    offsets = torch.zeros(len(CIRCLE_SLOPES), dtype=torch.float64)
    for k in range(1, len(CIRCLE_SLOPES)):
        offsets[k] = offsets[k - 1] + (slopes[k - 1] - slopes[k]) * CIRCLE_BOUNDARIES[k - 1]
    return slopes[:, None] * g_weight[None, :], slopes * g_bias + offsets


def _circle_layers(depth: int, planting: str) -> list[Layer]:
    n = CIRCLE_KNOTS
    residues = planting == "reference"  # x^2 has no zero slope change: the same non-zeros either way
    zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
    if depth == 3:
        pieces = univariate_pieces(knot_grid(-1, 1, n, planting), [_square], keep_residues=residues)
        weight = zeros(2 * n, 2)
        weight[:n, 0] = weight[n:, 1] = pieces.inner_weight
        hidden = (weight, torch.cat([pieces.inner_bias, pieces.inner_bias]))
        g = (torch.cat([pieces.outer_weight[0]] * 2), 2 * pieces.outer_bias[0])
        return [hidden, _circle_output(*g)]
    # relu(x_1), relu(-x_1), relu(x_2), relu(-x_2)
    layers = [(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64), zeros(4))]
    if depth == 4:
        pieces = univariate_pieces(knot_grid(0, 1, n, planting), [_square], keep_residues=residues)
        weight = zeros(2 * n, 4)
        for half in (0, 1):
            weight[:n, half] = weight[n:, 2 + half] = pieces.inner_weight
        layers.append((weight, torch.cat([pieces.inner_bias, pieces.inner_bias])))
        return layers + [_circle_output(torch.cat([pieces.outer_weight[0]] * 2), 2 * pieces.outer_bias[0])]
    # |x_1|, |x_2|: the point folded into the first quadrant
    layers.append((torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64), zeros(2)))
    if depth == 5:
        pieces = univariate_pieces(knot_grid(0, 1, n, planting), [_square], last_sign=1.0, keep_residues=residues)
        weight = zeros(2 * n, 2)
        weight[:n, 0] = weight[n:, 1] = pieces.inner_weight
        layers.append((weight, torch.cat([pieces.inner_bias, pieces.inner_bias])))
        return layers + [_circle_output(torch.cat([pieces.outer_weight[0]] * 2), 2 * pieces.outer_bias[0])]
    # frame[:, k]: how the folded point's coordinates (X, Y) read the previous layer's neuron k
    frame = torch.eye(2, dtype=torch.float64)
    angle = math.pi / 2
    for _ in range(depth - 5):
        angle /= 2
        cos, sin = math.cos(angle), math.sin(angle)
        parallel = cos * frame[0] + sin * frame[1]
        perpendicular = sin * frame[0] - cos * frame[1]
        layers.append((torch.stack([parallel, perpendicular, -perpendicular]), zeros(3)))
        # The folded point is parallel * axis + |perpendicular| * (sin, -cos): in the wedge [0, angle].
        frame = torch.tensor([[cos, sin, sin], [sin, -cos, -cos]], dtype=torch.float64)
    reach = math.sqrt(2.0)
    perpendicular_reach = abs(math.sin(angle)) * math.sqrt(CIRCLE_BOUNDARIES[-1]) + _CIRCLE_PERPENDICULAR_MARGIN
    n_parallel = min(math.ceil(reach / (perpendicular_reach + reach) * 2 * n), 2 * n - 3)
    n_perpendicular = max(2 * n - n_parallel, 3)
    par = univariate_pieces(knot_grid(0, reach, n_parallel, planting), [_square], last_sign=1.0, keep_residues=residues)
    perp = univariate_pieces(
        knot_grid(0, perpendicular_reach, n_perpendicular, planting), [_square], last_sign=1.0, keep_residues=residues
    )
    weight = zeros(n_parallel + n_perpendicular, 3)
    weight[:n_parallel, 0] = par.inner_weight
    weight[n_parallel:, 1] = weight[n_parallel:, 2] = perp.inner_weight  # |perpendicular| = relu(v) + relu(-v)
    layers.append((weight, torch.cat([par.inner_bias, perp.inner_bias])))
    g = (torch.cat([par.outer_weight[0], perp.outer_weight[0]]), par.outer_bias[0] + perp.outer_bias[0])
    return layers + [_circle_output(*g)]


_BUILDERS = {"relu": _relu_layers, "circle": _circle_layers, "helix": _helix_layers}


def _sequential(layers: list[Layer], dtype: torch.dtype) -> nn.Sequential:
    modules: list[nn.Module] = []
    for i, (weight, bias) in enumerate(layers):
        linear = nn.Linear(weight.shape[1], weight.shape[0], dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        modules.append(linear)
        if i < len(layers) - 1:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def make_target(
    task: str, depth: int, dtype: torch.dtype = torch.float64, planting: str = "reference"
) -> nn.Sequential:
    """The target network of ``task`` (``relu``, ``circle``, ``helix``) with ``depth`` layers counting the input
    layer: ``Linear, ReLU, ..., Linear``, ``depth - 1`` Linear layers, on the CPU in ``dtype``.

    input: ``(N, d_in)`` (1 for relu and helix, 2 for circle) -> ``(N, d_out)``: ``relu(x)``; Circle's four
    class scores; the three helix coordinates. Zero weights are absent edges: the ticket is the non-zero
    weights (biases are not counted). planting: ``"reference"`` keeps the reference code's rounding residues
    as weights (Helix: 115 at depth 3), ``"exact"`` its exact non-zeros (91); see the module docstring.

    Raises:
        ValueError: unknown ``task`` or ``planting``, or ``depth`` not an integer >= :data:`MIN_DEPTH` of the
            task.
    """
    check_task(task)
    check_planting(planting)
    minimum = MIN_DEPTH[task]
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < minimum:
        raise ValueError(
            f"depth counts the layers including the input layer; the {task} target needs an integer "
            f"depth >= {minimum} (at least one hidden layer), got {depth!r}"
        )
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    return _sequential(_BUILDERS[task](depth, planting), dtype)


@torch.no_grad()
def _score(output: Tensor, y: Tensor, kind: str) -> float:
    if kind == "classification":
        return float((output.argmax(dim=1) == y).double().mean())
    return float(((output.double() - y.double()) ** 2).mean())


@torch.no_grad()
def target_performance(task: str, depth: int, data: dict | None = None, planting: str = "reference") -> dict:
    """How well the target itself does on the task's data: the ceiling a found ticket is compared with.

    ``data``: :func:`~lth_sparse.planting.tasks.planting_data` of ``task`` (default: seed 0). Returns
    ``metric`` (``"accuracy"`` for circle, ``"mse"``, the mean over examples and outputs, for a regression),
    ``train`` and ``test`` (against the noisy labels), ``test_clean`` (against the noise-free ones) and the
    data's ``chance`` level (same metric). planting: the target's (:func:`make_target`).
    """
    target = make_target(task, depth, planting=planting)
    data = planting_data(task) if data is None else data
    kind = task_kind(task)
    train_x, train_y = data["train"]
    test_x, test_y = data["test"]
    test_output = target(test_x.double())
    return {
        "metric": "accuracy" if kind == "classification" else "mse",
        "train": _score(target(train_x.double()), train_y, kind),
        "test": _score(test_output, test_y, kind),
        "test_clean": _score(test_output, data["clean"][1], kind),
        "chance": data["chance"],
    }
