"""Drop-in masked layers: ``MaskedLinear`` and ``MaskedConv2d``.

Each is a subclass of its torch layer (isinstance checks and init code keep
working) with a bool buffer ``mask`` of the weight's shape, so the mask travels
with ``state_dict``, ``.to()``, ``deepcopy`` and DDP. The forward runs through
:func:`lth_sparse.ops.masked_linear` / :func:`~lth_sparse.ops.masked_conv2d`:
pruned weights never reach the output and receive zero gradient.

Optimizers still move a weight whose gradient is zero (weight decay, momentum,
Adam's running moments). So every masked weight is registered, at its first
forward, with a global optimizer step post-hook (see :func:`enforce_masks`)
that sets its pruned entries, and their optimizer state, back to exactly zero
after every step of any ``torch.optim`` optimizer. Pruned weights therefore
stay exactly zero under SGD with momentum and weight decay, Adam and AdamW,
also when the mask changes between steps or is written directly.

A mask may be changed any way: ``set_mask``, ``load_state_dict``, ``copy_`` or
indexing, and also behind torch's back (``mask.data.copy_(...)``, a numpy view,
a collective writing its storage): no decision derived from the mask outlives
it. The torch and Triton paths read the mask at every call; the C++ CPU path
caches its count and sparse structure but compares the mask's bytes with its
cached copy at every call (see ``lth_sparse/ops/_cpu.py``); the optimizer hook
reads the mask at every step. ``load_state_dict`` takes bool masks only.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

from lth_sparse.ops import masked_conv2d, masked_linear, zero_pruned_
from lth_sparse.ops._checks import check_weight_and_mask

# weight Parameter -> weakref to the masked module owning it (keyed by identity: tensors compare elementwise).
_MASKED_WEIGHTS: WeakIdKeyDictionary = WeakIdKeyDictionary()


class MaskedMixin:
    """What both masked layers share: the ``mask`` buffer and its upkeep."""

    mask: Tensor
    weight: nn.Parameter

    def _init_mask(self, mask: Tensor | None = None) -> None:
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))
        if mask is not None:
            self.set_mask(mask)
        _MASKED_WEIGHTS[self.weight] = weakref.ref(self)

    def __setstate__(self, state) -> None:
        # deepcopy and unpickling create new weight Parameters: register them at once.
        super().__setstate__(state)
        self._track()

    def _track(self) -> None:
        # Cheap, and it catches deepcopies and weights replaced after construction.
        if self.weight not in _MASKED_WEIGHTS:
            _MASKED_WEIGHTS[self.weight] = weakref.ref(self)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # torch would copy_ the loaded mask into the bool buffer, which casts: 0.5 or 2 would become True.
        # Integer 0/1 masks (uint8 masks of old torch, torch.nn.utils.prune's float weight_mask) are refused
        # too, as Masks refuses them: one rule, and a conversion the caller writes and sees (.bool()).
        key = prefix + "mask"
        mask = state_dict.get(key)
        if isinstance(mask, Tensor) and mask.dtype != torch.bool:
            raise TypeError(
                f"state_dict[{key!r}] must be a bool mask, got {mask.dtype}; convert a 0/1 mask "
                "with .bool() (lth_sparse.nn.masked() converts a torch.nn.utils.prune model)"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @torch.no_grad()
    def set_mask(self, mask: Tensor) -> None:
        """Replace the mask (bool, the weight's shape) and zero the weights it prunes."""
        check_weight_and_mask(self.weight, mask)
        self.mask.copy_(mask)
        self.zero_pruned()

    @torch.no_grad()
    def zero_pruned(self) -> None:
        """Set the pruned weights to exactly zero."""
        zero_pruned_(self.weight, self.mask)

    @property
    def sparsity(self) -> float:
        """Fraction of this layer's weights that are pruned."""
        return 1.0 - self.mask.sum().item() / max(1, self.mask.numel())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sparsity={self.sparsity:.4f}"


class MaskedLinear(MaskedMixin, nn.Linear):
    """``nn.Linear`` computing ``x (W * mask)^T + b``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        mask: Tensor | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_mask(mask)

    def forward(self, input: Tensor) -> Tensor:
        self._track()
        return masked_linear(input, self.weight, self.mask, self.bias)


class MaskedConv2d(MaskedMixin, nn.Conv2d):
    """``nn.Conv2d`` computing ``conv2d(x, W * mask) + b``; every padding mode and 'same'/'valid' work."""

    def __init__(self, *args, mask: Tensor | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_mask(mask)

    def forward(self, input: Tensor) -> Tensor:
        self._track()
        input, padding = resolve_conv_padding(self, input)
        return masked_conv2d(input, self.weight, self.mask, self.bias, self.stride, padding, self.dilation, self.groups)


def resolve_conv_padding(conv: nn.Conv2d, input: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """The input and the numeric zero padding to convolve it with, as ``nn.Conv2d`` would.

    Padding modes other than zeros, and 'same' with an even kernel (asymmetric),
    pad the input explicitly and leave no padding for the conv; 'valid' and
    symmetric 'same' become their numbers.
    """
    padding = conv.padding
    asymmetric_same = padding == "same" and any(d * (k - 1) % 2 for d, k in zip(conv.dilation, conv.kernel_size))
    if conv.padding_mode != "zeros" or asymmetric_same:
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        return F.pad(input, conv._reversed_padding_repeated_twice, mode=mode), (0, 0)
    if padding == "valid":
        return input, (0, 0)
    if padding == "same":
        return input, tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))
    return input, tuple(padding)


MASKED_TYPES = {nn.Linear: MaskedLinear, nn.Conv2d: MaskedConv2d}


def strip_mask(module: MaskedMixin) -> Tensor:
    """Turn the masked layer ``module`` back into its torch layer (``nn.Linear`` / ``nn.Conv2d``), in place,
    and return its mask: the ``mask`` buffer removed, the weight no longer kept at zero where pruned by
    :func:`enforce_masks`; the weights are left as they are."""
    mask = module.mask
    _MASKED_WEIGHTS.pop(module.weight, None)
    del module._buffers["mask"]
    module.__class__ = next(base for base, cls in MASKED_TYPES.items() if isinstance(module, cls))
    return mask


@torch.no_grad()
def enforce_masks(optimizer: torch.optim.Optimizer, *args, **kwargs) -> None:
    """Zero the pruned entries of every masked weight ``optimizer`` holds, and their optimizer state.

    Registered as a global ``torch.optim`` step post-hook when ``lth_sparse.nn``
    is imported; callable by hand for optimizers outside ``torch.optim``.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            ref = _MASKED_WEIGHTS.get(param)
            module = ref() if ref is not None else None
            if module is None or not isinstance(module, MaskedMixin) or module.weight is not param:
                continue
            zero_pruned_(param, module.mask)
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, Tensor) and value.shape == param.shape:
                    zero_pruned_(value, module.mask.to(value.device))


register_optimizer_step_post_hook(enforce_masks)
