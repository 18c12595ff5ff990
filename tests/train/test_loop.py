"""``lth_sparse.train``: determinism, snapshots, resuming at an iteration, schedules, optimizers,
evaluation, the metrics file, the early-stopping iteration, and the argument checks."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn as nn

from lth_sparse.data import Dataset, RandomCropFlip, Split
from lth_sparse.train import (
    TrainConfig,
    evaluate,
    iterations_per_epoch,
    make_optimizer,
    make_schedule,
    parse_step,
    train,
)
from tests.train.conftest import BATCH, TRAIN_SIZE, config, same_state, small_model, weights

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
    train(
        model,
        digits,
        cfg,
        seed=1,
        snapshot_at=[0, 3, 7],
        progress=False,
        on_snapshot=lambda it, state: taken.setdefault(it, state),
    )
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
    train(
        whole, digits, cfg, seed=2, snapshot_at=[k], on_snapshot=lambda it, s: taken.setdefault(it, s), progress=False
    )

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
        for batch in loop_batches(*args, **kwargs):
            if kwargs.get("shuffle"):
                drawn.append(batch[:2])
            yield batch

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
    result = train(
        model, digits, config(epochs=3, momentum=0.9, weight_decay=1e-3, precision=precision), progress=False
    )
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
    result = train(
        small_model(),
        digits,
        config(eval_every=3),
        metrics_path=path,
        snapshot_at=[7],
        on_snapshot=lambda it, s: seen_at_7.append(path.read_text().splitlines()),
        progress=False,
    )
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


@pytest.mark.parametrize(
    "field, value",
    [
        ("optimizer", "rmsprop"),
        ("schedule", "linear"),
        ("epochs", 0),
        ("epochs", -1),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", -0.1),
        ("precision", "fp64"),
        ("precision", "FP16"),
    ],
)
def test_train_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field", ["momentum", "weight_decay"])
def test_train_config_refuses_negative_momentum_and_weight_decay(field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: -0.1})


@pytest.mark.parametrize(
    "step, expected",
    [
        ("init", 0),
        ("iter:0", 0),
        ("iter:37", 37),
        ("epoch:2", 20),
        ("epoch:0.5", 5),
        (7, 7),
    ],
)
def test_parse_step(step, expected):
    assert parse_step(step, 10) == expected


@pytest.mark.parametrize("step", ["", "start", "iter:", "iter:x", "epoch:", "iteration:3", "iter:-1", -2, 1.5, None])
def test_parse_step_refuses_anything_else(step):
    with pytest.raises(ValueError):
        parse_step(step, 10)


def test_a_run_of_no_iterations_records_once_in_the_metrics_file(digits, tmp_path):
    path = tmp_path / "metrics.jsonl"
    result = train(small_model(), digits, config(epochs=1), start_iteration=5, metrics_path=path, progress=False)
    assert result.iterations == 5
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [5]


# --- a caller's optimizer and loss ----------------------------------------------------------------------------


def test_a_supplied_optimizer_built_as_the_loop_would_gives_the_same_weights(digits):
    cfg = config(momentum=0.9, weight_decay=1e-4, schedule="cosine")
    own, supplied = small_model(), small_model()
    train(own, digits, cfg, seed=1, progress=False)
    train(supplied, digits, cfg, seed=1, optimizer=make_optimizer(supplied, cfg), progress=False)
    assert same_state(weights(own), weights(supplied))


def test_a_supplied_optimizer_is_used_as_is_and_scheduled_from_its_initial_lr(digits):
    # Frozen weights, an optimizer over the output layer alone: what edge-popup does with its scores.
    model = small_model()
    model.fc1.weight.requires_grad_(False)
    model.fc1.bias.requires_grad_(False)
    before = weights(model)
    optimizer = torch.optim.Adam(model.fc2.parameters(), lr=0.01)
    cfg = config(optimizer="sgd", lr=0.5, schedule="step", milestones=(1,), gamma=0.1)
    first = train(model, digits, cfg, optimizer=optimizer, progress=False)
    assert [h["lr"] for h in first.history] == pytest.approx([0.01, 0.001]), "the optimizer's lr, not cfg.lr"
    assert torch.equal(model.fc1.weight, before["fc1.weight"]) and torch.equal(model.fc1.bias, before["fc1.bias"])
    assert not torch.equal(model.fc2.weight, before["fc2.weight"])
    assert optimizer.state[model.fc2.weight]["step"].item() == first.iterations, "the caller's Adam took the steps"
    second = train(model, digits, cfg, optimizer=optimizer, progress=False)
    assert [h["lr"] for h in second.history] == pytest.approx([0.01, 0.001]), "from initial_lr, not the decayed lr"


def regression_data(n: int = 96, features: int = 4, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = x @ torch.randn(features, 2, generator=g) + 0.01 * torch.randn(n, 2, generator=g)
    thirds = [Split(x[i::3], y[i::3]) for i in range(3)]
    return Dataset("linear", *thirds, num_classes=0, input_shape=(features,), augment=None)


def test_a_regression_loss_trains_and_reports_no_accuracy(tmp_path):
    data = regression_data()
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    initial_loss, initial_accuracy = evaluate(model, data.val, loss_fn=nn.functional.mse_loss)
    assert initial_accuracy is None
    path = tmp_path / "metrics.jsonl"
    result = train(
        model,
        data,
        config(epochs=20, batch_size=8, lr=0.1),
        loss_fn=nn.functional.mse_loss,
        metrics_path=path,
        progress=False,
    )
    assert result.val_accuracy is None and result.test_accuracy is None
    assert all(h["val_accuracy"] is None for h in result.history)
    assert all(json.loads(line)["val_accuracy"] is None for line in path.read_text().splitlines())
    with torch.no_grad():
        assert result.val_loss == pytest.approx(nn.functional.mse_loss(model(data.val.x), data.val.y).item(), rel=1e-5)
        assert result.test_loss == pytest.approx(
            nn.functional.mse_loss(model(data.test.x), data.test.y).item(), rel=1e-5
        )
    assert result.val_loss < 0.05 * initial_loss


def test_evaluate_with_a_loss_fn_weights_each_batch_by_its_size(digits):
    model = small_model()
    smoothed = lambda out, y: nn.functional.cross_entropy(out, y, label_smoothing=0.2)  # noqa: E731
    loss, accuracy = evaluate(model, digits.val, batch_size=100, loss_fn=smoothed)  # 287 examples: 100, 100, 87
    with torch.no_grad():
        out = model(digits.val.x)
    assert loss == pytest.approx(smoothed(out, digits.val.y).item(), rel=1e-6)
    assert loss != pytest.approx(evaluate(model, digits.val)[0], rel=1e-3), "precondition: the loss_fn matters"
    assert accuracy == pytest.approx((out.argmax(1) == digits.val.y).float().mean().item())


# --- callbacks, and nothing read back per step ----------------------------------------------------------------


def test_callbacks_see_every_step_with_its_examples_outputs_and_loss(digits):
    seen = []
    cfg = config(epochs=2)
    model = small_model()
    train(model, digits, cfg, seed=4, callbacks=[seen.append], progress=False)
    per_epoch = iterations_per_epoch(TRAIN_SIZE, BATCH)
    assert [s.iteration for s in seen] == list(range(1, 2 * per_epoch + 1))
    assert [s.epoch for s in seen] == [0] * per_epoch + [1] * per_epoch
    for epoch in (0, 1):
        order = torch.randperm(TRAIN_SIZE, generator=torch.Generator().manual_seed(4 * 100_003 + epoch))
        drawn = torch.cat([s.index for s in seen if s.epoch == epoch])
        assert torch.equal(drawn, order), "the batches' indices are the epoch's permutation, in order"
    for s in seen:
        assert torch.equal(s.target, digits.train.y[s.index])
        assert not s.output.requires_grad and not s.loss.requires_grad and s.loss.dim() == 0
        assert torch.equal(s.loss, nn.functional.cross_entropy(s.output, s.target))
    # the last step's output is the model's output on that batch before the last step
    assert not torch.equal(seen[-1].output, model(digits.train.x[seen[-1].index]).detach())


def test_a_training_step_reads_nothing_back_to_the_host(digits, monkeypatch):
    calls = {"n": 0}

    def counting(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            calls["n"] += 1
            return original(self, *args, **kwargs)

        return wrapper

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    at_step = []
    model = small_model()
    model.fc1.set_mask(torch.rand(model.fc1.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    cfg = config(epochs=2, momentum=0.9, weight_decay=1e-4)
    train(model, digits, cfg, callbacks=[lambda step: at_step.append(calls["n"])], progress=False)
    per_epoch = iterations_per_epoch(TRAIN_SIZE, BATCH)
    assert at_step[per_epoch] > at_step[per_epoch - 1], "precondition: the count sees the validation pass"
    between_evaluations = [at_step[i] - at_step[i - 1] for i in range(1, len(at_step)) if i % per_epoch != 0]
    assert between_evaluations == [0] * len(between_evaluations)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_training_step_on_a_gpu_does_not_synchronise(digits, precision):
    images = dataclasses.replace(digits, augment=RandomCropFlip(1, flip=True))
    data = dataclasses.replace(
        images, train=digits.train.to("cuda"), val=digits.val.to("cuda"), test=digits.test.to("cuda")
    )
    model = small_model().cuda()
    model.fc1.set_mask(torch.rand(model.fc1.weight.shape, generator=torch.Generator().manual_seed(0)).cuda() < 0.5)
    per_epoch = iterations_per_epoch(TRAIN_SIZE, BATCH)

    def check_the_next_step(step):
        # an evaluation (every epoch) reads back; so does copying the next epoch's permutation to the device
        torch.cuda.set_sync_debug_mode("error" if step.iteration % per_epoch else "default")

    try:
        torch.cuda.set_sync_debug_mode("error")
        with pytest.raises(RuntimeError):
            torch.ones(1, device="cuda").item()  # precondition: the debug mode catches a read-back
        torch.cuda.set_sync_debug_mode("default")
        result = train(
            model,
            data,
            config(epochs=3, momentum=0.9, precision=precision),
            augment_seed=1,
            callbacks=[check_the_next_step],
            progress=False,
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.iterations == 3 * per_epoch


# --- separate seeds for the data order and the augmentation ---------------------------------------------------


class RecordingAugment:
    """Adds noise drawn from the generator it is given, and keeps the draws."""

    def __init__(self):
        self.draws: list[torch.Tensor] = []

    def __call__(self, x, generator):
        noise = torch.rand(x.shape, generator=generator)
        self.draws.append(noise)
        return x + 0.1 * noise


def augmented_run(digits, seed, augment_seed):
    augment = RecordingAugment()
    data = dataclasses.replace(digits, augment=augment)
    seen = []
    model = small_model()
    train(model, data, config(epochs=1), seed=seed, augment_seed=augment_seed, callbacks=[seen.append], progress=False)
    return torch.cat([s.index for s in seen]), torch.cat(augment.draws), weights(model)


def test_the_augmentation_seed_varies_apart_from_the_data_order_seed(digits):
    order, draws, state = augmented_run(digits, seed=1, augment_seed=None)
    order_a, draws_a, state_a = augmented_run(digits, seed=1, augment_seed=10)
    order_b, draws_b, state_b = augmented_run(digits, seed=1, augment_seed=11)
    order_c, draws_c, _ = augmented_run(digits, seed=2, augment_seed=10)
    assert torch.equal(order_a, order) and torch.equal(order_b, order), "the order depends on seed alone"
    assert not torch.equal(draws_a, draws_b) and not same_state(state_a, state_b)
    assert not torch.equal(order_c, order_a)
    assert torch.equal(draws_c, draws_a), "the augmentation depends on augment_seed alone"
    # without augment_seed, one generator per epoch draws the order then the augmentation, as it always has
    g = torch.Generator().manual_seed(1 * 100_003)
    assert torch.equal(torch.randperm(TRAIN_SIZE, generator=g), order)
    assert torch.equal(torch.rand(draws[:BATCH].shape, generator=g), draws[:BATCH])
    assert not torch.equal(draws, draws_a)
