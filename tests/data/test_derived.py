"""Derived tasks (NAME:half=a, :classes=..., :shape=CxHxW, :permute=SEED): what each option must do, on data
whose examples can be traced back, and on the real 8x8 digits."""

import pytest
import torch

from lth_sparse.data import DATASETS, RawDataset, load_dataset
from lth_sparse.data.derived import canonical_name, derive, parse_task

N_TRAIN, N_TEST = 101, 40


def traceable(channels=1, dtype=torch.uint8):
    """Example i of the training set is an image whose first pixel holds i % 200 and whose class is i % 5;
    test example j holds 200 + j % 50."""
    train_x = torch.zeros(N_TRAIN, channels, 4, 4, dtype=dtype)
    train_x[:, :, 0, 0] = (torch.arange(N_TRAIN) % 200).to(dtype).view(-1, 1)
    train_x[:, :, 1:, :] = torch.randint(
        0, 256, (N_TRAIN, channels, 3, 4), generator=torch.Generator().manual_seed(1), dtype=torch.int64
    ).to(dtype)
    test_x = torch.zeros(N_TEST, channels, 4, 4, dtype=dtype)
    test_x[:, :, 0, 0] = (200 + torch.arange(N_TEST) % 50).to(dtype).view(-1, 1)
    return RawDataset(
        train_x, torch.arange(N_TRAIN) % 5, test_x, torch.arange(N_TEST) % 5, num_classes=5, crop_padding=1, flip=True
    )


