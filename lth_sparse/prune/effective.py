"""Effective sparsity: weights that still lie on a path from the input to the output.

Vysogorets & Kempe (2023) call a kept weight inactive when every path through it
is cut somewhere else (its input unit receives nothing from the input, or its
output unit reaches no output); such weights count as pruned in effective sparsity.

Found for any architecture by propagating reachability through a float64 copy
of the model: every masked weight becomes its 0/1 mask, biases become 0,
batch-norm becomes the identity, max-pooling becomes average pooling (a max
routes the gradient to one position of its window only, while every position
carries paths), and an all-ones input is propagated. Every value is then
non-negative and non-zero exactly where some input path arrives, and a
weight's gradient of the summed output is non-zero exactly when the weight is
effective. Path counts (as SynFlow computes them) would grow like width**depth
and overflow float64 in deep networks (a width-10 MLP of depth 310 has 1e310
paths; inf * 0 is NaN, and NaN != 0 would count a dead weight as effective).
So each masked layer's output is turned into 1 where it is non-zero (reached
from the input), and the gradient arriving at it into 1 where it is non-zero
(reaches the output): only reachability travels, exact at any depth.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from lth_sparse.masks import Masks, masked_weights, unwrap_model, unwrapped_copy


class _Reachability(torch.autograd.Function):
    """Forward: 1 where a unit is reached from the input, else 0 (with ``from_input=False``: 1 everywhere).
    Backward: 1 where it is reached and the gradient is non-zero (it also reaches the output), else 0.
    Both are exact whatever the path counts."""

    @staticmethod
    def forward(ctx, counts: Tensor, from_input: bool = True) -> Tensor:
        reached = (counts != 0).to(counts.dtype) if from_input else torch.ones_like(counts)
        ctx.save_for_backward(reached)
        return reached

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (reached,) = ctx.saved_tensors
        return (grad != 0).to(grad.dtype) * reached, None


@torch.no_grad()
def _reachability_copy(
    model: nn.Module, masks: Masks, from_input: bool = True
) -> tuple[nn.Module, dict[str, nn.Module]]:
    net = unwrapped_copy(model).double().eval()
    layers = masked_weights(net)
    for name, mask in masks.items():
        layers[name].mask.copy_(mask)
        layers[name].weight.copy_(mask.double())
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()  # mean 0, var 1
            module.eps = 0.0
            if module.affine:
                module.weight.fill_(1.0)
                module.bias.zero_()
        elif getattr(module, "bias", None) is not None and isinstance(module.bias, torch.Tensor):
            module.bias.zero_()
    _replace_max_pools(net)
    for p in net.parameters():
        p.requires_grad_(False)
    for layer in layers.values():
        layer.weight.requires_grad_(True)
        layer.register_forward_hook(lambda module, args, output: _Reachability.apply(output, from_input))
    return net, layers


def _replace_max_pools(net: nn.Module) -> None:
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d) and child.dilation in (1, (1, 1)):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
            elif isinstance(child, nn.AdaptiveMaxPool2d):
                setattr(parent, name, nn.AdaptiveAvgPool2d(child.output_size))


def effective_masks(model: nn.Module, masks: Masks | None = None, input_shape: tuple[int, ...] | None = None) -> Masks:
    """The masks with every weight that lies on no input-output path also pruned.

    model: a model of masked layers (not changed), possibly wrapped by DDP or
    ``torch.compile`` (it is not run: a bare copy is); masks: default the
    model's own; input_shape: one example's shape (e.g. ``(1, 28, 28)``),
    default taken from ``model.input_shape`` when the model has it.
    """
    return _reachable(model, masks, input_shape, from_input=True)


def output_connected_masks(
    model: nn.Module, masks: Masks | None = None, input_shape: tuple[int, ...] | None = None
) -> Masks:
    """The masks with every weight cut off from the output also pruned: Paganini & Forde's (2020) count of
    implicitly pruned weights (their Appendix C and Table 1, ``s_eff``).

    A kept weight whose output unit reaches no output (every path onward crosses a pruned
    weight) receives no gradient and could take any value: it counts as pruned. Unlike
    :func:`effective_masks` (Vysogorets & Kempe), a weight whose *input* is cut off from the
    input still counts: with biases, such a unit still carries a signal (its bias, through the
    activation), so it is not dead. Hence ``effective_masks`` is always a subset of these.
    Arguments as :func:`effective_masks`.
    """
    return _reachable(model, masks, input_shape, from_input=False)


def _reachable(model: nn.Module, masks: Masks | None, input_shape, *, from_input: bool) -> Masks:
    masks = Masks.from_model(model) if masks is None else masks
    if input_shape is None:
        input_shape = getattr(unwrap_model(model), "input_shape", None)
        if input_shape is None:
            raise ValueError("input_shape is needed (the model has no input_shape attribute)")
    net, layers = _reachability_copy(model, masks, from_input)
    device = next(iter(masks.values())).device
    out = net(torch.ones(1, *input_shape, dtype=torch.float64, device=device))
    if out.requires_grad:
        out.sum().backward()
    # A layer the output does not depend on gets no gradient at all: none of its weights is effective.
    return Masks(
        {
            name: masks[name] & (layers[name].weight.grad != 0)
            if layers[name].weight.grad is not None
            else torch.zeros_like(masks[name])
            for name in masks
        }
    )
