"""The public blocks of units (lth_sparse.pipelines.steps): a resumable step, a masked training, a pruning."""

import json

import pytest
import torch

from lth_sparse.data import load_dataset
from lth_sparse.integrity import read_done
from lth_sparse.masks import Masks
from lth_sparse.models import create_model
from lth_sparse.pipelines import imp, steps
from lth_sparse.pipelines.steps import prune_trained, run_step, train_masked
from lth_sparse.prune import prune_magnitude, prune_random, prune_structured
from lth_sparse.runs import Steps
from lth_sparse.train import TrainConfig, evaluate


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0, train_size=400)


def small_model(data, seed=0):
    torch.manual_seed(seed)
    return create_model("mlp", data.input_shape, data.num_classes, width=32)


CFG = TrainConfig(epochs=2, batch_size=50, lr=0.05)


def test_a_step_runs_once_and_a_failed_step_runs_again(tmp_path):
    store = Steps(tmp_path)
    calls = []

    def compute(folder):
        calls.append(folder)
        (folder / "out.txt").write_text("x")
        return {"value": len(calls)}

    assert run_step(store, "a/b", compute) == {"value": 1}
    assert calls == [tmp_path / "a" / "b"] and (tmp_path / "a" / "b" / "out.txt").exists()
    assert read_done(tmp_path / "a" / "b" / "done.json") == {"value": 1}
    assert run_step(store, "a/b", compute) == {"value": 1} and len(calls) == 1, "a done step is read back"

    def dies(folder):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_step(store, "c", dies)
    assert not store.is_done("c")
    assert run_step(store, "c", compute) == {"value": 2}, "a killed step runs again"


def test_train_masked_starts_from_the_state_under_the_masks_and_writes_its_files(digits, tmp_path):
    model = small_model(digits)
    state = {k: v.clone() for k, v in small_model(digits, seed=1).state_dict().items()}
    masks = prune_random(model, 0.7, generator=torch.Generator().manual_seed(0))
    seen = {}
    per_epoch = len(digits.train) // CFG.batch_size
    result = train_masked(
        model,
        digits,
        CFG,
        masks,
        state,
        tmp_path / "step",
        seed=3,
        start=2,
        end=2 + per_epoch,
        snapshot_at=[2],
        on_snapshot=lambda it, s: seen.update({it: s}),
    )
    for name, mask in masks.items():  # the training started from ``state`` with the masks applied
        assert torch.equal(seen[2][name], torch.where(mask, state[name], 0)), name
    final = torch.load(tmp_path / "step" / "final.pt")
    assert Masks.load(tmp_path / "step" / "masks.safetensors") == masks
    for name, mask in masks.items():
        assert torch.equal(final[name], model.state_dict()[name])
        assert not final[name][~mask].any(), f"{name}: pruned weights stay zero"
        assert not torch.equal(final[name][mask], state[name][mask]), f"{name}: the kept weights trained"
    assert result["iterations"] == 2 + per_epoch, "the iteration it stopped at"
    assert result["sparsity"] == pytest.approx(masks.sparsity())
    assert (result["test_loss"], result["test_accuracy"]) == pytest.approx(evaluate(model, digits.test))
    assert result["train_seconds"] > 0
    records = [json.loads(line) for line in (tmp_path / "step" / "metrics.jsonl").read_text().splitlines()]
    assert records and records[-1]["iteration"] == 2 + per_epoch


def test_train_masked_is_reproducible_and_its_seed_is_the_data_order(digits, tmp_path):
    masks = Masks.ones_like(small_model(digits))

    def final(seed, augment_seed=None):
        model = small_model(digits)
        train_masked(model, digits, CFG, masks, seed=seed, augment_seed=augment_seed)
        return model.state_dict()

    a, b, other = final(0), final(0), final(1)
    assert all(torch.equal(a[k], b[k]) for k in a), "same seeds, same weights, bit for bit"
    weight = next(k for k in a if k.endswith("weight"))
    assert not torch.equal(a[weight], other[weight]), "another data order, other weights"
    nothing_written = final(0)
    assert all(torch.equal(a[k], nothing_written[k]) for k in a)


def test_train_masked_takes_the_callers_loss_and_optimizer(digits):
    model = small_model(digits)
    masks = Masks.ones_like(model)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    last = list(model.parameters())[-1]  # train the output bias alone
    optimizer = torch.optim.SGD([last], lr=0.1)
    losses = []

    def loss_fn(output, target):
        loss = torch.nn.functional.cross_entropy(output, target)
        losses.append(float(loss.detach()))
        return loss

    train_masked(model, digits, CFG, masks, optimizer=optimizer, loss_fn=loss_fn)
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, frozen[k])]
    assert len(moved) == 1 and losses