def test_options_are_parsed_checked_and_named_canonically():
    assert parse_task("Fashion-MNIST:half=a:permute=3") == ("fashion-mnist", {"half": "a", "permute": 3})
    assert parse_task("mnist:classes=2,0:shape=3x32x32") == ("mnist", {"classes": (2, 0), "shape": (3, 32, 32)})
    assert canonical_name("FMNIST:permute=03:half=a") == "fmnist:half=a:permute=3"
    for name, message in [
        ("mnist:halves=a", "unknown derived-task option 'halves'; options: classes, half"),
        ("mnist:half=c", "half=... is a or b"),
        ("mnist:half", "OPTION=VALUE"),
        ("mnist:shape=28x28", "CxHxW"),
        ("mnist:classes=1,1", "distinct"),
        ("mnist:classes=x", "class indices"),
        ("mnist:permute=one", "integer seed"),
        ("mnist:half=a:half=b", "given twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_task(name)


def test_the_halves_are_disjoint_stratified_and_cover_the_training_set():
    raw = traceable()
    a, b = derive(raw, {"half": "a"}), derive(raw, {"half": "b"})
    ids_a, ids_b = a.train_x[:, 0, 0, 0].tolist(), b.train_x[:, 0, 0, 0].tolist()
    assert not set(ids_a) & set(ids_b) and sorted(ids_a + ids_b) == list(range(N_TRAIN))
    for c in range(5):  # each class split in two (to one example)
        assert abs(int((a.train_y == c).sum()) - int((b.train_y == c).sum())) <= 1
    assert torch.equal(a.test_x, raw.test_x) and torch.equal(b.test_y, raw.test_y), "each keeps the whole test set"
    assert torch.equal(derive(raw, {"half": "a"}).train_x, a.train_x), "the halves are fixed"


def test_classes_keep_those_classes_relabelled_in_the_order_given():
    raw = traceable()
    sub = derive(raw, {"classes": (3, 1)})
    assert sub.num_classes == 2
    ids = sub.train_x[:, 0, 0, 0].long()
    assert torch.equal(ids % 5, torch.where(sub.train_y == 0, 3, 1)), "class 3 -> 0, class 1 -> 1"
    assert len(sub.train_y) == int(((raw.train_y == 3) | (raw.train_y == 1)).sum())
    assert set(sub.test_y.tolist()) == {0, 1} and len(sub.test_y) == 16
    with pytest.raises(ValueError, match="beyond the data set's 5"):
        derive(raw, {"classes": (0, 5)})
    with pytest.raises(ValueError, match="at least two classes"):
        derive(raw, {"classes": (2,)})


def test_shape_resizes_and_converts_channels():
    raw = traceable()
    rgb = derive(raw, {"shape": (3, 8, 8)})
    assert rgb.train_x.shape == (N_TRAIN, 3, 8, 8) and rgb.train_x.dtype == torch.uint8
    assert torch.equal(rgb.train_x[:, 0], rgb.train_x[:, 2]), "grayscale to RGB repeats the channel"
    flat = RawDataset(
        torch.full((3, 1, 6, 6), 77, dtype=torch.uint8),
        torch.zeros(3, dtype=torch.int64),
        torch.full((2, 1, 6, 6), 77, dtype=torch.uint8),
        torch.zeros(2, dtype=torch.int64),
        1,
    )
    assert (derive(flat, {"shape": (1, 3, 5)}).train_x == 77).all(), "a constant image stays constant"
    colour = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    colour[:, 0], colour[:, 1], colour[:, 2] = 100, 200, 50
    gray = derive(
        RawDataset(colour, torch.zeros(2, dtype=torch.int64), colour, torch.zeros(2, dtype=torch.int64), 1),
        {"shape": (1, 2, 2)},
    )
    assert (gray.train_x == round(0.299 * 100 + 0.587 * 200 + 0.114 * 50)).all(), "luma weights"
    vectors = RawDataset(
        torch.randn(10, 40),
        torch.zeros(10, dtype=torch.int64),
        torch.randn(4, 40),
        torch.zeros(4, dtype=torch.int64),
        1,
    )
    with pytest.raises(ValueError, match="holds vectors of \\(40,\\) features"):
        derive(vectors, {"shape": (1, 28, 28)})
    four = RawDataset(
        torch.zeros(2, 4, 2, 2),
        torch.zeros(2, dtype=torch.int64),
        torch.zeros(1, 4, 2, 2),
        torch.zeros(1, dtype=torch.int64),
        1,
    )
    with pytest.raises(ValueError, match="4 channels"):
        derive(four, {"shape": (3, 2, 2)})


def test_permute_is_one_fixed_pixel_permutation_for_both_sets():
    raw = traceable(channels=3)
    p = derive(raw, {"permute": 7})
    assert p.crop_padding == 0 and not p.flip, "no augmentation of scrambled pixels"
    for x, y in ((raw.train_x, p.train_x), (raw.test_x, p.test_x)):
        assert torch.equal(x.flatten(2).sort(dim=2).values, y.flatten(2).sort(dim=2).values)
    # one permutation of the 16 positions, drawn from the seed, for every example, channel and set
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(perm, torch.arange(16))
    assert torch.equal(p.train_x.flatten(2), raw.train_x.flatten(2)[..., perm])
    assert torch.equal(p.test_x.flatten(2), raw.test_x.flatten(2)[..., perm])
    assert torch.equal(derive(raw, {"permute": 7}).train_x, p.train_x)
    assert not torch.equal(derive(raw, {"permute": 8}).train_x, p.train_x)


def test_a_derived_task_keeps_the_source_test_set_and_split(monkeypatch, tmp_path):
    # digits has no official test set: the derived task must be tested on the same held-out examples
    plain = load_dataset("digits", seed=3)
    same = load_dataset("digits:classes=0,1,2,3,4,5,6,7,8,9", seed=3)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(plain, split).x, getattr(same, split).x), split
        assert torch.equal(getattr(plain, split).y, getattr(same, split).y), split
    assert same.name == "digits:classes=0,1,2,3,4,5,6,7,8,9"
    big = load_dataset("digits:shape=1x28x28", seed=3)
    assert big.input_shape == (1, 28, 28) and torch.equal(big.test.y, plain.test.y)
    monkeypatch.setitem(DATASETS, "traceable", lambda root, download: traceable())
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*derived tasks NAME:OPTION=VALUE"):
        load_dataset("nope", data_dir=tmp_path)
    assert load_dataset("traceable:classes=0,4", data_dir=tmp_path).num_classes == 2


def test_imp_runs_on_a_derived_task_with_its_output_layer_sized_to_it(tmp_path):
    from lth_sparse.pipelines import imp

    config = imp.ImpConfig(
        dataset="digits:classes=0,1,2", model="mlp", model_options=(("width", 16),), rounds=1, epochs=1, lr=0.05
    )
    summary = imp.run(config, tmp_path / "run", progress=False, log=lambda s: None, plots=False)
    final = torch.load(tmp_path / "run" / "seed_0" / "round_01" / "final.pt")
    last = [k for k in final if k.endswith("weight")][-1]
    assert final[last].shape[0] == 3 and summary["rounds"][1]["test_accuracy"] > 1 / 3


def test_augment_sets_the_training_augmentation():
    from lth_sparse.data.derived import canonical_name

    raw = traceable()
    assert (derive(raw, {"augment": (4, True)}).crop_padding, derive(raw, {"augment": (4, True)}).flip) == (4, True)
    assert parse_task("x:augment=crop2+flip")[1] == {"augment": (2, True)}
    assert parse_task("x:augment=none")[1] == {"augment": (0, False)}
    assert canonical_name("x:augment=crop2+flip") == "x:augment=flip+crop2"
    permuted = derive(raw, {"permute": 1, "augment": (0, True)})
    assert permuted.flip and permuted.crop_padding == 0, "asked for: applied after the permutation"
    for bad in ("crop", "crop0", "flip+flip", "rotate"):
        with pytest.raises(ValueError, match="augment=... is none, flip, cropP"):
            parse_task(f"x:augment={bad}")
    data = load_dataset("digits:augment=flip+crop1")
    assert data.augment is not None and data.augment.padding == 1 and data.augment.flip
    assert load_dataset("digits:augment=none").augment is None


def test_a_class_balanced_subset_of_the_training_set_nested_in_larger_ones():
    from lth_sparse.data import load_dataset

    full = load_dataset("digits", val_fraction=0)
    one = load_dataset("digits:subset=0.1", val_fraction=0)
    two = load_dataset("digits:subset=0.2", val_fraction=0)
    counts = torch.bincount(full.train.y, minlength=10)
    assert torch.equal(torch.bincount(one.train.y, minlength=10), (0.1 * counts.double()).round().long().clamp_min(1))
    assert len(two.train) > len(one.train) and len(one.test) == len(full.test)
    # nested: examples identified by their position (x holds it)
    ids = torch.arange(200, dtype=torch.float32).unsqueeze(1)
    raw = RawDataset(
        train_x=ids, train_y=torch.arange(200) % 4, test_x=ids[:8], test_y=torch.arange(8) % 4, num_classes=4
    )
    small = set(derive(raw, {"subset": 0.1}).train_x.flatten().tolist())
    large = set(derive(raw, {"subset": 0.3}).train_x.flatten().tolist())
    assert len(small) == 20 and len(large) == 60 and small < large
    tiny = load_dataset("digits:subset=0.0001", val_fraction=0)
    assert torch.equal(torch.bincount(tiny.train.y, minlength=10), torch.ones(10, dtype=torch.long)), "one a class"
    with pytest.raises(ValueError, match="subset"):
        parse_task("digits:subset=1.5")
