"""Effective sparsity: weights that still lie on a path from the input to the output.

Vysogorets & Kempe (2023) call a kept weight inactive when every path through it
is cut somewhere else (its input unit receives nothing from the input, or its
output unit reaches no output); such weights count as pruned in effective sparsity.

Found for any architecture by path counting (as SynFlow does): in a float64 copy
of the model, every masked weight becomes its 0/1 mask, biases become 0,
batch-norm becomes the identity, max-pooling becomes average pooling (a max
routes the gradient to one position of its window only, while every position
carries paths), and an all-ones input is propagated. A
weight's gradient of the summed output is then the number of input-output paths
through it, non-zero exactly when the weight is effective.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from lth_sparse.masks import Masks
from lth_sparse.nn.modules import masked_layers


@torch.no_grad()
def _path_counting_copy(model: nn.Module, masks: Masks) -> nn.Module:
    net = copy.deepcopy(model).double().eval()
    layers = {(f"{n}.weight" if n else "weight"): m for n, m in masked_layers(net)}
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

    model: a model of masked layers (not changed); masks: default the model's
    own; input_shape: one example's shape (e.g. ``(1, 28, 28)``), default taken
    from ``model.input_shape`` when the model has it.
    """
    masks = Masks.from_model(model) if masks is None else masks
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ValueError("input_shape is needed (the model has no input_shape attribute)")
    net, layers = _path_counting_copy(model, masks)
    device = next(iter(masks.values())).device
    out = net(torch.ones(1, *input_shape, dtype=torch.float64, device=device))
    out.sum().backward()
    return Masks({name: masks[name] & (layers[name].weight.grad != 0) for name in masks})
