"""Exact continuation: a run killed after its checkpoint at iteration k and resumed from it in a fresh model
ends bit for bit where the uninterrupted run ends (weights, records, metrics file, snapshots, callbacks)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from lth_sparse.data import Split
from lth_sparse.train import train
from tests.train.conftest import config, same_state, small_model, weights

CHECKPOINT_EVERY = 7  # mid-epoch: 5 iterations per epoch
KILLED_AT = 10  # after the checkpoint at 7, and after the record at 9 that the resumed run must not duplicate
SETUPS = {
    "sgd-momentum-weight-decay": dict(momentum=0.9, weight_decay=1e-3),
    "adam": dict(optimizer="adam", lr=3e-3, weight_decay=1e-4),
    "fp16-gradscaler": dict(momentum=0.9, precision="fp16"),
    "dropout": dict(momentum=0.9),
}


class Killed(Exception):
    pass


def kill_at(iteration: int):
    def callback(step):
        if step.iteration == iteration:
            raise Killed

    return callback


class StepCounter:
    """A callback with state that a checkpoint keeps."""

    def __init__(self):
        self.steps = 0
        self.loss_sum = torch.zeros(())

    def __call__(self, step):
        self.steps += 1
        self.loss_sum += step.loss

    def state_dict(self) -> dict:
        return {"steps": self.steps, "loss_sum": self.loss_sum.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.loss_sum = state["steps"], state["loss_sum"].clone()


def make_model(setup: str, seed: int = 0) -> nn.Module:
    if setup != "dropout":
        return small_model(seed)
    torch.manual_seed(seed)  # draws from torch's global generator at every training step
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))


def run(setup, data, tmp_path, name, **kwargs):
    if setup == "fp16-gradscaler":
        # inputs 16 times larger overflow float16 gradients at the scaler's initial scale: it backs off
        data = dataclasses.replace(data, train=Split(16 * data.train.x, data.train.y))
    snapshots = {}
    counter = StepCounter()
    model = make_model(setup, seed=kwargs.pop("init_seed", 0))
    kwargs.setdefault("metrics_path", tmp_path / f"{name}.jsonl")
    cfg = config(epochs=3, eval_every=3, **SETUPS[setup])
    result = train(
        model,
        data,
        cfg,
        seed=5,
        progress=False,
        snapshot_at=[3, 12],
        on_snapshot=lambda it, s: snapshots.setdefault(it, s),
        callbacks=[counter, *kwargs.pop("callbacks", [])],
        **kwargs,
    )
    return model, result, snapshots, counter


@pytest.mark.parametrize("setup", list(SETUPS))
def test_a_killed_run_resumed_from_its_checkpoint_ends_bit_for_bit_as_the_whole_run(digits, tmp_path, setup):
    torch.manual_seed(1234)
    whole, whole_result, whole_snapshots, whole_counter = run(setup, digits, tmp_path, "whole")

    torch.manual_seed(1234)  # the same global generator state at the start as the whole run
    checkpoint = tmp_path / "train.pt"
    with pytest.raises(Killed):
        run(
            setup,
            digits,
            tmp_path,
            "killed",
            checkpoint_path=checkpoint,
            checkpoint_every=CHECKPOINT_EVERY,
            callbacks=[kill_at(KILLED_AT)],
        )
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["iteration"] == CHECKPOINT_EVERY
    if setup == "fp16-gradscaler":
        assert saved["scaler"]["scale"] < 2.0**16, "precondition: the scaler has backed off from its start"

    torch.manual_seed(99)  # a fresh model and another global generator state
    resumed, result, snapshots, counter = run(
        setup, digits, tmp_path, "killed", init_seed=7, checkpoint_path=checkpoint, resume=True
    )
    assert same_state(weights(resumed), weights(whole))
    assert result.history == whole_result.history
    assert result.to_dict() == whole_result.to_dict()
    assert (tmp_path / "killed.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()
    assert sorted(snapshots) == [12], "the snapshot at 3 was the killed run's to take"
    assert same_state(snapshots[12], whole_snapshots[12])
    assert counter.steps == whole_counter.steps == whole_result.iterations
    assert torch.equal(counter.loss_sum, whole_counter.loss_sum)
    assert torch.load(checkpoint, weights_only=False)["iteration"] == whole_result.iterations, "and one at the end"


def test_the_weights_alone_do_not_continue_a_momentum_run(digits, tmp_path):
    # What the checkpoint adds: starting at k from the weights alone loses the momentum buffers.
    cfg = config(epochs=3, momentum=0.9, weight_decay=1e-3)
    whole = small_model()
    taken = {}
    train(
        whole,
        digits,
        cfg,
        seed=5,
        snapshot_at=[CHECKPOINT_EVERY],
        on_snapshot=lambda it, s: taken.update(s=s),
        progress=False,
    )
    rest = small_model(seed=7)
    rest.load_state_dict(taken["s"])
    train(rest, digits, cfg, seed=5, start_iteration=CHECKPOINT_EVERY, progress=False)
    assert not same_state(weights(rest), weights(whole))


def test_resume_without_a_checkpoint_file_starts_afresh(digits, tmp_path):
    cfg = config(momentum=0.9)
    plain, resumed = small_model(), small_model()
    train(plain, digits, cfg, seed=2, progress=False)
    result = train(resumed, digits, cfg, seed=2, checkpoint_path=tmp_path / "none.pt", resume=True, progress=False)
    assert same_state(weights(resumed), weights(plain))
    assert result.iterations == 10 and (tmp_path / "none.pt").exists()


def test_resuming_a_finished_run_takes_no_step(digits, tmp_path):
    cfg = config(momentum=0.9)
    model = small_model()
    path = tmp_path / "train.pt"
    done = train(model, digits, cfg, seed=2, checkpoint_path=path, progress=False)
    steps = []
    again = small_model(seed=3)
    result = train(again, digits, cfg, seed=2, resume_from=path, callbacks=[steps.append], progress=False)
    assert steps == []
    assert same_state(weights(again), weights(model))
    assert result.to_dict() == done.to_dict()


@pytest.mark.parametrize("change", [dict(seed=3), dict(augment_seed=1)])
def test_resuming_with_another_seed_is_a_value_error(digits, tmp_path, change):
    path = tmp_path / "train.pt"
    train(small_model(), digits, config(epochs=1), seed=2, checkpoint_path=path, progress=False)
    kwargs = dict(seed=2) | change
    with pytest.raises(ValueError, match=next(iter(change))):
        train(small_model(), digits, config(epochs=2), resume_from=path, progress=False, **kwargs)


def test_resume_needs_a_checkpoint_path(digits):
    with pytest.raises(ValueError, match="checkpoint_path"):
        train(small_model(), digits, config(), resume=True, progress=False)
