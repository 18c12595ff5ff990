"""``lth_sparse.train``: determinism, snapshots, resuming at an iteration, schedules, optimizers,
evaluation, the metrics file, the early-stopping iteration, and the argument checks."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from lth_sparse.data import Dataset, Split, load_dataset
from lth_sparse.models import create_model
from lth_sparse.train import (
    TrainConfig,
    evaluate,
    iterations_per_epoch,
    make_optimizer,
    make_schedule,
    parse_step,
    train,
)

BATCH = 32
TRAIN_SIZE = 160  # 5 iterations per epoch


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", seed=0, train_size=TRAIN_SIZE)


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("mlp", (1, 8, 8), 10, depth=1, width=16)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def config(**overrides) -> TrainConfig:
    base = dict(epochs=2, batch_size=BATCH, lr=0.05, momentum=0.0)
    base.update(overrides)
    return TrainConfig(**base)


# --- determinism and data order -------------------------------------------------------------------------------

def test_same_seed_gives_bit_identical_weights(digits):
    cfg = config(momentum=0.9, weight_decay=1e-4)
    a, b = small_model(), small_model()
    result_a = train(a, digits, cfg, seed=3, progress=False)
    result_b = train(b, digits, cfg, seed=3, progress=False)
    assert same_state(weights(a), weights(b))
    assert result_a.val_loss == result_b.val_loss
    assert result_a.iterations == result_b.iterations == 2 * iterations_per_epoch(TRAIN_SIZE, BATCH)
    assert not same_state(weights(a), weights(small_model())), "training must move the weights"


def test_another_seed_gives_other_weights(digits):
    cfg = config()
    a, b = small_model(), small_model()
    train(a, digits, cfg, seed=3, progress=False)
    train(b, digits, cfg, seed=4, progress=False)
    assert not same_state(weights(a), weights(b))


def test_snapshots_are_the_state_at_exactly_the_chosen_iterations(digits):
    cfg = config()
    model = small_model()
    initial = weights(model)
    taken: dict[int, dict] = {}
    train(model, digits, cfg, seed=1, snapshot_at=[0, 3, 7], progress=False,
          on_snapshot=lambda it, state: taken.setdefault(it, state))
    assert sorted(taken) == [0, 3, 7]
    assert same_state(taken[0], initial), "iteration 0 is the state before any step"
    for k in (3, 7):
        reference = small_model()
        train(reference, digits, cfg, seed=1, end_iteration=k, progress=False)
        assert same_state(taken[k], weights(reference)), k
    assert not same_state(taken[7], weights(model)), "a snapshot is a copy, not the live state"


@pytest.mark.parametrize("k", [5, 7])  # an epoch boundary, and mid-epoch
@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_training_from_a_snapshot_continues_the_original_run_exactly(digits, k, schedule):
    cfg = config(epochs=3, schedule=schedule)
    whole = small_model()
    taken = {}
    train(whole, digits, cfg, seed=2, snapshot_at=[k], on_snapshot=lambda it, s: taken.setdefault(it, s),
          progress=False)

    first = small_model()
    train(first, digits, cfg, seed=2, end_iteration=k, progress=False)
    assert same_state(weights(first), taken[k])
    rest = small_model(seed=99)
    rest.load_state_dict(taken[k])
    result = train(rest, digits, cfg, seed=2, start_iteration=k, progress=False)
    assert result.iterations == 3 * iterations_per_epoch(TRAIN_SIZE, BATCH)
    assert same_state(weights(rest), weights(whole))


def test_each_epoch_draws_its_own_order(digits):
    # The same weights trained for one epoch as epoch 0 and as epoch 1 end apart only if the order differs.
    cfg = config(epochs=2)
    per_epoch = iterations_per_epoch(TRAIN_SIZE, BATCH)
    as_first, as_second = small_model(), small_model()
    train(as_first, digits, cfg, seed=2, end_iteration=per_epoch, progress=False)
    train(as_second, digits, cfg, seed=2, start_iteration=per_epoch, progress=False)
    assert not same_state(weights(as_first), weights(as_second))


def test_start_iteration_past_the_end_is_a_value_error(digits):
    with pytest.raises(ValueError, match="start_iteration"):
        train(small_model(), digits, config(epochs=1), start_iteration=6, progress=False)


def test_lr_factor_overrides_the_schedule(digits):
    model = small_model()
    initial = weights(model)
    train(model, digits, config(epochs=1), lr_factor=lambda it: 0.0, progress=False)
    assert same_state(weights(model), initial)


def test_pruned_weights_stay_zero_through_training(digits):
    model = small_model()
    mask = torch.rand(model.fc1.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    model.fc1.set_mask(mask)
    train(model, digits, config(momentum=0.9, weight_decay=1e-3), progress=False)
    assert torch.all(model.fc1.weight[~mask] == 0)
    assert torch.all(model.fc1.weight[mask] != 0)


# --- precision ------------------------------------------------------------------------------------------------

def test_fp32_precision_is_the_default_and_plain_float32_training_bit_for_bit(digits, monkeypatch):
    # the training batches, recorded as the loop draws them, replayed by a plain loop without autocast or a scaler
    from lth_sparse.train import loop

    assert TrainConfig().precision == "fp32"
    drawn = []

    def recording_batches(*args, **kwargs):
        for x, y in loop_batches(*args, **kwargs):
            if kwargs.get("shuffle"):
                drawn.append((x, y))
            yield x, y

    loop_batches = loop.batches
    monkeypatch.setattr(loop, "batches", recording_batches)
    cfg = config(momentum=0.9, weight_decay=1e-4, precision="fp32")
    model, replayed = small_model(), small_model()
    train(model, digits, cfg, seed=3, progress=False)
    assert len(drawn) == 2 * iterations_per_epoch(TRAIN_SIZE, BATCH)
    optimizer = make_optimizer(replayed, cfg)
    for x, y in drawn:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(replayed(x), y).backward()
        optimizer.step()
    assert same_state(weights(model), weights(replayed))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_training_learns_and_keeps_float32_weights_and_pruned_zeros(digits, precision):
    model = small_model()
    mask = torch.rand(model.fc1.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    model.fc1.set_mask(mask)
    initial_loss, _ = evaluate(model, digits.val)
    result = train(model, digits, config(epochs=3, momentum=0.9, weight_decay=1e-3, precision=precision),
                   progress=False)
    assert result.val_loss < initial_loss - 0.5, "the loss must go down"
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.all(model.fc1.weight[~mask] == 0)
    assert torch.all(model.fc1.weight[mask] != 0)


def test_evaluate_at_bf16_is_close_to_float32(digits):
    model = small_model()
    train(model, digits, config(epochs=1), progress=False)
    loss, accuracy = evaluate(model, digits.val)
    loss_bf16, accuracy_bf16 = evaluate(model, digits.val, precision="bf16")
    assert loss_bf16 != loss, "precondition: bf16 computes otherwise"
    assert loss_bf16 == pytest.approx(loss, rel=2e-2)
    assert accuracy_bf16 == pytest.approx(accuracy, abs=0.05)


# --- schedules ------------------------------------------------------------------------------------------------

def test_constant_schedule_is_one_everywhere():
    factor = make_schedule(config(schedule="constant"), 10, 50)
    assert [factor(it) for it in (0, 1, 25, 49, 50)] == [1.0] * 5


def test_step_schedule_multiplies_by_gamma_at_each_milestone():
    factor = make_schedule(config(schedule="step", milestones=(1, 2.5), gamma=0.5), 10, 40)
    assert factor(0) == factor(9) == 1.0
    assert factor(10) == factor(24) == 0.5
    assert factor(25) == factor(39) == 0.25


def test_cosine_schedule_starts_at_one_halves_midway_and_ends_near_zero():
    total = 40
    factor = make_schedule(config(schedule="cosine"), 10, total)
    assert factor(0) == 1.0
    assert factor(total // 2) == pytest.approx(0.5)
    assert factor(total - 1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))
    assert factor(total - 1) < 0.01
    values = [factor(it) for it in range(total)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_warmup_rises_linearly_to_one_then_hands_over_to_the_schedule():
    factor = make_schedule(config(schedule="step", warmup_epochs=1, milestones=(2,), gamma=0.1), 10, 30)
    assert [factor(it) for it in range(10)] == pytest.approx([(it + 1) / 10 for it in range(10)])
    assert factor(10) == factor(19) == 1.0
    assert factor(20) == pytest.approx(0.1)


def test_training_uses_the_schedule(digits):
    cfg = config(schedule="step", milestones=(1,), gamma=0.1, lr=0.05)
    result = train(small_model(), digits, cfg, progress=False)
    # One record per epoch; each carries the learning rate of its epoch's steps.
    assert [h["lr"] for h in result.history] == pytest.approx([0.05, 0.005])


# --- optimizers -----------------------------------------------------------------------------------------------

def test_make_optimizer_builds_sgd_with_the_configs_values():
    model = small_model()
    opt = make_optimizer(model, config(optimizer="sgd", lr=0.3, momentum=0.7, nesterov=True, weight_decay=1e-3))
    assert type(opt) is torch.optim.SGD
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.3, 0.7, True, 1e-3)
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_make_optimizer_builds_adam_and_adamw_with_the_configs_values(name, cls):
    opt = make_optimizer(small_model(), config(optimizer=name, lr=1e-3, betas=(0.8, 0.95), weight_decay=0.02))
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert (group["lr"], tuple(group["betas"]), group["weight_decay"]) == (1e-3, (0.8, 0.95), 0.02)


def test_make_optimizer_leaves_out_frozen_parameters():
    model = small_model()
    model.fc1.bias.requires_grad_(False)
    opt = make_optimizer(model, config())
    assert all(p is not model.fc1.bias for p in opt.param_groups[0]["params"])
    assert len(opt.param_groups[0]["params"]) == 3


# --- evaluation -----------------------------------------------------------------------------------------------

def fixed_classifier() -> nn.Module:
    """logits = x @ W^T + b with W = [[1, 0], [0, 1], [1, 1]], b = [0, 0, -1]: three classes from two features."""
    layer = nn.Linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        layer.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
    return layer


def test_evaluate_returns_the_exact_mean_loss_and_accuracy():
    # logits (2, 0, 1), (0, 3, 2), (1.5, 1.5, 2), (0.5, 0, -0.5), (0.2, 0.1, -0.7): no ties;
    # predicted 0, 1, 2, 0, 0, so the first three are right.
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.5, 1.5], [0.5, 0.0], [0.2, 0.1]])
    y = torch.tensor([0, 1, 2, 1, 2])
    model = fixed_classifier()
    loss, accuracy = evaluate(model, Split(x, y), batch_size=2)  # uneven last batch
    total = 0.0
    correct = 0
    for xi, yi in zip(x.tolist(), y.tolist()):
        logits = [xi[0], xi[1], xi[0] + xi[1] - 1.0]
        total += math.log(sum(math.exp(v) for v in logits)) - logits[yi]
        correct += max(range(3), key=lambda c: logits[c]) == yi
    assert loss == pytest.approx(total / 5, rel=1e-6)
    assert correct == 3
    assert accuracy == pytest.approx(3 / 5)


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_runs_in_eval_mode_and_restores_the_mode(training):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).train(training)
    split = Split(torch.randn(8, 2) * 5 + 3, torch.randint(0, 3, (8,)))
    stats = model[1].running_mean.clone()
    loss, _ = evaluate(model, split)
    assert model.training is training
    assert torch.equal(model[1].running_mean, stats), "batch-norm statistics must not move during evaluation"
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model.eval()(split.x), split.y).item()
    assert loss == pytest.approx(expected, rel=1e-6)


def test_evaluate_on_an_empty_split_is_nan():
    loss, accuracy = evaluate(fixed_classifier(), Split(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64)))
    assert math.isnan(loss) and math.isnan(accuracy)


def test_training_reports_the_final_validation_and_test_metrics(digits):
    model = small_model()
    result = train(model, digits, config(), progress=False)
    assert (result.val_loss, result.val_accuracy) == pytest.approx(evaluate(model, digits.val))
    assert (result.test_loss, result.test_accuracy) == pytest.approx(evaluate(model, digits.test))
    assert result.val_accuracy > 0.3, "two epochs on digits beat chance (0.1)"


# --- metrics file and early-stopping iteration ----------------------------------------------------------------

def test_metrics_file_gets_one_json_line_per_validation_as_training_goes(digits, tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": -1, "from": "an earlier run"}\n')
    seen_at_7 = []
    result = train(small_model(), digits, config(eval_every=3), metrics_path=path, snapshot_at=[7],
                   on_snapshot=lambda it, s: seen_at_7.append(path.read_text().splitlines()), progress=False)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"iteration": -1, "from": "an earlier run"}, "the file is appended to"
    records = lines[1:]
    assert [r["iteration"] for r in records] == [3, 6, 9, 10]  # every 3 iterations, and at the end
    assert len(records) == len(result.history)
    for record, entry in zip(records, result.history):
        assert record["iteration"] == entry["iteration"]
        assert record["val_loss"] == entry["val_loss"]
        assert record["val_accuracy"] == entry["val_accuracy"]
    assert [json.loads(line)["iteration"] for line in seen_at_7[0][1:]] == [3, 6], "written as they come"
    assert records[-1]["val_loss"] == pytest.approx(result.val_loss)


def test_best_val_iteration_is_the_iteration_of_minimum_validation_loss(digits):
    # A learning rate this large makes validation loss go up and down.
    result = train(small_model(), digits, config(epochs=4, lr=1.5, eval_every=1), progress=False)
    losses = [h["val_loss"] for h in result.history]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert best != len(losses) - 1, "precondition: the minimum is not simply the last record"
    assert result.best_val_iteration == result.history[best]["iteration"]
    assert result.best_val_loss == losses[best]


# --- configuration --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("optimizer", "rmsprop"),
    ("schedule", "linear"),
    ("epochs", 0),
    ("epochs", -1),
    ("batch_size", 0),
    ("lr", 0.0),
    ("lr", -0.1),
    ("precision", "fp64"),
    ("precision", "FP16"),
])
def test_train_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field", ["momentum", "weight_decay"])
def test_train_config_refuses_negative_momentum_and_weight_decay(field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: -0.1})


@pytest.mark.parametrize("step, expected", [
    ("init", 0),
    ("iter:0", 0),
    ("iter:37", 37),
    ("epoch:2", 20),
    ("epoch:0.5", 5),
    (7, 7),
])
def test_parse_step(step, expected):
    assert parse_step(step, 10) == expected


@pytest.mark.parametrize("step", ["", "start", "iter:", "iter:x", "epoch:", "iteration:3", "iter:-1", -2, 1.5, None])
def test_parse_step_refuses_anything_else(step):
    with pytest.raises(ValueError):
        parse_step(step, 10)
