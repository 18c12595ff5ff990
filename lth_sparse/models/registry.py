"""The model registry and ``create_model``.

A registered builder is ``build(input_shape, num_classes, **options) -> nn.Module``
made of plain torch layers; ``create_model`` initialises it the way OpenLTH does
and converts it to masked layers, the same for every model.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn as nn

from lth_sparse.errors import UserError
from lth_sparse.nn import masked
from lth_sparse.registry import Registry

__all__ = [
    "INITIALIZERS",
    "MODELS",
    "ModelOptionError",
    "available_models",
    "check_model_options",
    "create_model",
    "image_shape",
    "initialize",
    "register_model",
]

Builder = Callable[..., nn.Module]

#: The builders by name; names are looked up without surrounding spaces and ignoring case.
MODELS: Registry[Builder] = Registry("model", key=lambda name: name.strip().lower())


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``build(input_shape, num_classes, **options) -> nn.Module``
    under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.
    """
    return MODELS.register(name)


def available_models() -> list[str]:
    """The registered model names, sorted."""
    return MODELS.names()


class ModelOptionError(UserError, TypeError):
    """An option that a model's builder does not take, or a value not of the option's type: a ``TypeError``, as
    the builder's call with it would raise, and bad input (a :class:`~lth_sparse.errors.UserError`, so a
    ``ValueError`` too)."""


_OPTION_TYPES = (bool, int, float, str)


def _builder_options(build: Builder) -> dict[str, tuple[type | None, object, bool]]:
    """The options of ``build``: its keyword parameters after ``input_shape`` and ``num_classes``, each as (type,
    default, whether None is allowed); the type is the parameter's annotation where it is a bool, int, float or
    str (or one of them or None), else its default's type where that is one, else None (any value)."""
    hints = typing.get_type_hints(build)
    options = {}
    for p in list(inspect.signature(build).parameters.values())[2:]:  # after input_shape, num_classes
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = hints.get(p.name)
        members = typing.get_args(hint) if typing.get_args(hint) else (hint,)
        scalars = [a for a in members if a is not type(None)]
        default = None if p.default is p.empty else p.default
        if len(scalars) == 1 and scalars[0] in _OPTION_TYPES:
            kind = scalars[0]
        elif type(default) in _OPTION_TYPES:
            kind = type(default)
        else:
            kind = None
        options[p.name] = (kind, default, type(None) in members or default is None)
    return options


