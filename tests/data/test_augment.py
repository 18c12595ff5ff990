"""Augmentation on tensors: random crop with padding and horizontal flip."""

import pytest
import torch

from lth_sparse.data import DATASETS, RandomCropFlip, RawDataset, load_dataset


def batch(n=16, c=3, h=8, w=8):
    return torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w)


def test_crop_and_flip_keep_shape_and_are_reproducible_with_a_generator():
    x = batch()
    augment = RandomCropFlip(padding=4, flip=True)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    c = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)  # it does change the inputs
    assert torch.equal(x, batch())  # and leaves the batch it was given alone


def test_each_output_is_a_shifted_window_of_the_padded_input():
    x = batch(n=32, c=2, h=6, w=5)
    fill = torch.tensor([-1.0, -2.0])
    out = RandomCropFlip(padding=2, flip=False, fill=fill)(x, torch.Generator().manual_seed(0))
    padded = fill.view(1, 2, 1, 1).expand(32, 2, 10, 9).clone()
    padded[:, :, 2:8, 2:7] = x
    offsets = set()
    for i in range(32):
        windows = [(dy, dx) for dy in range(5) for dx in range(5)]
        matches = [(dy, dx) for dy, dx in windows if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 5])]
        assert len(matches) == 1, f"example {i} is not a window of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets vary between examples


def test_flip_alone_mirrors_about_half_the_examples():
    x = batch(n=200, c=1, h=2, w=3)
    out = RandomCropFlip(padding=0, flip=True)(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(200)]
    kept = [torch.equal(out[i], x[i]) for i in range(200)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 70 < sum(flipped) < 130


def test_crop_without_flip_never_mirrors():
    # Rows 0..7 hold increasing values left to right; a crop keeps that order, a flip would reverse it.
    x = torch.arange(8.0).expand(64, 1, 8, 8).contiguous()
    out = RandomCropFlip(padding=4, flip=False, fill=torch.tensor([-100.0]))(x, torch.Generator().manual_seed(0))
    row = out[:, 0, :, :]
    real = row > -100
    diffs = (row[:, :, 1:] - row[:, :, :-1])[real[:, :, 1:] & real[:, :, :-1]]
    assert (diffs == 1).all()


def raw_images(data_dir, download, crop_padding, flip):
    x = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    return RawDataset(x, torch.arange(40) % 2, x[:10], torch.arange(10) % 2, 2, crop_padding=crop_padding, flip=flip)


def test_datasets_get_their_augmentation_with_black_padding(monkeypatch, tmp_path):
    monkeypatch.setitem(DATASETS, "cifar-like", lambda d, dl: raw_images(d, dl, 4, True))
    monkeypatch.setitem(DATASETS, "plain", lambda d, dl: raw_images(d, dl, 0, False))
    data = load_dataset("cifar-like", data_dir=tmp_path)
    assert isinstance(data.augment, RandomCropFlip) and data.augment.padding == 4 and data.augment.flip
    black = (torch.zeros(3) - torch.tensor(data.mean)) / torch.tensor(data.std)
    assert torch.allclose(data.augment.fill, black)
    assert load_dataset("plain", data_dir=tmp_path).augment is None


def test_invalid_input_is_rejected():
    with pytest.raises(ValueError, match="padding"):
        RandomCropFlip(padding=-1)
    with pytest.raises(ValueError, match="batch"):
        RandomCropFlip()(torch.zeros(3, 8, 8), None)
