"""load_dataset: the seeded split, train_size, normalisation, batching and bad input,
on a synthetic dataset registered for the test, and on the two offline datasets."""

import math

import pytest
import torch

from lth_sparse.data import DATASETS, RawDataset, Split, available_datasets, batches, load_dataset

N_TRAIN, N_TEST = 100, 30


def synthetic(data_dir, download):
    """Example i of the training set is a 2x3x3 image holding i (channel 0) and
    2 i + 50 (channel 1), so a normalised example can be traced back to its index."""
    index = torch.arange(N_TRAIN, dtype=torch.float32).view(-1, 1, 1, 1)
    train_x = torch.cat([index, 2 * index + 50], dim=1).expand(-1, 2, 3, 3).contiguous()
    test_index = torch.arange(N_TEST, dtype=torch.float32).view(-1, 1, 1, 1) + 1000
    test_x = torch.cat([test_index, test_index], dim=1).expand(-1, 2, 3, 3).contiguous()
    return RawDataset(train_x, torch.arange(N_TRAIN) % 4, test_x, torch.arange(N_TEST) % 4, num_classes=4)


@pytest.fixture
def registered(monkeypatch, tmp_path):
    monkeypatch.setitem(DATASETS, "synthetic", synthetic)
    return tmp_path


def example_ids(data, split) -> list[int]:
    """The training-set index of each example of ``split`` (undoing the normalisation)."""
    raw_channel0 = split.x[:, 0, 0, 0] * data.std[0] + data.mean[0]
    return [round(v) for v in raw_channel0.tolist()]


def test_the_split_is_the_seeded_random_split_of_the_training_set(registered):
    data = load_dataset("synthetic", data_dir=registered, seed=3)
    train, val = example_ids(data, data.train), example_ids(data, data.val)
    assert (len(train), len(val), len(data.test)) == (80, 20, N_TEST)
    assert sorted(train + val) == list(range(N_TRAIN))  # disjoint and complete
    expected = torch.utils.data.random_split(range(N_TRAIN), [0.8, 0.2], generator=torch.Generator().manual_seed(3))
    assert train == list(expected[0].indices) and val == list(expected[1].indices)
    assert torch.equal(data.train.y, torch.tensor(train) % 4)
    assert data.num_classes == 4 and data.input_shape == (2, 3, 3) and data.augment is None


