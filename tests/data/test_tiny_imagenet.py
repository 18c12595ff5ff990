"""Tiny ImageNet from its image-folder layout, on a few JPEGs written here."""

import numpy as np
import pytest
import torch

from lth_sparse.data import load_dataset

Image = pytest.importorskip("PIL.Image")


def write_tiny_imagenet(root, rng, size=8):
    """Two classes of three training images each; three val images, one greyscale."""
    expected_test = []
    for wnid in ("n02", "n01"):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{wnid}_{i}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, (wnid, mode) in enumerate([("n02", "RGB"), ("n01", "L"), ("n02", "RGB")]):
        shape = (size, size, 3) if mode == "RGB" else (size, size)
        path = root / "val" / "images" / f"val_{i}.JPEG"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
        with Image.open(path) as image:
            expected_test.append(np.asarray(image.convert("RGB")))
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t{size}\t{size}")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return np.stack(expected_test)


def test_tiny_imagenet_reads_the_image_folder_and_caches_it(tmp_path):
    expected = write_tiny_imagenet(tmp_path / "tiny-imagenet-200", np.random.default_rng(0))
    data = load_dataset("tiny-imagenet", data_dir=tmp_path, download=False, val_fraction=0.5)
    assert data.num_classes == 2 and data.input_shape == (3, 8, 8)
    assert (len(data.train), len(data.val), len(data.test)) == (3, 3, 3)
    assert data.test.y.tolist() == [1, 0, 1]  # classes are the sorted wnids: n01 -> 0, n02 -> 1
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    pixels = ((data.test.x * std + mean) * 255).round().to(torch.uint8)
    assert torch.equal(pixels, torch.from_numpy(expected).permute(0, 3, 1, 2))
    assert data.augment is not None and data.augment.flip
    cache = list((tmp_path / "lth_sparse_cache").glob("tiny-imagenet*.pt"))
    assert len(cache) == 1
    again = load_dataset("tiny-imagenet", data_dir=tmp_path, download=False, val_fraction=0.5)
    assert torch.equal(again.train.x, data.train.x)


def test_tiny_imagenet_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="tiny-imagenet-200.zip"):
        load_dataset("tiny-imagenet", data_dir=tmp_path)
