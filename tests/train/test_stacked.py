"""``lth_sparse.train.train_stacked``: each member of a stack trains as ``train`` trains it alone (every model of
the registry, masks, BatchNorm, SGD and Adam, per-member learning rates), bit for bit where the kernels allow,
independently of the other members; and the checks of what members must share."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import torch.nn as nn

from lth_sparse.data import Dataset, Split
from lth_sparse.masks import Masks
from lth_sparse.models import create_model
from lth_sparse.train import TrainConfig, train, train_stacked
from tests.tolerances import assert_close
from tests.train.conftest import same_state, weights

SHAPE = (3, 16, 16)  # the smallest input every registry model takes (VGG pools four times)
BATCH = 16
TRAIN = 48  # 3 iterations per epoch


def tiny_data(seed: int, shape: tuple[int, ...] = SHAPE, classes: int = 10) -> Dataset:
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        return Split(torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g))

    return Dataset("tiny", split(TRAIN), split(32), split(32), classes, shape, augment=None)


def member(name: str, seed: int, density: float = 0.6, shape=SHAPE, **options) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(name, shape, 10, **options)
    g = torch.Generator().manual_seed(100 + seed)
    masks = Masks({n: torch.rand(m.shape, generator=g) < density for n, m in Masks.from_model(model).items()})
    masks.apply_to(model)
    return model


def run_both(models, datas, cfgs, seeds, **kwargs):
    """Each member trained alone by ``train`` and all of them by ``train_stacked``, both snapshotting iteration 1:
    (models alone, snapshots alone, results alone, models stacked, snapshots stacked, results stacked)."""
    alone = [copy.deepcopy(m) for m in models]
    snaps_alone = [{} for _ in models]
    results_alone = [
        train(m, d, c, seed=s, progress=False, snapshot_at=[1], on_snapshot=snaps.__setitem__, **kwargs)
        for m, d, c, s, snaps in zip(alone, datas, cfgs, seeds, snaps_alone)
    ]
    snaps_stacked = [{} for _ in models]
    results_stacked = train_stacked(
        models,
        datas,
        cfgs,
        seeds=seeds,
        progress=False,
        snapshot_at=[1],
        on_snapshot=[snaps.__setitem__ for snaps in snaps_stacked],
        **kwargs,
    )
    return alone, snaps_alone, results_alone, models, snaps_stacked, results_stacked


def assert_states_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            assert_close(b[key], a[key]), key
        else:
            assert torch.equal(a[key], b[key]), key


# Every model of the registry at a size that trains in a blink; SGD with momentum, members of their own lr.
REGISTRY = {
    "mlp": dict(depth=2, width=16),
    "lenet300": {},
    "lenet5": {},
    "conv2": {},
    "conv4": {},
    "conv6": {},
    "vgg11": {},
    "resnet20": dict(width=4),
}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_member_trains_as_it_trains_alone_on_every_model(name):
    # Convolutions sum otherwise stacked than alone (1e-7 apart): a ReLU whose input lies closer to zero than
    # that can open in one and not in the other, and VGG's BatchNorm over 1x1 maps makes that likely (the data
    # orders of seeds 3 and 4 do it at the first step). These orders open no such gate.
    cfgs = [TrainConfig(epochs=1, batch_size=BATCH, lr=lr, momentum=0.9) for lr in (0.01, 0.004)]
    models = [member(name, k, **REGISTRY[name]) for k in range(2)]
    datas = [tiny_data(0), tiny_data(1)]
    alone, snaps_alone, results_alone, stacked, snaps_stacked, results_stacked = run_both(
        models, datas, cfgs, seeds=[0, 1]
    )
    for k in range(2):
        assert_states_close(snaps_alone[k][1], snaps_stacked[k][1])  # after one step
        assert_states_close(weights(alone[k]), weights(stacked[k]))  # after one epoch
        assert results_stacked[k].iterations == results_alone[k].iterations
        assert results_stacked[k].val_loss == pytest.approx(results_alone[k].val_loss, rel=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        dict(optimizer="sgd", momentum=0.9, weight_decay=1e-3, nesterov=True),
        dict(optimizer="sgd", momentum=0.0),
        dict(optimizer="adam", weight_decay=1e-3),
        dict(optimizer="adamw", weight_decay=1e-2),
    ],
    ids=["sgd-nesterov-wd", "sgd", "adam", "adamw"],
)
@pytest.mark.parametrize("density", [0.6, 0.2], ids=["dense-update", "gathered-update"])
def test_mlp_members_are_bit_for_bit_their_own_training(options, density, monkeypatch):
    """The dense torch path of the masked layers sums as the stacked linear layers do: bit for bit, with
    different masks, learning rates, momenta and weight decays, a fully pruned layer, over two epochs; the
    optimizer updating whole weights (masks of density 0.6) or their kept entries alone (0.2)."""
    monkeypatch.setenv("LTH_SPARSE_BACKEND", "torch")
    shape = (1, 8, 8)
    adam = options["optimizer"] != "sgd"
    lrs = (1e-3, 3e-3, 2e-3) if adam else (0.05, 0.02, 0.1)
    per_member = [dict(lr=lr, weight_decay=options.get("weight_decay", 0) * k) for k, lr in enumerate(lrs)]
    if not adam and options["momentum"]:
        for k, extra in enumerate(per_member):
            extra["momentum"] = 0.5 + 0.2 * k
    base = {k: v for k, v in options.items() if k not in ("weight_decay", "momentum")}
    cfgs = [TrainConfig(epochs=2, batch_size=BATCH, **base, **extra) for extra in per_member]
    models = [member("mlp", k, density, shape=shape, depth=2, width=16) for k in range(3)]
    models[1].fc2.set_mask(torch.zeros_like(models[1].fc2.mask))  # a fully pruned layer
    datas = [tiny_data(k, shape) for k in range(3)]
    alone, snaps_alone, _, stacked, snaps_stacked, _ = run_both(models, datas, cfgs, seeds=[0, 1, 2])
    for k in range(3):
        assert same_state(snaps_alone[k][1], snaps_stacked[k][1]), k
        assert same_state(weights(alone[k]), weights(stacked[k])), k
    assert torch.count_nonzero(stacked[1].fc2.weight) == 0


def test_members_of_one_training_split_get_their_own_batches():
    """One gathering for the members of one training split gives each member the batches ``batches`` gives it
    alone, as the member-by-member stream does for members of their own splits."""
    from lth_sparse.data import batches
    from lth_sparse.train.loop import epoch_generators
    from lth_sparse.train.stacked import stacked_batches

    data = tiny_data(0, (2, 4, 4))
    copies = [dataclasses.replace(data, train=Split(data.train.x.clone(), data.train.y.clone())) for _ in range(3)]
    seeds = [4, 5, 6]
    for datas in ([data] * 3, copies):
        stream = list(stacked_batches(datas, 20, seeds, [None] * 3, epoch=1))
        assert len(stream) == 3  # 48 examples: batches of 20, 20 and 8
        for k, seed in enumerate(seeds):
            order, _ = epoch_generators(seed, None, 1, "cpu")
            alone = list(batches(data.train, 20, shuffle=True, generator=order, with_index=True))
            for (x, y, indices), (x_alone, y_alone, index_alone) in zip(stream, alone):
                assert torch.equal(x.view(len(y_alone), 3, 2, 4, 4)[:, k], x_alone)
                assert torch.equal(y[k], y_alone) and torch.equal(indices[k], index_alone)


@pytest.mark.parametrize("density", [0.3, 0.7])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_pruned_weights_stay_exactly_zero(optimizer, density):
    cfgs = [TrainConfig(epochs=1, batch_size=BATCH, optimizer=optimizer, lr=0.01, momentum=0.9, weight_decay=0.1)] * 2
    models = [member("lenet5", k, density=density) for k in range(2)]
    masks = [Masks.from_model(m) for m in models]
    with torch.no_grad():  # pruned weights written behind the masks' back: zero from the first step on
        models[0].fc1.weight.add_(1.0)
    train_stacked(models, [tiny_data(0)] * 2, cfgs, seeds=[0, 1], progress=False)
    for model, member_masks in zip(models, masks):
        for name, mask in member_masks.items():
            weight = model.get_parameter(name)
            assert torch.all(weight[~mask] == 0), name
            assert torch.count_nonzero(weight[mask]) > 0, name


@pytest.mark.parametrize(
    ("name", "options", "exact"),
    [("mlp", dict(depth=2, width=16), True), ("resnet20", dict(width=4), False)],
)
def test_a_member_trains_the_same_alone_and_in_a_stack_of_three(name, options, exact):
    cfgs = [TrainConfig(epochs=1, batch_size=BATCH, lr=0.01 * (k + 1), momentum=0.9) for k in range(3)]
    models = [member(name, k, **options) for k in range(3)]
    single = copy.deepcopy(models[0])
    datas = [tiny_data(k) for k in range(3)]
    train_stacked([single], datas[:1], cfgs[:1], seeds=[5], progress=False)
    train_stacked(models, datas, cfgs, seeds=[5, 6, 7], progress=False)
    if exact:  # batched matrix products: each member's product is computed alone
        assert same_state(weights(single), weights(models[0]))
    else:  # a grouped convolution of one group or of three: other kernels
        assert_states_close(weights(single), weights(models[0]))


def test_records_metrics_and_snapshots_are_each_members(tmp_path):
    cfgs = [TrainConfig(epochs=2, batch_size=BATCH, lr=0.02, momentum=0.9, eval_every=2)] * 2
    models = [member("mlp", k, depth=1, width=8) for k in range(2)]
    datas = [tiny_data(0), tiny_data(1)]
    alone = [copy.deepcopy(m) for m in models]
    results_alone = [
        train(m, d, c, seed=s, metrics_path=tmp_path / f"alone{k}.jsonl", progress=False)
        for k, (m, d, c, s) in enumerate(zip(alone, datas, cfgs, [1, 2]))
    ]
    snapshots = [{}, {}]
    steps = [[], []]
    results = train_stacked(
        models,
        datas,
        cfgs,
        seeds=[1, 2],
        snapshot_at=[0, 4],
        on_snapshot=[snapshots[0].__setitem__, snapshots[1].__setitem__],
        metrics_paths=[tmp_path / "stacked0.jsonl", tmp_path / "stacked1.jsonl"],
        callbacks=[[steps[0].append], [steps[1].append]],
        progress=False,
    )
    for k in range(2):
        ours, theirs = results[k], results_alone[k]
        assert [h["iteration"] for h in ours.history] == [h["iteration"] for h in theirs.history] == [2, 4, 6]
        for a, b in zip(ours.history, theirs.history):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5), key
        assert ours.best_val_iteration == theirs.best_val_iteration
        assert ours.test_loss == pytest.approx(theirs.test_loss, rel=1e-5)
        lines = (tmp_path / f"stacked{k}.jsonl").read_text().splitlines()
        assert [json.loads(line)["iteration"] for line in lines] == [2, 4, 6]
        assert sorted(snapshots[k]) == [0, 4]
        assert [s.iteration for s in steps[k]] == list(range(1, 7))
        assert steps[k][0].output.shape == (BATCH, 10) and steps[k][0].index.shape == (BATCH,)
    # the state before any step is the member's own; the batches are the member's own order
    assert same_state(snapshots[1][0], weights(member("mlp", 1, depth=1, width=8)))
    assert not torch.equal(steps[0][0].index, steps[1][0].index)


# --- what members must share --------------------------------------------------------------------------------------


def test_members_of_other_architectures_are_refused():
    models = [member("mlp", 0, depth=1, width=8), member("mlp", 1, depth=1, width=16)]
    with pytest.raises(ValueError, match=r"member 1's architecture differs from member 0's.*fc1"):
        train_stacked(models, [tiny_data(0)] * 2, [TrainConfig(epochs=1, batch_size=BATCH)] * 2, seeds=[0, 1])
    models = [member("mlp", 0, depth=1, width=8), member("lenet300", 1)]
    with pytest.raises(ValueError, match="member 1's architecture"):
        train_stacked(models, [tiny_data(0)] * 2, [TrainConfig(epochs=1, batch_size=BATCH)] * 2, seeds=[0, 1])


@pytest.mark.parametrize(
    ("field", "other"),
    [("batch_size", 8), ("epochs", 2), ("optimizer", "adam"), ("schedule", "cosine"), ("precision", "bf16")],
)
def test_members_must_share_every_option_but_lr_momentum_and_weight_decay(field, other):
    models = [member("mlp", k, depth=1, width=8) for k in range(3)]
    base = TrainConfig(epochs=1, batch_size=BATCH)
    cfgs = [base, base, TrainConfig(**{**base.training_options(), field: other})]
    with pytest.raises(ValueError, match=rf"member 2's {field}={other!r} differs from member 0's"):
        train_stacked(models, [tiny_data(0)] * 3, cfgs, seeds=[0, 1, 2])


def test_fp16_and_bf16_are_refused():
    cfg = TrainConfig(epochs=1, batch_size=BATCH, precision="bf16")
    with pytest.raises(ValueError, match="fp32 only"):
        train_stacked([member("mlp", 0, depth=1, width=8)], [tiny_data(0)], [cfg], seeds=[0])


def test_masks_of_the_wrong_shape_are_refused():
    models = [member("mlp", k, depth=1, width=8) for k in range(2)]
    wrong = Masks({n: torch.ones(3, 3, dtype=torch.bool) for n in Masks.from_model(models[1])})
    cfgs = [TrainConfig(epochs=1, batch_size=BATCH)] * 2
    with pytest.raises(ValueError, match=r"member 1: mask 'fc1.weight' has shape \(3, 3\)"):
        train_stacked(models, [tiny_data(0)] * 2, cfgs, seeds=[0, 1], masks=[None, wrong])
    models[1].fc1.mask = torch.ones(3, 3, dtype=torch.bool)  # a buffer replaced behind the layer's back
    with pytest.raises(ValueError, match=r"member 1: the mask of fc1 has shape \(3, 3\)"):
        train_stacked(models, [tiny_data(0)] * 2, cfgs, seeds=[0, 1])


def test_members_need_inputs_of_one_shape_and_one_training_size():
    models = [member("mlp", k, depth=1, width=8, shape=(1, 8, 8)) for k in range(2)]
    cfgs = [TrainConfig(epochs=1, batch_size=BATCH)] * 2
    with pytest.raises(ValueError, match="member 1's train inputs have shape"):
        train_stacked(models, [tiny_data(0, (1, 8, 8)), tiny_data(1, (64,))], cfgs, seeds=[0, 1])
    short = tiny_data(1, (1, 8, 8))
    short.train = Split(short.train.x[:20], short.train.y[:20])
    with pytest.raises(ValueError, match="member 1 has 20 training examples"):
        train_stacked(models, [tiny_data(0, (1, 8, 8)), short], cfgs, seeds=[0, 1])
    with pytest.raises(ValueError, match="one entry per member"):
        train_stacked(models, [tiny_data(0, (1, 8, 8))] * 2, cfgs, seeds=[0])


# --- when stacking pays ---------------------------------------------------------------------------------------------


def test_the_recommended_stack_follows_the_measured_rule():
    from lth_sparse.train.stacked import MOST_MEMBERS, recommended_stack, stack_memory

    small = create_model("mlp", (2,), 4, depth=3, width=100)  # the planting hosts' size: overhead-bound
    assert recommended_stack(small, 32, "cpu", available_bytes=2**40) == MOST_MEMBERS
    assert recommended_stack(create_model("lenet300", (1, 28, 28), 10), 128, "cpu", available_bytes=2**40) == 1
    assert recommended_stack(create_model("conv2", (1, 8, 8), 10), 32, "cpu", available_bytes=2**40) == 1
    assert recommended_stack(small, 32, "cuda", available_bytes=2**40) == 1  # not measured there
    # bounded by memory: as many members as fit, at least one
    one = stack_memory(small, 32, 1)
    assert stack_memory(small, 32, 5) == 5 * one
    assert recommended_stack(small, 32, "cpu", available_bytes=5 * one + 1) == 5
    assert recommended_stack(small, 32, "cpu", available_bytes=one // 2) == 1
    assert recommended_stack(small, 32, "cpu") >= 1  # the system's available memory