def test_same_seed_same_split_different_seed_different_split(registered):
    a = load_dataset("synthetic", data_dir=registered, seed=0)
    b = load_dataset("synthetic", data_dir=registered, seed=0)
    c = load_dataset("synthetic", data_dir=registered, seed=1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert sorted(example_ids(a, a.val)) != sorted(example_ids(c, c.val))


@pytest.mark.parametrize("val_fraction, n_val", [(0.0, 0), (0.25, 25), (0.333, 33)])
def test_val_fraction_sets_the_validation_size(registered, val_fraction, n_val):
    data = load_dataset("synthetic", data_dir=registered, val_fraction=val_fraction)
    assert len(data.val) == n_val and len(data.train) == N_TRAIN - n_val
    assert data.val.x.shape == (n_val, 2, 3, 3) and data.val.y.dtype == torch.int64


def test_train_size_is_a_seeded_subset_of_the_training_split(registered):
    full = load_dataset("synthetic", data_dir=registered, seed=5)
    small = load_dataset("synthetic", data_dir=registered, seed=5, train_size=10)
    again = load_dataset("synthetic", data_dir=registered, seed=5, train_size=10)
    assert len(small.train) == 10 and len(small.val) == len(full.val)
    assert set(example_ids(small, small.train)) <= set(example_ids(full, full.train))
    assert torch.equal(small.train.x, again.train.x)
    # Normalisation comes from the whole training split, so inputs do not depend on train_size.
    assert small.mean == full.mean and torch.equal(small.val.x, full.val.x)
    assert torch.equal(small.train.x, full.train.x[:10]), "the first train_size examples of the split"
    for split in (small.train.x, small.train.y):  # its own memory, not a view holding the whole split
        assert split.untyped_storage().nbytes() == split.numel() * split.element_size()


def test_normalisation_uses_per_channel_statistics_of_the_training_split(registered):
    data = load_dataset("synthetic", data_dir=registered, seed=2)
    train_ids = torch.tensor(example_ids(data, data.train), dtype=torch.float64)
    expected_mean = (train_ids.mean().item(), (2 * train_ids + 50).mean().item())
    expected_std = (train_ids.std(correction=0).item(), (2 * train_ids + 50).std(correction=0).item())
    assert data.mean == pytest.approx(expected_mean, rel=1e-5)
    assert data.std == pytest.approx(expected_std, rel=1e-5)
    per_channel_mean = data.train.x.mean(dim=(0, 2, 3))
    per_channel_std = data.train.x.std(dim=(0, 2, 3), correction=0)
    assert torch.allclose(per_channel_mean, torch.zeros(2), atol=1e-5)
    assert torch.allclose(per_channel_std, torch.ones(2), atol=1e-5)
    # The test set gets the same affine map: raw value 1000 -> (1000 - mean) / std.
    assert data.test.x[0, 0, 0, 0].item() == pytest.approx((1000 - expected_mean[0]) / expected_std[0], rel=1e-5)
    assert data.train.x.dtype == torch.float32


@pytest.mark.parametrize("shape", [(300, 3, 5, 4), (200, 17), (50, 1, 2, 2)])
def test_uint8_statistics_are_the_exact_std_and_mean_of_x_over_255(shape):
    from lth_sparse.data.dataset import _uint8_std_mean

    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    if len(shape) == 4:
        x[:, 0] = 7  # a constant channel: std 0 (split_and_normalise leaves it unscaled)
    dims = (0, 2, 3) if len(shape) == 4 else (0, 1)
    std64, mean64 = torch.std_mean(x.double() / 255, dim=dims, correction=0, keepdim=True)
    std, mean = _uint8_std_mean(x)
    assert std.dtype == mean.dtype == torch.float32 and std.shape == std64.shape and mean.shape == mean64.shape
    # exact up to the one rounding to float32 (float64's own sums are off by ~1e-16 at most)
    assert torch.equal(mean, mean64.float()) and torch.allclose(std.double(), std64, rtol=1e-7, atol=1e-12)
    if len(shape) == 4:
        assert std[0, 0, 0, 0] == 0 and mean[0, 0, 0, 0] == pytest.approx(7 / 255)


def test_uint8_images_are_normalised_by_their_training_statistics(monkeypatch, tmp_path):
    def uint8_set(data_dir, download):
        g = torch.Generator().manual_seed(0)
        train_x = torch.randint(0, 256, (120, 2, 4, 4), dtype=torch.uint8, generator=g)
        test_x = torch.randint(0, 256, (20, 2, 4, 4), dtype=torch.uint8, generator=g)
        return RawDataset(train_x, torch.arange(120) % 3, test_x, torch.arange(20) % 3, num_classes=3)

    monkeypatch.setitem(DATASETS, "uint8set", uint8_set)
    data = load_dataset("uint8set", data_dir=tmp_path, seed=1)
    assert torch.allclose(data.train.x.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(data.train.x.std(dim=(0, 2, 3), correction=0), torch.ones(2), atol=1e-5)
    raw = uint8_set(None, False).test_x[0, 1, 0, 0].item() / 255
    assert data.test.x[0, 1, 0, 0].item() == pytest.approx((raw - data.mean[1]) / data.std[1], rel=1e-5)


def test_bad_arguments_raise_value_errors_naming_them(registered):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet-1k'.*fashion-mnist.*mnist1d"):
        load_dataset("imagenet-1k")
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="val_fraction"):
            load_dataset("synthetic", data_dir=registered, val_fraction=bad)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="train_size"):
            load_dataset("synthetic", data_dir=registered, train_size=bad)
    with pytest.raises(ValueError, match="train_size=81 is larger than the 80"):
        load_dataset("synthetic", data_dir=registered, train_size=81)


def test_registry_lists_every_dataset_of_the_design():
    assert set(available_datasets()) >= {
        "fashion-mnist",
        "mnist",
        "kmnist",
        "emnist",
        "cifar10",
        "cifar100",
        "svhn",
        "tiny-imagenet",
        "digits",
        "mnist1d",
    }


