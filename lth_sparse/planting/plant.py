"""Planting a target network in a randomly initialised host (Fischer & Burkholz, 2022, Section 2.2, Appendix A.3).

``plant(target, width, seed)`` builds a host MLP of the target's depth, every hidden layer ``width`` wide, and
hides the target in it: layer by layer from the input, each target neuron takes the best-matching unused host
neuron, which is overwritten so that it computes a positive multiple of the target neuron. It returns the host
(a plain ``nn.Sequential`` of ``nn.Linear`` and ``nn.ReLU`` with the target's module names, so that a mask
named ``"2.weight"`` is layer 2 of both), the planted :class:`~lth_sparse.masks.Masks` (True on the planted
weights) and the per-output ``scales``: with every weight outside the masks pruned, the host computes
``scales * target(x)``, exactly up to rounding, on any input (:func:`planted_ticket`).

Readings of the paper, and two rules its text omits:

- **Initialisation** (reference code ``plant_lottery_tickets/plant.py``, ``init_He_scaled``, which its
  experiments use): weights ``N(0, 2 / fan_in)`` (He), biases **non-zero**, ``N(0, sigma_l^2)`` with
  ``sigma_l = prod_{k <= l} sqrt(2 / fan_in_k)``: the product of the weight scales up to layer ``l``, the bias
  scale Theorem 2 needs (there with uniform distributions).
- **Matching** (A.3): target neuron ``i`` with non-zero incoming weights ``w`` from target neurons ``S`` that sit
  in host neurons ``h(S)`` with scales ``lambda_S`` (host value = lambda * target value; the inputs have scale 1)
  needs host parameters proportional to ``theta = (b, w / lambda_S)``. A host neuron's candidate parameters ``m``
  are its bias and its weights from ``h(S)``. Target neurons are matched greedily in their order. Two rules
  (``planting``, :data:`~lth_sparse.planting.targets.PLANTINGS`):

  - ``reference``, the reference code's (``find_ind`` and ``target_ind``): the best host neuron of the whole
    layer by the L1 distance ``||m - c theta||_1`` of ``m`` from its projection onto ``theta`` (``c =
    theta.m / ||theta||^2``), among those with ``c > 0`` whose entries have ``theta``'s signs wherever
    ``theta`` is non-zero; if none qualifies, host neuron ``i``; if the neuron found is taken, the first free
    one. A neuron not found by the projection takes the scale ``c = |m_1 / theta_1|`` (``m_1``: the host
    neuron's weight from the host neuron of the previous layer's target neuron 0, ``theta_1``: ``theta``'s
    first weight), as that code; such a planted neuron is not a projection of the initial one and may be larger.
    Its taken list starts as zeros, so host neuron 0 counts as taken until no other is free. The output layer is
    matched the same way and its host outputs then reordered so that output ``i`` is the target's output ``i``,
    as that code does.
  - ``exact``: the paper's ``q(m) = ||theta - lambda(m) m||_2`` at the optimal ``lambda(m) = theta.m /
    ||m||^2`` (L2, as the text), each target neuron to the best host neuron not taken yet with ``c > 0``; output
    neuron ``i`` is planted in host output ``i`` (outputs are labelled), with the optimal scale of either sign.

  The two plant the same target into other host neurons: Jaccard distance 0.30-1.0 between the two tickets on
  Circle and Helix, 0-1 on ReLU's one-neuron path (depths 3, 5, 10, seeds 0-4).
- **Positive scales in hidden layers** (not in the text): ``relu(c z) = c relu(z)`` holds only for ``c > 0``;
  a negative scale makes the host neuron compute ``|c| relu(-z)``, another function. A literal argmin picks a
  negative scale for a large share of neurons, so hidden neurons match only host neurons with
  ``theta.m > 0`` (the reference code also demands ``scale > 0``). The output layer has no ReLU: with ``exact``
  its scale may take either sign.
- **The planted parameters stay on the scale of the host's** (not in the text): the text replaces ``m`` by
  ``theta / lambda(m)``, which inflates the planted weights far above the initial ones (``||theta /
  lambda|| = ||m|| / cos(theta, m)``, and the target's output weights are large: Circle's reach 17.8 where
  He-initialised ones are 0.14), so that magnitude pruning finds the ticket trivially. As the reference code,
  ``m`` is replaced by its projection onto ``theta``, ``c theta`` with ``c = theta.m / ||theta||^2`` (norm
  ``||m|| cos <= ||m||``), and ``c`` is the neuron's scale. The output layer is planted the same way:
  the host's outputs are ``c_i * target_i``, and ``c`` is returned, never compensated in the host (that
  would again make the output weights stand out by orders of magnitude).

The host's other weights keep their initial values: they are the random network the ticket hides in.
Density here is the paper's "sparsity" rho: kept weights over all weights, biases not counted; lth_sparse's
``sparsity`` is ``1 - density``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from lth_sparse.masks import Masks
from lth_sparse.planting.targets import check_planting

__all__ = ["target_layers", "host_widths", "init_host", "reference_match", "plant", "planted_ticket", "ticket_density"]


def target_layers(target: nn.Module) -> list[nn.Linear]:
    """The Linear layers of a target ``Linear, ReLU, Linear, ..., ReLU, Linear`` (an ``nn.Sequential``).

    Raises:
        TypeError: ``target`` is not an ``nn.Sequential``, or holds a module other than ``nn.Linear`` /
            ``nn.ReLU`` (named with its index).
        ValueError: the layers do not alternate Linear and ReLU starting and ending with a Linear, or a
            layer's ``in_features`` is not the previous one's ``out_features``.
    """
    if not isinstance(target, nn.Sequential):
        raise TypeError(f"target must be an nn.Sequential of nn.Linear and nn.ReLU layers, got {type(target).__name__}")
    modules = list(target.named_children())
    for name, module in modules:
        if type(module) not in (nn.Linear, nn.ReLU):
            raise TypeError(
                f"target must hold only nn.Linear and nn.ReLU layers; layer {name!r} is {type(module).__name__}"
            )
    if not modules:
        raise ValueError("target is empty: it needs at least one nn.Linear")
    for position, (name, module) in enumerate(modules):
        expected = nn.Linear if position % 2 == 0 else nn.ReLU
        if type(module) is not expected:
            raise ValueError(
                f"target must alternate Linear and ReLU, starting and ending with a Linear; layer "
                f"{name!r} (position {position}) is {type(module).__name__}, expected {expected.__name__}"
            )
    if type(modules[-1][1]) is not nn.Linear:
        raise ValueError(
            f"target must end with an nn.Linear (the output layer), it ends with layer {modules[-1][0]!r}, an nn.ReLU"
        )
    linears = [module for _, module in modules[::2]]
    for (name, layer), previous in zip(modules[2::2], linears):
        if layer.in_features != previous.out_features:
            raise ValueError(
                f"target layer {name!r} reads {layer.in_features} features, the layer before it "
                f"gives {previous.out_features}"
            )
    return linears


def host_widths(target: nn.Module, width: int) -> list[int]:
    """The host's layer widths: the target's input and output widths around ``depth - 2`` hidden layers of
    ``width``. Raises ValueError when ``width`` is not an integer or is narrower than a target hidden layer."""
    layers = target_layers(target)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    names = [name for name, module in target.named_children() if isinstance(module, nn.Linear)]
    for name, layer in zip(names[:-1], layers[:-1]):
        if layer.out_features > width:
            raise ValueError(
                f"the host (width={width}) is narrower than the target's hidden layer {name!r} "
                f"({layer.out_features} neurons): use width >= "
                f"{max(hidden.out_features for hidden in layers[:-1])}"
            )
    return [layers[0].in_features] + [width] * (len(layers) - 1) + [layers[-1].out_features]


def init_host(widths: Sequence[int], seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """A randomly initialised MLP ``Linear, ReLU, ..., Linear`` of these layer widths, as the reference code's
    ``init_He_scaled``: weights ``N(0, 2 / fan_in)``, biases ``N(0, prod_{k <= l} 2 / fan_in_k)``.

    Drawn in float64 from a ``torch.Generator`` seeded with ``seed`` (layer by layer, weight then bias), then
    cast to ``dtype``: the same seed gives the same host in every dtype.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    generator = torch.Generator().manual_seed(seed)
    modules: list[nn.Module] = []
    bias_std = 1.0
    for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        weight_std = (2.0 / fan_in) ** 0.5
        bias_std *= weight_std
        linear = nn.Linear(fan_in, fan_out, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(fan_out, fan_in, generator=generator, dtype=torch.float64) * weight_std)
            linear.bias.copy_(torch.randn(fan_out, generator=generator, dtype=torch.float64) * bias_std)
        modules.append(linear)
        if index < len(widths) - 2:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def _projection_scales(theta: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """For each candidate row ``m``: the paper's match distance ``||theta - lambda(m) m||`` and the scale
    ``c = theta.m / ||theta||^2`` of the projection ``c theta`` of ``m`` onto ``theta``."""
    dots = candidates @ theta
    norms2 = (candidates * candidates).sum(dim=1)
    theta2 = theta @ theta
    distance2 = (theta2 - dots * dots / norms2).clamp_min(0)
    return distance2.sqrt(), dots / theta2


# The reference code's target_ind keeps a host neuron only below this L1 distance (its initial best).
_REFERENCE_MAX_DISTANCE = 1000.0


def reference_match(
    theta: Tensor, candidates: Tensor, first_weights: Tensor, i: int, free: Tensor
) -> tuple[int, float]:
    """The host neuron and scale the reference code's ``find_ind`` gives target neuron ``i`` (see the module
    docstring): the best candidate by ``||m - c theta||_1`` with ``c = theta.m / ||theta||^2 > 0`` and
    ``theta``'s signs, else neuron ``i``; if that one is not free (host neuron 0 never is while another is),
    the first free one; a neuron not found by the projection takes ``c = |first_weights[j] / theta[1]|``.

    theta: ``(1 + k,)`` (bias, then weights; all zero: a constant-0 neuron, placed by the same rule with scale 1);
    candidates: ``(W, 1 + k)``, each host neuron's bias
    and weights from the sources' host neurons; first_weights: ``(W,)``, each host neuron's weight from the host
    neuron of the previous layer's target neuron 0; free: bool ``(W,)``, the host neurons not taken yet.
    """
    constant = not bool(theta.any())  # a neuron that is constantly 0 (none in the reference code's targets): scale 1
    j, c = i, (1.0 if constant else None)
    if not constant:
        scales = _projection_scales(theta, candidates)[1]
        distances = (candidates - scales[:, None] * theta).abs().sum(dim=1)
        signed = theta != 0
        same_signs = (torch.sign(candidates[:, signed]) == torch.sign(theta[signed])).all(dim=1)
        usable = (scales > 0) & same_signs & (distances < _REFERENCE_MAX_DISTANCE)
        if usable.any():
            j = int(torch.where(usable, distances, torch.full_like(distances, torch.inf)).argmin())
            c = float(scales[j])
    others = free.clone()
    others[0] = False  # the reference code's list of taken neurons starts as zeros
    if not others[j]:
        j = int(others.nonzero()[0]) if others.any() else 0
        c = 1.0 if constant else None
    if c is None:
        if theta.numel() < 2:
            raise ValueError(
                f"target neuron {i} has no incoming weight: the reference matching has no scale for it; "
                f"use planting='exact'"
            )
        c = abs(float(first_weights[j] / theta[1]))
    return j, c


@torch.no_grad()
def plant(
    target: nn.Module, width: int = 100, seed: int = 0, planting: str = "reference"
) -> tuple[nn.Sequential, Masks, Tensor]:
    """Plant ``target`` in a host of its depth with hidden layers ``width`` wide (see the module docstring).

    target: an ``nn.Sequential`` of ``nn.Linear`` / ``nn.ReLU`` (e.g. :func:`~lth_sparse.planting.make_target`);
    the host has its dtype and device, and the same module names. seed: the host's initialisation. planting:
    ``"reference"`` (the reference code's host-neuron matching) or ``"exact"`` (the paper's L2 matching).

    Returns ``(host, masks, scales)``: the host ``nn.Sequential`` (plain layers, all weights present);
    ``Masks`` by the host's weight names (``"0.weight"``, ``"2.weight"``, ...), True exactly on the planted
    copies of the target's non-zero weights; ``scales`` ``(d_out,)`` with ``host_ticket(x) = scales *
    target(x)``, ``host_ticket`` the host with every weight outside ``masks`` set to zero
    (:func:`planted_ticket`). The masks' ``density()`` is the planted ticket's density (the paper's rho).

    Raises:
        TypeError / ValueError: a target that is not Linear/ReLU layers (see :func:`target_layers`), a host
            narrower than a target hidden layer, a non-integer width or seed.
        ValueError: no unused host neuron can carry a target neuron with a positive scale (possible only
            when ``width`` barely exceeds the target's width): a wider host or another seed is needed.
    """
    layers = target_layers(target)
    widths = host_widths(target, width)
    check_planting(planting)
    reference = layers[0].weight
    host = init_host(widths, seed, dtype=torch.float64)
    host_layers = [module for module in host if isinstance(module, nn.Linear)]
    names = [name for name, module in target.named_children() if isinstance(module, nn.Linear)]
    masks: dict[str, Tensor] = {}
    placed = torch.arange(widths[0])  # host neuron of each target neuron of the previous layer: inputs as they are
    scales = torch.ones(widths[0], dtype=torch.float64)
    for index, (layer, host_layer, name) in enumerate(zip(layers, host_layers, names)):
        weight, bias = layer.weight.detach().double().cpu(), layer.bias
        bias = torch.zeros(layer.out_features, dtype=torch.float64) if bias is None else bias.detach().double().cpu()
        output_layer = index == len(layers) - 1
        mask = torch.zeros_like(host_layer.weight, dtype=torch.bool)
        new_placed = torch.empty(layer.out_features, dtype=torch.long)
        new_scales = torch.empty(layer.out_features, dtype=torch.float64)
        free = torch.ones(host_layer.out_features, dtype=torch.bool)
        for i in range(layer.out_features):
            sources = weight[i].nonzero().flatten()
            theta = torch.cat([bias[i : i + 1], weight[i, sources] / scales[sources]])
            columns = placed[sources]
            candidates = torch.cat([host_layer.bias[:, None], host_layer.weight[:, columns]], dim=1)
            if planting == "reference":
                j, c = reference_match(theta, candidates, host_layer.weight[:, placed[0]], i, free)
            elif not theta.any():  # a neuron that is constantly 0: a host neuron with zero bias and no inputs
                j, c = (i if output_layer else int(free.nonzero()[0])), 1.0
            elif output_layer:
                j = i
                c = float(_projection_scales(theta, candidates[i : i + 1])[1])
                if c == 0.0:
                    raise ValueError(
                        f"host output {i} is orthogonal to the target's output neuron {i}: it cannot "
                        f"carry it; use another seed"
                    )
            else:
                distance, c_all = _projection_scales(theta, candidates)
                usable = free & (c_all > 0)
                if not usable.any():
                    raise ValueError(
                        f"no unused neuron of host layer {name!r} (width {host_layer.out_features}) "
                        f"matches target neuron {i} with a positive scale; use a wider host or "
                        f"another seed"
                    )
                j = int(torch.where(usable, distance, torch.full_like(distance, torch.inf)).argmin())
                c = float(c_all[j])
            host_layer.bias[j] = c * theta[0]
            host_layer.weight[j, columns] = c * theta[1:]
            mask[j, columns] = True
            free[j] = False
            new_placed[i], new_scales[i] = j, c
        if output_layer and planting == "reference":
            # host output new_placed[i] carries target output i: reordered so that output i is the target's i
            host_layer.weight.copy_(host_layer.weight[new_placed])
            host_layer.bias.copy_(host_layer.bias[new_placed])
            mask = mask[new_placed]
        masks[f"{name}.weight"] = mask
        placed, scales = new_placed, new_scales
    host = host.to(dtype=reference.dtype, device=reference.device)
    masks = Masks({name: mask.to(reference.device) for name, mask in masks.items()})
    return host, masks, scales.to(dtype=reference.dtype, device=reference.device)


def planted_ticket(host: nn.Module, masks: Masks) -> nn.Module:
    """A copy of ``host`` with masked layers (:func:`lth_sparse.nn.masked`) holding ``masks``: every weight
    outside them pruned. For ``(host, masks, scales) = plant(target)`` it computes ``scales * target(x)``."""
    from lth_sparse.nn import masked

    return masks.apply_to(masked(copy.deepcopy(host)))


def ticket_density(target: nn.Module, width: int = 100) -> float:
    """The density (the paper's "sparsity" rho) of ``target`` planted in a host of ``width``: the target's
    non-zero weights over all the host's weights, biases not counted. Equals ``plant(target, width)[1].density()``."""
    widths = host_widths(target, width)
    total = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return sum(int((layer.weight != 0).sum()) for layer in target_layers(target)) / total