def test_prune_trained_is_the_pruner_on_the_trained_state(digits):
    model = small_model(digits)
    trained = {k: v.clone() for k, v in small_model(digits, seed=5).state_dict().items()}
    start = prune_magnitude(small_model(digits, seed=5), 0.5)
    reference = small_model(digits, seed=5)
    start.apply_to(reference)
    assert prune_trained(model, trained, start, 0.3) == prune_magnitude(reference, 0.3, masks=start)
    assert prune_trained(model, trained, start, 0.3, scope="layerwise") == prune_magnitude(
        reference, 0.3, scope="layerwise", masks=start
    )
    assert prune_trained(model, trained, start, 0.3, structured="l2", scope="layerwise") == prune_structured(
        reference, 0.3, norm="l2", scope="layerwise", masks=start
    )
    names = list(start)
    spared = prune_trained(model, trained, start, 0.3, exclude=[names[-1]])
    assert torch.equal(spared[names[-1]], start[names[-1]]) and spared.is_subset_of(start)
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    drawn = prune_trained(model, trained, start, 0.3, importance="random", generator=g())
    assert drawn == prune_random(reference, 0.3, masks=start, generator=g()) and drawn.is_subset_of(start)


SMALL = dict(dataset="digits", model="mlp", model_options=(("width", 32),), epochs=1, batch_size=64, lr=0.05)


def test_controls_are_units_of_a_second_stage(tmp_path, monkeypatch):
    # each control alone, as the spy on train() below sees it (stacked: test_stacking.py)
    config = imp.ImpConfig(**SMALL, rounds=2, controls=True, seeds=(0, 1), stack=1)
    stages = imp.IMP.plan(config)
    assert [u.directory for u in stages[0]] == ["seed_0", "seed_1"]
    assert [u.directory for u in stages[1]] == [
        f"seed_{s}/round_{r:02d}/control_{c}" for s in (0, 1) for r in (1, 2) for c in ("reinit", "random_mask")
    ]
    assert len(imp.IMP.plan(imp.ImpConfig(**SMALL, rounds=2))) == 1, "no controls: one stage"

    summary = imp.run(config, tmp_path / "run", progress=False, log=lambda s: None, plots=False)
    control = tmp_path / "run" / "seed_1" / "round_02" / "control_random_mask"
    assert {p.name for p in control.iterdir()} >= {
        "done.json",
        "unit.log",
        "metrics.jsonl",
        "masks.safetensors",
        "final.pt",
    }
    shuffled = Masks.load(control / "masks.safetensors")
    ticket = Masks.load(tmp_path / "run" / "seed_1" / "round_02" / "masks.safetensors")
    assert shuffled.layer_sparsity() == ticket.layer_sparsity() and shuffled != ticket

    # a control whose unit was killed is the only training done again, and gives the same result
    (control / "done.json").unlink()
    calls = []
    real_train = steps.train
    monkeypatch.setattr(steps, "train", lambda *a, **kw: (calls.append(kw["desc"]), real_train(*a, **kw))[1])
    again = imp.run(config, tmp_path / "run", progress=False, log=lambda s: None, plots=False)
    assert calls == ["round 2 random_mask"]
    assert again["rounds"] == summary["rounds"]
    assert (
        again["per_seed"]["1"][2]["random_mask_test_accuracy"]
        == summary["per_seed"]["1"][2]["random_mask_test_accuracy"]
    )


def test_a_shared_dataset_is_loaded_once_per_process_until_released(monkeypatch):
    from lth_sparse import experiment

    loads = []
    real = experiment.load_dataset
    monkeypatch.setattr(experiment, "load_dataset", lambda name, **kw: (loads.append((name, kw)), real(name, **kw))[1])
    experiment.release_shared()
    a = experiment.shared_dataset("digits", seed=0, train_size=100)
    assert experiment.shared_dataset("digits", seed=0, train_size=100) is a and len(loads) == 1
    b = experiment.shared_dataset("digits", seed=1, train_size=100)  # another split: loaded, and kept instead
    assert b is not a and not torch.equal(a.train.x, b.train.x) and len(loads) == 2
    assert experiment.shared_dataset("digits", seed=0, train_size=100) is not a and len(loads) == 3, (
        "one kept at a time"
    )
    experiment.release_shared()
    experiment.shared_dataset("digits", seed=0, train_size=100)
    assert len(loads) == 4
    experiment.release_shared()