def test_batches_without_shuffle_cover_the_split_in_order():
    split = Split(torch.arange(10.0).view(10, 1), torch.arange(10))
    got = list(batches(split, 4, shuffle=False))
    assert [len(y) for _, y in got] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in got]), torch.arange(10))
    assert [len(y) for _, y in batches(split, 4, shuffle=False, drop_last=True)] == [4, 4]


def test_batches_with_shuffle_are_a_seeded_permutation():
    split = Split(torch.arange(10.0).view(10, 1), torch.arange(10))

    def epoch(seed):
        return torch.cat([y for _, y in batches(split, 3, shuffle=True, generator=torch.Generator().manual_seed(seed))])

    assert sorted(epoch(0).tolist()) == list(range(10))
    assert torch.equal(epoch(0), epoch(0))
    assert not torch.equal(epoch(0), epoch(1))
    for x, y in batches(split, 3, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert torch.equal(x[:, 0].long(), y)  # inputs and labels stay paired


def test_batches_apply_the_augmentation_with_the_generator():
    split = Split(torch.zeros(6, 1), torch.arange(6))
    seen = []

    def augment(x, generator):
        seen.append(generator)
        return x + 1

    g = torch.Generator().manual_seed(0)
    xs = [x for x, _ in batches(split, 4, shuffle=True, generator=g, augment=augment)]
    assert all(torch.equal(x, torch.ones_like(x)) for x in xs) and seen == [g, g]
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(split, 0, shuffle=False))


def test_digits_loads_offline_with_a_fixed_held_out_test_set():
    pytest.importorskip("sklearn")
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=1)
    assert (len(a.train) + len(a.val), len(a.test)) == (1438, 359)
    assert len(a.val) == math.floor(1438 * 0.2)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10 and a.augment is None
    # The test set does not move with the run's seed (so runs stay comparable); the split does.
    assert torch.equal(a.test.y, b.test.y) and not torch.equal(a.train.y, b.train.y)
    assert set(a.train.y.tolist()) == set(range(10))


def test_mnist1d_is_generated_offline_and_cached(tmp_path):
    pytest.importorskip("mnist1d")
    import random

    import numpy as np

    random.seed(123)
    np.random.seed(123)
    expected_python, expected_numpy = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    data = load_dataset("mnist1d", data_dir=tmp_path, seed=0)
    # Generation seeds the global generators internally; the caller's streams are left alone.
    assert (random.random(), np.random.rand()) == (expected_python, expected_numpy)
    assert (len(data.train), len(data.val), len(data.test)) == (3200, 800, 1000)
    assert data.input_shape == (40,) and data.num_classes == 10 and data.train.x.shape == (3200, 40)
    assert abs(data.train.x.mean().item()) < 1e-5 and abs(data.train.x.std(correction=0).item() - 1) < 1e-4
    assert (tmp_path / "lth_sparse_cache" / "mnist1d-default-v1.pt").is_file()
    cached = load_dataset("mnist1d", data_dir=tmp_path, seed=0)
    assert torch.equal(cached.train.x, data.train.x) and torch.equal(cached.test.y, data.test.y)


def test_the_cache_is_written_once_and_rebuilt_when_unreadable(tmp_path):
    from lth_sparse.data.cache import cached_tensors

    builds = []

    def build():
        builds.append(1)
        return {"x": torch.arange(5)}

    assert torch.equal(cached_tensors(tmp_path, "k-v1", build)["x"], torch.arange(5))
    assert torch.equal(cached_tensors(tmp_path, "k-v1", build)["x"], torch.arange(5))
    assert len(builds) == 1
    (tmp_path / "lth_sparse_cache" / "k-v1.pt").write_bytes(b"truncated")
    assert torch.equal(cached_tensors(tmp_path, "k-v1", build)["x"], torch.arange(5)) and len(builds) == 2


def test_loading_leaves_the_loaders_tensors_alone(monkeypatch, tmp_path):
    kept = synthetic(tmp_path, False)
    before = kept.train_x.clone()
    monkeypatch.setitem(DATASETS, "kept", lambda data_dir, download: kept)
    first = load_dataset("kept", data_dir=tmp_path)
    second = load_dataset("kept", data_dir=tmp_path)
    assert torch.equal(kept.train_x, before)
    assert torch.equal(first.train.x, second.train.x)
