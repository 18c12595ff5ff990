"""Argument checks shared by every backend of every op: errors name the argument."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


def check_tensor(name: str, t, *, floating: bool = False) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def check_same_device(**tensors: Tensor | None) -> None:
    first = None
    for t in tensors.values():
        if t is None:
            continue
        if first is None:
            first = t.device
        elif t.device != first:
            break
    else:
        return
    devices = {k: v.device for k, v in tensors.items() if v is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise RuntimeError(f"all tensors must be on one device, got {listing}")


def check_weight_and_mask(weight: Tensor, mask: Tensor) -> None:
    check_tensor("weight", weight, floating=True)
    check_tensor("mask", mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if mask.shape != weight.shape:
        raise ValueError(f"mask must have the weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")


def check_bias(name: str, bias: Tensor | None, out_features: int, weight: Tensor) -> None:
    if bias is None:
        return
    check_tensor(name, bias, floating=True)
    if bias.shape != (out_features,):
        raise ValueError(f"{name} must have shape ({out_features},), got {tuple(bias.shape)}")
    if bias.dtype != weight.dtype:
        raise TypeError(f"{name} must have the weight's dtype {weight.dtype}, got {bias.dtype}")


def check_input_dtype(input: Tensor, weight: Tensor) -> None:
    check_tensor("input", input, floating=True)
    if input.dtype != weight.dtype:
        raise TypeError(f"input and weight must have one dtype, got {input.dtype} and {weight.dtype}")


def check_score_list(name: str, tensors: Sequence[Tensor]) -> None:
    if isinstance(tensors, Tensor) or not isinstance(tensors, Sequence):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(tensors).__name__}")
    if len(tensors) == 0:
        raise ValueError(f"{name} must not be empty")
    for i, t in enumerate(tensors):
        check_tensor(f"{name}[{i}]", t, floating=True)
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise TypeError(f"{name} must share one dtype, got {sorted(str(d) for d in dtypes)}")
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise RuntimeError(f"{name} must all be on one device, got {sorted(str(d) for d in devices)}")


def check_no_nan(name: str, tensors: Sequence[Tensor], masks: Sequence[Tensor] | None = None) -> None:
    """A ValueError naming the first ``name[i]`` with a NaN (where ``masks[i]`` is True, with ``masks``): a NaN has
    no place in an order (sorted, it would rank above +inf: a pruning would keep it as the most important
    weight). One read of the data and one synchronisation: every tensor's sum, which a NaN makes NaN; only the
    tensors whose sum is not finite (a NaN, an infinity or an overflow) are searched."""
    sums = torch.stack([t.sum() for t in tensors])
    if bool(torch.isfinite(sums).all()):
        return
    for i in torch.nonzero(~torch.isfinite(sums)).flatten().tolist():
        nan = tensors[i].isnan()
        if masks is not None:
            nan &= masks[i]
        count = int(nan.count_nonzero())
        if count:
            where = " where the mask keeps it" if masks is not None else ""
            raise ValueError(
                f"{name}[{i}] holds {count} NaN{'s' if count != 1 else ''}{where}: the scores must be numbers to be "
                "ranked (a NaN would rank above +inf)"
            )


def check_mask_list(masks: Sequence[Tensor], scores: Sequence[Tensor]) -> None:
    if isinstance(masks, Tensor) or not isinstance(masks, Sequence):
        raise TypeError(f"masks must be a list or tuple of bool tensors or None, got {type(masks).__name__}")
    if len(masks) != len(scores):
        raise ValueError(f"masks must have one mask per score tensor ({len(scores)}), got {len(masks)}")
    for i, (m, s) in enumerate(zip(masks, scores)):
        check_tensor(f"masks[{i}]", m)
        if m.dtype != torch.bool:
            raise TypeError(f"masks[{i}] must be a bool tensor, got {m.dtype}")
        if m.shape != s.shape:
            raise ValueError(f"masks[{i}] must have the shape of scores[{i}] {tuple(s.shape)}, got {tuple(m.shape)}")
        if m.device != s.device:
            raise RuntimeError(f"masks[{i}] is on {m.device} but scores[{i}] is on {s.device}")


def check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")


def check_k(k, low: int, high: int, what: str) -> None:
    check_int("k", k)
    if not low <= k <= high:
        raise ValueError(f"k must be in [{low}, {high}] ({what}), got {k}")


def check_alphas(alphas: Tensor, input: Tensor) -> None:
    check_tensor("alphas", alphas, floating=True)
    if alphas.dim() != 1:
        raise ValueError(f"alphas must be 1-D, got shape {tuple(alphas.shape)}")
    if alphas.shape[0] == 0:
        raise ValueError("alphas must hold at least one value")
    if input.dim() < 2:
        raise ValueError(f"input must be (A or 1, *, features), got shape {tuple(input.shape)}")
    if input.shape[0] not in (1, alphas.shape[0]):
        raise ValueError(
            f"input's first dimension must be 1 (shared by all alphas) or len(alphas)={alphas.shape[0]}, "
            f"got {input.shape[0]}"
        )


def check_interpolation_pair(weight_a: Tensor, weight_b: Tensor, bias_a: Tensor | None, bias_b: Tensor | None) -> None:
    check_tensor("weight_a", weight_a, floating=True)
    check_tensor("weight_b", weight_b, floating=True)
    if weight_a.shape != weight_b.shape:
        raise ValueError(f"weight_b must have weight_a's shape {tuple(weight_a.shape)}, got {tuple(weight_b.shape)}")
    if weight_a.dtype != weight_b.dtype:
        raise TypeError(f"weight_a and weight_b must have one dtype, got {weight_a.dtype} and {weight_b.dtype}")
    if (bias_a is None) != (bias_b is None):
        raise ValueError("bias_a and bias_b must be given together, or both be None")
    check_bias("bias_a", bias_a, weight_a.shape[0], weight_a)
    check_bias("bias_b", bias_b, weight_a.shape[0], weight_a)


def check_conv_geometry(input: Tensor, weight: Tensor, stride, padding, dilation, groups: int) -> None:
    """Checks shared with ``interpolated_conv2d``: input (N, C, H, W) or (C, H, W) fits the weight."""
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D (out_channels, in_channels/groups, kH, kW), got {tuple(weight.shape)}")
    if input.dim() not in (3, 4):
        raise ValueError(f"input must be (N, C, H, W) or (C, H, W), got shape {tuple(input.shape)}")
    if not isinstance(groups, int) or groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"groups must be a positive int dividing out_channels={weight.shape[0]}, got {groups}")
    channels = input.shape[-3]
    if channels != weight.shape[1] * groups:
        raise ValueError(
            f"input has {channels} channels, the weight expects {weight.shape[1] * groups} "
            f"(in_channels/groups={weight.shape[1]} x groups={groups})"
        )
    for name, value, low in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if len(value) != 2 or any(v < low for v in value):
            raise ValueError(f"{name} must be two ints >= {low}, got {list(value)}")


def pair_list(value) -> list:
    """A conv's stride, padding or dilation, given as one int or a pair, as the list of two that the ops
    take: an iterable's items, else the value twice (``nn.Conv2d``'s rule)."""
    return list(value) if isinstance(value, Iterable) else [value, value]


def conv_output_size(input: Tensor, weight: Tensor, stride, padding, dilation) -> list[int]:
    """(H_out, W_out) of a conv of ``input`` (..., H, W) with ``weight`` (..., kH, kW); shared by the fake kernels."""
    return [
        (input.shape[-2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) - 1) // stride[i] + 1
        for i in range(2)
    ]