def _of_type(value, kind: type) -> bool:
    """Whether ``value`` serves as an option of type ``kind``: a bool for bool; an int (not a bool), or a float of
    integral value (which the builders take), for int; an int or a float for float; a str for str."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def check_model_options(name: str, options: Mapping[str, object]) -> None:
    """Refuse what the builder of model ``name`` would not take, before it is called: an option its signature
    does not have (the message lists those it has, with their types and defaults) or a value not of the option's
    type (its annotation, else its default's type; the message names the type). Raises
    :class:`ModelOptionError`. A builder that takes ``**options`` takes any name."""
    build = MODELS.lookup(name)
    known = _builder_options(build)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(build).parameters.values())
    for key, value in options.items():
        if key not in known:
            if takes_any:
                continue
            listed = ", ".join(
                f"{k} ({kind.__name__ if kind else 'any'}, default {default!r})"
                for k, (kind, default, _) in known.items()
            )
            raise ModelOptionError(
                f"model option {key}={value!r}: model {name} has no option {key!r}; "
                + (f"its options: {listed}" if known else "it takes no options")
            )
        kind, default, nullable = known[key]
        if kind is not None and not (value is None and nullable) and not _of_type(value, kind):
            raise ModelOptionError(
                f"model option {key}={value!r}: {key} of model {name} must be {'an' if kind is int else 'a'} "
                f"{kind.__name__} (default {default!r})"
            )


def image_shape(model: str, input_shape: Sequence[int], min_size: int = 1) -> tuple[int, int, int]:
    """``input_shape`` as ``(C, H, W)`` for the image model ``model``.

    Raises:
        ValueError: naming the model and the shape, if ``input_shape`` is not an
            image shape or is smaller than ``min_size`` pixels on a side.
    """
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(
            f"model {model!r} needs an image input_shape (C, H, W), got {shape}; use lenet300 or mlp for vector inputs"
        )
    if min(shape[1:]) < min_size:
        raise ValueError(
            f"model {model!r} needs images of at least {min_size}x{min_size} pixels, got input_shape {shape}"
        )
    return shape  # type: ignore[return-value]


def _kaiming_normal(weight: torch.Tensor) -> None:
    nn.init.kaiming_normal_(weight)  # fan_in, gain sqrt(2): He et al. (2015)


def _kaiming_uniform(weight: torch.Tensor) -> None:
    nn.init.kaiming_uniform_(weight)


def _xavier_normal(weight: torch.Tensor) -> None:
    nn.init.xavier_normal_(weight)  # Glorot: the original lottery-ticket paper's choice


INITIALIZERS: dict[str, Callable[[torch.Tensor], None]] = {
    "kaiming_normal": _kaiming_normal,
    "kaiming_uniform": _kaiming_uniform,
    "xavier_normal": _xavier_normal,
}


@torch.no_grad()
def initialize(model: nn.Module, init: str = "kaiming_normal") -> nn.Module:
    """Initialise ``model`` in place as OpenLTH does: every ``nn.Linear`` /
    ``nn.Conv2d`` weight from ``INITIALIZERS[init]`` (default Kaiming normal,
    fan-in), biases left at torch's default (uniform in ``±1/sqrt(fan_in)``, as
    OpenLTH leaves them), BatchNorm weight 1 and bias 0. Draws from torch's
    default generator, so ``torch.manual_seed`` fixes the result.

    Raises:
        ValueError: unknown ``init``.
    """
    if init not in INITIALIZERS:
        raise ValueError(f"unknown init {init!r}; available: {', '.join(sorted(INITIALIZERS))}")
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            INITIALIZERS[init](module.weight)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()  # weight 1, bias 0, running stats reset
    return model


def create_model(
    name: str, input_shape: Sequence[int], num_classes: int, *, init: str = "kaiming_normal", **options
) -> nn.Module:
    """Build the registered model ``name`` for inputs of ``input_shape`` (one
    example, e.g. ``(1, 28, 28)`` or ``(40,)``) and ``num_classes`` outputs;
    initialise it (``initialize(model, init)``) and convert every ``nn.Linear`` /
    ``nn.Conv2d`` into ``MaskedLinear`` / ``MaskedConv2d`` (all-ones masks).

    ``options`` go to the model's builder (e.g. ``width`` for ``resnet20`` and
    ``mlp``, ``depth`` for ``mlp``). The model is on the CPU in float32; deterministic
    under ``torch.manual_seed``. It carries ``input_shape`` and ``num_classes``
    attributes. The last ``Linear`` registered is the output layer.

    Raises:
        ValueError: unknown ``name`` (the message lists the available ones); an
            ``input_shape`` the model cannot take (e.g. a vector for a conv model),
            with the model and the shape; ``num_classes < 1``; unknown ``init``.
        ModelOptionError (a TypeError and a ValueError): an option the model does not have, or a value
            not of the option's type (:func:`check_model_options`).
    """
    build = MODELS.lookup(name)
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive sizes, got {tuple(input_shape)}")
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if init not in INITIALIZERS:
        raise ValueError(f"unknown init {init!r}; available: {', '.join(sorted(INITIALIZERS))}")
    check_model_options(name, options)
    model = build(shape, int(num_classes), **options)
    initialize(model, init)
    model = masked(model)
    # What the model was built for, for tools that need one example's shape (effective sparsity).
    model.input_shape = shape
    model.num_classes = int(num_classes)
    return model


def flat_size(shape: Sequence[int]) -> int:
    """Number of values in one example of ``shape``."""
    return math.prod(shape)
