"""Derived tasks: a registered data set's name with options, ``NAME:OPTION=VALUE[:OPTION=VALUE...]``.

Multi-task studies (consensus tickets, transfer) need many tasks of one input shape; these
make them from the data sets at hand, offline:

- ``half=a`` / ``half=b``: one of two halves of the training set, stratified by class and drawn
  with a fixed seed (0), so the two are disjoint and together the whole; each keeps the whole
  test set (as Morcos et al. 2019 split CIFAR-10 into CIFAR-10a and CIFAR-10b).
- ``subset=F``: a class-balanced share F in (0, 1] of the training set (``round(F * n_c)`` examples of each
  class c, at least one, drawn with a fixed seed (1): nested, so ``subset=0.01`` lies in ``subset=0.02``);
  the test set stays whole: the few-shot tasks of the SGD-noise paper's Section 5.2 (1, 2, 5, 10%).
- ``classes=0,1,2``: only these classes, in the training and the test set, relabelled
  0..k-1 in the order given (so the output layer has k units).
- ``shape=CxHxW``: images resized to H x W (bilinear; antialiased where they shrink) and
  brought to C channels (grayscale to RGB: the channel repeated; RGB to grayscale: the
  ITU-R 601 luma weights 0.299, 0.587, 0.114, as torchvision's ``rgb_to_grayscale``).
  8-bit images stay 8-bit (rounded, as torchvision's ``Resize`` of a PIL image gives), so
  their statistics stay exact. Vectors (``mnist1d``) cannot be brought to an image shape.
- ``permute=SEED``: a fixed permutation of the pixel positions drawn from SEED, the same for
  every channel, every example and both sets ("permuted MNIST"); of the features for vectors.
  A permuted task trains without augmentation (crops and flips of scrambled pixels mean nothing).
- ``augment=none|flip|cropP|flip+cropP`` (``flip+crop4``): the training augmentation, replacing the data set's own
  (``RandomCropFlip``: a random crop of the image's size from it padded by P pixels, a horizontal
  flip with probability 1/2; applied last, so it holds for a permuted task too when asked for).

The options apply in that order (classes, half, subset, shape, permute, augment) whatever order they are
written in; each may appear once. A data set without an official test set has its fixed
held-out test set taken out first, exactly as ``load_dataset`` takes it from the plain name,
so a derived task is tested on the same examples as its source. The name is part of a run's
config, so a task's options are in the run's hash.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from .dataset import RawDataset, hold_out_test

__all__ = ["OPTIONS", "canonical_name", "derive", "parse_task", "with_options"]

OPTIONS = ("classes", "half", "subset", "shape", "permute", "augment")  # the order they apply in
_LUMA = (0.299, 0.587, 0.114)
_CHUNK = 4096  # images resized at a time


def _parse_classes(value: str) -> tuple[int, ...]:
    try:
        classes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"classes=... takes comma-separated class indices, got {value!r}") from None
    if not classes or len(set(classes)) != len(classes) or min(classes) < 0:
        raise ValueError(f"classes=... takes distinct non-negative class indices, got {value!r}")
    return classes


def _parse_half(value: str) -> str:
    if value not in ("a", "b"):
        raise ValueError(f"half=... is a or b, got {value!r}")
    return value


def _parse_shape(value: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in value.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape=... is CxHxW with positive sizes (e.g. 1x28x28), got {value!r}")
    return shape


def _parse_augment(value: str) -> tuple[int, bool]:
    """``none``, ``flip``, ``cropP``, ``flip+cropP`` -> (crop padding P, flip)."""
    padding, flip = 0, False
    if value.strip().lower() != "none":
        for part in value.lower().split("+"):
            part = part.strip()
            if part == "flip" and not flip:
                flip = True
            elif part.startswith("crop") and part[4:].isdigit() and int(part[4:]) > 0 and not padding:
                padding = int(part[4:])
            else:
                raise ValueError(
                    f"augment=... is none, flip, cropP (P > 0 pixels of padding, e.g. crop4) or "
                    f"flip+cropP, got {value!r}"
                )
    return padding, flip


def _parse_subset(value: str) -> float:
    try:
        fraction = float(value)
    except ValueError:
        raise ValueError(f"subset=... takes a fraction of the training set in (0, 1], got {value!r}") from None
    if not 0 < fraction <= 1:
        raise ValueError(f"subset=... takes a fraction of the training set in (0, 1], got {value!r}")
    return fraction


def _parse_permute(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"permute=... takes an integer seed, got {value!r}") from None


_PARSERS = {
    "classes": _parse_classes,
    "half": _parse_half,
    "subset": _parse_subset,
    "shape": _parse_shape,
    "permute": _parse_permute,
    "augment": _parse_augment,
}


def parse_task(name: str) -> tuple[str, dict]:
    """``"fashion-mnist:half=a:permute=3"`` -> ``("fashion-mnist", {"half": "a", "permute": 3})``: the data
    set's name (lower case) and its options, parsed and checked (unknown or repeated options, bad values:
    ``ValueError`` naming them)."""
    base, *parts = name.strip().split(":")
    options: dict = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or not value.strip():
            raise ValueError(
                f"{name!r}: a derived task's option is OPTION=VALUE, got {part!r} (options: {', '.join(OPTIONS)})"
            )
        if key not in _PARSERS:
            raise ValueError(f"{name!r}: unknown derived-task option {key!r}; options: {', '.join(OPTIONS)}")
        if key in options:
            raise ValueError(f"{name!r}: option {key!r} given twice")
        options[key] = _PARSERS[key](value.strip())
    return base.strip().lower(), options


def with_options(task: str, **options) -> str:
    """``task`` with each option of ``options`` whose value is not None appended (``shape="1x28x28"`` ->
    ``:shape=1x28x28``), unless the task sets that option itself: how a pipeline gives its tasks a shared input
    shape or augmentation."""
    own = parse_task(task)[1]
    return task + "".join(f":{key}={value}" for key, value in options.items() if value is not None and key not in own)


def _format(key: str, value) -> str:
    if key == "augment":
        padding, flip = value
        return "+".join([*(["flip"] if flip else []), *([f"crop{padding}"] if padding else [])]) or "none"
    if key == "classes":
        return ",".join(str(c) for c in value)
    if key == "shape":
        return "x".join(str(s) for s in value)
    return str(value)


def canonical_name(name: str) -> str:
    """The task's name with its options in the order they apply, values normalised
    (``"FMNIST:permute=03:half=a"`` -> ``"fmnist:half=a:permute=3"``)."""
    base, options = parse_task(name)
    return ":".join([base, *(f"{k}={_format(k, options[k])}" for k in OPTIONS if k in options)])


def _select_classes(raw: RawDataset, classes: tuple[int, ...], name: str) -> RawDataset:
    if max(classes) >= raw.num_classes:
        raise ValueError(
            f"{name}: classes={','.join(map(str, classes))} names a class beyond the data set's "
            f"{raw.num_classes} (0..{raw.num_classes - 1})"
        )
    if len(classes) < 2:
        raise ValueError(f"{name}: classes=... needs at least two classes, got {list(classes)}")
    relabel = torch.full((raw.num_classes,), -1, dtype=torch.int64)
    relabel[list(classes)] = torch.arange(len(classes))

    def keep(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        new = relabel[y.long()]
        index = (new >= 0).nonzero().flatten()
        return x[index], new[index]

    train_x, train_y = keep(raw.train_x, raw.train_y)
    test_x, test_y = keep(raw.test_x, raw.test_y)
    return dataclasses.replace(
        raw, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, num_classes=len(classes)
    )


def _half(raw: RawDataset, which: str) -> RawDataset:
    generator = torch.Generator().manual_seed(0)
    y = raw.train_y.long()
    chosen = []
    for c in range(raw.num_classes):
        index = (y == c).nonzero().flatten()
        order = index[torch.randperm(len(index), generator=generator)]
        half = len(index) // 2
        chosen.append(order[:half] if which == "a" else order[half:])
    index = torch.sort(torch.cat(chosen)).values
    return dataclasses.replace(raw, train_x=raw.train_x[index], train_y=raw.train_y[index])


def _resize(x: Tensor, shape: tuple[int, int, int], name: str) -> Tensor:
    if x.dim() != 4:
        raise ValueError(
            f"{name}: shape=... needs images (N, C, H, W); this data set holds vectors of "
            f"{tuple(x.shape[1:])} features, which have no image shape to bring to "
            f"{'x'.join(map(str, shape))}"
        )
    channels, height, width = shape
    if x.shape[1] not in (1, 3) or channels not in (1, 3):
        raise ValueError(
            f"{name}: images of {x.shape[1]} channels cannot be brought to {channels} (only grayscale <-> RGB)"
        )
    if tuple(x.shape[1:]) == tuple(shape):
        return x
    out = []
    for start in range(0, len(x), _CHUNK):
        part = x[start : start + _CHUNK]
        part = part.float() / 255.0 if x.dtype == torch.uint8 else part.float()
        if part.shape[2:] != (height, width):
            shrinking = height < part.shape[2] or width < part.shape[3]
            part = F.interpolate(part, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)
        if part.shape[1] == 1 and channels == 3:
            part = part.expand(-1, 3, -1, -1)
        elif part.shape[1] == 3 and channels == 1:
            part = sum(w * part[:, i : i + 1] for i, w in enumerate(_LUMA))
        if x.dtype == torch.uint8:
            part = part.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        out.append(part.contiguous())
    return torch.cat(out)


def _subset(raw: RawDataset, fraction: float) -> RawDataset:
    """A class-balanced share of the training set: per class, the first ``max(1, round(fraction * n_c))`` of one
    fixed permutation of its examples (so smaller subsets lie in larger ones)."""
    generator = torch.Generator().manual_seed(1)
    y = raw.train_y.long()
    chosen = []
    for c in range(raw.num_classes):
        index = (y == c).nonzero().flatten()
        if len(index):
            order = index[torch.randperm(len(index), generator=generator)]
            chosen.append(order[: max(1, round(fraction * len(index)))])
    index = torch.sort(torch.cat(chosen)).values
    return dataclasses.replace(raw, train_x=raw.train_x[index], train_y=raw.train_y[index])


def _permute(x: Tensor, seed: int) -> Tensor:
    flat = x.flatten(2) if x.dim() == 4 else x
    perm = torch.randperm(flat.shape[-1], generator=torch.Generator().manual_seed(seed))
    return flat[..., perm].reshape(x.shape).contiguous()


def derive(raw: RawDataset, options: dict, name: str = "data set") -> RawDataset:
    """``raw`` transformed by the derived-task ``options`` (see the module's docstring); ``raw`` itself is
    left as it is. ``name`` is used in error messages."""
    if not options:
        return raw
    raw = hold_out_test(raw)
    if "classes" in options:
        raw = _select_classes(raw, options["classes"], name)
    if "half" in options:
        raw = _half(raw, options["half"])
    if "subset" in options:
        raw = _subset(raw, options["subset"])
    if "shape" in options:
        raw = dataclasses.replace(
            raw,
            train_x=_resize(raw.train_x, options["shape"], name),
            test_x=_resize(raw.test_x, options["shape"], name),
        )
    if "permute" in options:  # crops and flips of scrambled pixels mean nothing: no augmentation
        raw = dataclasses.replace(
            raw,
            train_x=_permute(raw.train_x, options["permute"]),
            test_x=_permute(raw.test_x, options["permute"]),
            crop_padding=0,
            flip=False,
        )
    if "augment" in options:
        padding, flip = options["augment"]
        if (padding or flip) and raw.train_x.dim() != 4:
            raise ValueError(f"{name}: augment=... crops and flips images; this data set holds vectors")
        raw = dataclasses.replace(raw, crop_padding=padding, flip=flip)
    return raw
