"""Plain-torch references: the specification of every op, and the ground truth of the tests.

Short and obviously right on purpose; the fast paths live elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_linear(input: Tensor, weight: Tensor, mask: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(input, weight * mask, bias)``."""
    return F.linear(input, weight * mask, bias)


def masked_conv2d(
    input: Tensor,
    weight: Tensor,
    mask: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    """``F.conv2d(input, weight * mask, bias, ...)``."""
    return F.conv2d(input, weight * mask, bias, stride, padding, dilation, groups)


def kth_smallest(tensors: Sequence[Tensor], k: int) -> Tensor:
    """The k-th smallest (1-based) value over all elements of ``tensors``."""
    return torch.cat([t.reshape(-1) for t in tensors]).kthvalue(k).values


def prune_lowest(scores: Sequence[Tensor], masks: Sequence[Tensor] | None, k: int) -> list[Tensor]:
    """New masks with the k lowest-scoring still-active entries set False.

    Ties: the earlier tensor, then the lower flat index, is pruned first
    (a stable sort of the concatenated scores in order).
    """
    flat = torch.cat([s.reshape(-1) for s in scores])
    if masks is None:
        active = torch.ones_like(flat, dtype=torch.bool)
    else:
        active = torch.cat([m.reshape(-1) for m in masks])
    positions = active.nonzero().squeeze(1)
    order = torch.sort(flat[positions], stable=True).indices
    new = active.clone()
    new[positions[order[:k]]] = False
    return [part.reshape(s.shape) for part, s in zip(new.split([s.numel() for s in scores]), scores)]


def interpolated_linear(
    input: Tensor,
    weight_a: Tensor,
    weight_b: Tensor,
    alphas: Tensor,
    bias_a: Tensor | None = None,
    bias_b: Tensor | None = None,
) -> Tensor:
    """For each alpha: ``F.linear(x, (1 - alpha) * weight_a + alpha * weight_b,
    (1 - alpha) * bias_a + alpha * bias_b)``."""
    outputs = []
    for i, alpha in enumerate(alphas):
        x = input[i] if input.shape[0] == alphas.shape[0] else input[0]
        weight = (1 - alpha) * weight_a + alpha * weight_b
        bias = None if bias_a is None else (1 - alpha) * bias_a + alpha * bias_b
        outputs.append(F.linear(x, weight, bias))
    return torch.stack(outputs)


def interpolated_conv2d(
    input: Tensor,
    weight_a: Tensor,
    weight_b: Tensor,
    alphas: Tensor,
    bias_a: Tensor | None = None,
    bias_b: Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> Tensor:
    """For each alpha: ``F.conv2d`` with the interpolated weight and bias."""
    outputs = []
    for i, alpha in enumerate(alphas):
        x = input[i] if input.shape[0] == alphas.shape[0] else input[0]
        weight = (1 - alpha) * weight_a + alpha * weight_b
        bias = None if bias_a is None else (1 - alpha) * bias_a + alpha * bias_b
        outputs.append(F.conv2d(x, weight, bias, stride, padding, dilation, groups))
    return torch.stack(outputs)
