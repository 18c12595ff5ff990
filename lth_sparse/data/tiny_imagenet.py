"""Tiny ImageNet (the CS231n 200-class subset of ImageNet at 64x64).

Not downloadable through torchvision: unzip ``tiny-imagenet-200.zip`` (from
http://cs231n.stanford.edu/tiny-imagenet-200.zip) into ``data_dir``. The layout read is

    <root>/train/<wnid>/images/*.JPEG
    <root>/val/images/*.JPEG
    <root>/val/val_annotations.txt      (file name, wnid, box; tab-separated)

with ``<root>`` either ``data_dir/tiny-imagenet-200`` or ``data_dir`` itself. The
unlabelled ``test/`` folder is not used: the labelled ``val/`` folder is the test
set, and the validation split comes from ``train/`` like every other dataset's.
Decoding the 110,000 JPEGs takes a while, so the uint8 tensors are cached under
``data_dir`` after the first load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .cache import cached_tensors
from .dataset import RawDataset
from .registry import register_dataset

__all__ = ["find_tiny_imagenet"]


def find_tiny_imagenet(data_dir: Path) -> Path | None:
    """The Tiny ImageNet root under ``data_dir``, or None."""
    for root in (data_dir / "tiny-imagenet-200", data_dir):
        if (root / "train").is_dir() and (root / "val" / "val_annotations.txt").is_file():
            return root
    return None


def _read_images(paths: list[Path]) -> Tensor:
    from PIL import Image

    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB")))  # some images are greyscale
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"Tiny ImageNet images must all have one size, found {sorted(shapes)}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _decode(root: Path) -> dict[str, Tensor]:
    wnids = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    class_of = {wnid: i for i, wnid in enumerate(wnids)}
    train_paths, train_labels = [], []
    for wnid in wnids:
        for path in sorted((root / "train" / wnid / "images").glob("*.JPEG")):
            train_paths.append(path)
            train_labels.append(class_of[wnid])
    test_paths, test_labels = [], []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        if not line.strip():
            continue
        file_name, wnid = line.split("\t")[:2]
        if wnid not in class_of:
            raise ValueError(f"{root / 'val' / 'val_annotations.txt'}: class {wnid} has no train/ folder")
        test_paths.append(root / "val" / "images" / file_name)
        test_labels.append(class_of[wnid])
    if not train_paths:
        raise FileNotFoundError(f"no training images under {root / 'train'}/<wnid>/images/*.JPEG")
    return {
        "train_x": _read_images(train_paths),
        "train_y": torch.tensor(train_labels, dtype=torch.int64),
        "test_x": _read_images(test_paths),
        "test_y": torch.tensor(test_labels, dtype=torch.int64),
        "num_classes": torch.tensor(len(wnids)),
    }


@register_dataset("tiny-imagenet")
def load_tiny_imagenet(data_dir: Path, download: bool) -> RawDataset:
    """Tiny ImageNet: 100,000 training and 10,000 test images, (3, 64, 64), 200
    classes (as many as ``train/`` has folders); random crop (4-pixel padding) and
    horizontal flip for training, as for CIFAR."""
    root = find_tiny_imagenet(data_dir)
    if root is None:
        raise FileNotFoundError(
            f"Tiny ImageNet was not found under {data_dir} (looked for train/ and val/val_annotations.txt "
            f"in {data_dir / 'tiny-imagenet-200'} and {data_dir}). It cannot be downloaded automatically: "
            "get http://cs231n.stanford.edu/tiny-imagenet-200.zip on a machine that is online, unzip it "
            "into the data dir, and pass that as data_dir / --data-dir."
        )
    tensors = cached_tensors(data_dir, f"tiny-imagenet-v1-{root.name}", lambda: _decode(root))
    return RawDataset(
        train_x=tensors["train_x"],
        train_y=tensors["train_y"],
        test_x=tensors["test_x"],
        test_y=tensors["test_y"],
        num_classes=int(tensors["num_classes"]),
        crop_padding=4,
        flip=True,
    )
