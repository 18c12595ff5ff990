"""Data augmentation on whole batches of tensors, on the batch's device.

The random draws come from the ``generator`` passed in, so an augmented epoch is
reproducible; with ``generator=None`` they come from torch's default generator of
the generator's device.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["RandomCropFlip"]


def _draw_device(x: Tensor, generator: torch.Generator | None) -> torch.device:
    # A generator can only draw on its own device; the draws are moved to x afterwards.
    return generator.device if generator is not None else x.device


class RandomCropFlip:
    """Random crop after ``padding`` pixels of padding on each side, then (when
    ``flip``) a horizontal flip with probability 1/2, per example.

    This is the standard CIFAR augmentation (``RandomCrop(32, padding=4)`` and
    ``RandomHorizontalFlip()``) done on a normalised batch at once. ``fill`` is the
    per-channel value of the padding: the normalised value of a black pixel,
    ``-mean / std``, so that padding looks as it does when it is added before
    normalisation, as torchvision's transforms do.

    Call: ``augment(x, generator)`` with ``x: (N, C, H, W)`` floating; returns a new
    ``(N, C, H, W)`` tensor on ``x``'s device.
    """

    def __init__(self, padding: int = 4, flip: bool = True, fill: Tensor | None = None):
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = int(padding)
        self.flip = bool(flip)
        self.fill = None if fill is None else torch.as_tensor(fill, dtype=torch.float32).flatten()

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"RandomCropFlip expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        if n == 0:
            return x.clone()
        draw_on = _draw_device(x, generator)
        out = x
        if self.padding > 0:
            p = self.padding
            if self.fill is None:
                padded = x.new_zeros(n, c, h + 2 * p, w + 2 * p)
            else:
                if self.fill.numel() != c:
                    raise ValueError(f"fill has {self.fill.numel()} values, the batch has {c} channels")
                fill = self.fill.to(device=x.device, dtype=x.dtype).view(1, c, 1, 1)
                padded = fill.expand(n, c, h + 2 * p, w + 2 * p).clone()
            padded[:, :, p : p + h, p : p + w] = x
            top = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=draw_on).to(x.device)
            left = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=draw_on).to(x.device)
            rows = top[:, None] + torch.arange(h, device=x.device)  # (N, H)
            cols = left[:, None] + torch.arange(w, device=x.device)  # (N, W)
            batch = torch.arange(n, device=x.device)[:, None, None]
            # Advanced indices separated by a slice put their dimensions first: (N, H, W, C).
            out = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
        if self.flip:
            flip = torch.rand(n, generator=generator, device=draw_on).to(x.device) < 0.5
            out = torch.where(flip.view(n, 1, 1, 1), out.flip(-1), out)
        return out
