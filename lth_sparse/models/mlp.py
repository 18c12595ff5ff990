"""Fully connected networks: LeNet-300-100 and a configurable MLP."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch.nn as nn

from .registry import flat_size, register_model

__all__ = ["MLP"]


class MLP(nn.Sequential):
    """Flatten, then ``Linear -> ReLU`` for each hidden width, then a linear output.

    Layers are named ``fc1``, ``fc2``, ..., the last one being the output layer.
    input: ``(N, *input_shape)`` -> ``(N, num_classes)``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int):
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = in_features
        for i, out in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, out)
            layers[f"relu{i}"] = nn.ReLU()
            width = out
        layers[f"fc{len(hidden) + 1}"] = nn.Linear(width, num_classes)
        super().__init__(layers)


@register_model("lenet300")
def lenet300(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-300-100 (LeCun et al., 1998; Frankle & Carbin, 2019): fully connected
    ``in -> 300 -> 100 -> num_classes`` with ReLU; any input shape (flattened).
    266,610 parameters for 28x28 inputs and 10 classes."""
    return MLP(flat_size(input_shape), (300, 100), num_classes)


@register_model("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int, *, depth: int = 2, width: int = 256) -> nn.Module:
    """A fully connected network with ``depth`` hidden layers of ``width`` units
    (ReLU); ``depth=0`` is a linear classifier. Any input shape (flattened).

    Raises:
        ValueError: ``depth < 0`` or ``width < 1``.
    """
    if isinstance(depth, bool) or int(depth) != depth or depth < 0:
        raise ValueError(f"mlp: depth must be an integer >= 0, got {depth!r}")
    if isinstance(width, bool) or int(width) != width or width < 1:
        raise ValueError(f"mlp: width must be an integer >= 1, got {width!r}")
    return MLP(flat_size(input_shape), (int(width),) * int(depth), num_classes)
