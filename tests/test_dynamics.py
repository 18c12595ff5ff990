"""Training-dynamics measures (:mod:`lth_sparse.analysis.dynamics`): forgetting events on hand-made presentation
sequences whose answers are known and against a plain per-example replay, through checkpoints and files, in a
real training of a tiny MLP on the 8x8 digits, under DDP (two gloo ranks); the most/least forgotten rankings and
the subsets without them; equation 4 on error curves whose convergence speed is known."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from lth_sparse.analysis.dynamics import (
    EpochErrors,
    ForgettingEvents,
    ForgettingResult,
    convergence_speed,
    dataset_without,
    epoch_errors,
    least_forgotten,
    most_forgotten,
    without_examples,
)
from lth_sparse.data import Split, load_dataset
from lth_sparse.masks import Masks
from lth_sparse.models import create_model
from lth_sparse.train import TrainConfig, TrainStep, evaluate, iterations_per_epoch, train

TRAIN_SIZE = 300  # batches of 64: the last one 44, so an epoch ends on a short batch
BATCH = 64
EPOCHS = 4


# --- Helpers ----------------------------------------------------------------------------------------------


def step_of(index: list[int], correct: list[bool], epoch: int = 0, iteration: int = 1) -> TrainStep:
    """A TrainStep whose examples at ``index`` are classified correctly where ``correct`` says so (3 classes,
    targets 0..2 cycling, the wrong answer the next class)."""
    target = torch.arange(len(index)) % 3
    predicted = torch.where(torch.tensor(correct, dtype=torch.bool), target, (target + 1) % 3)
    output = torch.nn.functional.one_hot(predicted, 3).float() * 2 - 0.5
    return TrainStep(
        iteration=iteration,
        epoch=epoch,
        index=torch.tensor(index, dtype=torch.int64),
        output=output,
        target=target,
        loss=torch.tensor(0.0),
    )


def replay(num_examples: int, steps: list[tuple[list[int], list[bool], int]]) -> dict:
    """The forgetting statistics of ``steps`` (index, correct, epoch), one example at a time in plain Python:
    the definition, read literally."""
    history: list[list[bool]] = [[] for _ in range(num_examples)]
    per_epoch: dict[int, int] = {}
    for index, correct, epoch in steps:
        for i, c in zip(index, correct):
            if history[i] and history[i][-1] and not c:
                per_epoch[epoch] = per_epoch.get(epoch, 0) + 1
            history[i].append(c)
    counts = [sum(1 for a, b in zip(h, h[1:]) if a and not b) for h in history]
    epochs = max((e for _, _, e in steps), default=-1) + 1
    return {
        "counts": counts,
        "learned": [any(h) for h in history],
        "last_correct": [bool(h) and h[-1] for h in history],
        "presentations": [len(h) for h in history],
        "events_per_epoch": [per_epoch.get(e, 0) for e in range(epochs)],
    }


def as_lists(result: ForgettingResult) -> dict:
    return {
        "counts": result.counts.tolist(),
        "learned": result.learned.tolist(),
        "last_correct": result.last_correct.tolist(),
        "presentations": result.presentations.tolist(),
        "events_per_epoch": result.events_per_epoch.tolist(),
    }


def feed(callback: ForgettingEvents, steps) -> ForgettingEvents:
    for it, (index, correct, epoch) in enumerate(steps, 1):
        callback(step_of(index, correct, epoch, it))
    return callback


# The hand-made sequences, four epochs; per example the outcome at its four presentations:
SEQUENCES = {
    0: [True, False, True, False],  # correct, wrong, correct, wrong: 2 events (epochs 1 and 3)
    1: [False, False, False, False],  # never learned: 0 events, forgettable in Toneva's convention
    2: [False, True, True, True],  # learned once and kept: unforgettable
    3: [True, True, True, False],  # 1 event, in the last epoch
    4: [True, False, False, True],  # 1 event (epoch 1), relearned
}
# The batches of each epoch, in arbitrary orders
ORDERS = [[[3, 0], [4, 1, 2]], [[2], [1, 4, 0, 3]], [[4, 2, 1], [0, 3]], [[1, 0, 3, 2, 4]]]


def hand_steps() -> list[tuple[list[int], list[bool], int]]:
    return [
        (batch, [SEQUENCES[i][epoch] for i in batch], epoch) for epoch, order in enumerate(ORDERS) for batch in order
    ]


def random_steps(num_examples: int, epochs: int, seed: int) -> list[tuple[list[int], list[bool], int]]:
    """Random batch orders, each epoch a random subset of the examples (some skip epochs), random outcomes."""
    g = torch.Generator().manual_seed(seed)
    steps = []
    for epoch in range(epochs):
        order = torch.randperm(num_examples, generator=g)[: int(torch.randint(1, num_examples + 1, (), generator=g))]
        for batch in order.split(int(torch.randint(1, 6, (), generator=g))):
            correct = (torch.rand(len(batch), generator=g) < 0.6).tolist()
            steps.append((batch.tolist(), correct, epoch))
    return steps


# --- Forgetting events on known sequences -----------------------------------------------------------------


def test_the_hand_made_sequences_give_the_counts_worked_out_by_hand():
    result = feed(ForgettingEvents(5), hand_steps()).result()
    assert result.counts.tolist() == [2, 0, 0, 1, 1]
    assert result.learned.tolist() == [True, False, True, True, True]
    assert result.last_correct.tolist() == [False, False, True, False, True]
    assert result.presentations.tolist() == [4] * 5
    assert result.events_per_epoch.tolist() == [0, 2, 0, 2]
    assert result.unforgettable.tolist() == [False, False, True, False, False]
    assert result.never_learned.tolist() == [False, True, False, False, False]
    assert result.mean_events == pytest.approx(4 / 5)
    assert result.std_events == pytest.approx(math.sqrt(((2 - 0.8) ** 2 + 2 * 0.8**2 + 2 * 0.2**2) / 5))
    assert result.unforgettable_fraction == pytest.approx(1 / 5)
    assert result.never_learned_fraction == pytest.approx(1 / 5)
    assert result.forgotten_fraction == pytest.approx(3 / 5)
    figures = result.to_dict()
    assert figures["num_presented"] == figures["num_examples"] == 5 and figures["max_events"] == 2
    assert figures["unforgettable_fraction"] + figures["forgotten_fraction"] + figures[
        "never_learned_fraction"
    ] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_arbitrary_orders_and_skipped_epochs_match_a_per_example_replay(seed):
    steps = random_steps(23, epochs=7, seed=seed)
    result = feed(ForgettingEvents(23), steps).result()
    expected = replay(23, steps)
    assert as_lists(result) == expected
    assert sum(expected["counts"]) > 0, "precondition: the sequences forget"
    presented = [p > 0 for p in expected["presentations"]]
    assert result.num_presented == sum(presented)
    n_learned_kept = sum(
        1 for c, learned, p in zip(expected["counts"], expected["learned"], presented) if p and learned and c == 0
    )
    assert result.unforgettable_fraction == pytest.approx(n_learned_kept / sum(presented))


def test_figures_are_over_the_presented_examples_and_nan_without_any():
    result = feed(ForgettingEvents(4), [([0, 2], [True, False], 0), ([0, 2], [False, False], 1)]).result()
    assert result.num_presented == 2
    assert result.mean_events == pytest.approx(0.5)
    assert result.never_learned_fraction == pytest.approx(0.5) and result.forgotten_fraction == pytest.approx(0.5)
    empty = ForgettingEvents(3).result()
    assert empty.num_presented == 0 and math.isnan(empty.mean_events) and math.isnan(empty.unforgettable_fraction)


def test_a_step_that_is_not_a_classification_is_refused():
    cb = ForgettingEvents(4)
    step = step_of([0, 1], [True, False])
    with pytest.raises(ValueError, match="class targets"):
        cb(dataclasses.replace(step, target=step.target.float()))
    with pytest.raises(ValueError, match="same examples"):
        cb(dataclasses.replace(step, index=torch.tensor([0, 1, 2])))
    with pytest.raises(ValueError, match="num_examples"):
        ForgettingEvents(-1)


def test_a_state_dict_round_trip_mid_sequence_continues_as_if_uninterrupted():
    steps = random_steps(17, epochs=6, seed=5)
    whole = feed(ForgettingEvents(17), steps).result()
    first = feed(ForgettingEvents(17), steps[: len(steps) // 2])
    state = first.state_dict()
    feed(first, steps[len(steps) // 2 :])  # the state is a copy: going on does not change it
    resumed = ForgettingEvents(17)
    resumed.load_state_dict(state)
    feed(resumed, steps[len(steps) // 2 :])
    assert as_lists(resumed.result()) == as_lists(whole) == as_lists(first.result())
    with pytest.raises(ValueError, match="17 examples"):
        ForgettingEvents(16).load_state_dict(state)


def test_save_and_load_give_back_the_same_result_and_the_figures_beside_it(tmp_path):
    result = feed(ForgettingEvents(5), hand_steps()).result()
    result.save(tmp_path / "forgetting.safetensors")
    loaded = ForgettingResult.load(tmp_path / "forgetting.safetensors")
    for name in ("counts", "learned", "last_correct", "presentations", "events_per_epoch"):
        a, b = getattr(result, name), getattr(loaded, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert json.loads((tmp_path / "forgetting.json").read_text()) == result.to_dict()
    Masks({"fc.weight": torch.ones(2, dtype=torch.bool)}).save(tmp_path / "masks.safetensors")
    with pytest.raises(ValueError, match="not an lth_sparse forgetting result"):
        ForgettingResult.load(tmp_path / "masks.safetensors")
    with pytest.raises(FileNotFoundError):
        ForgettingResult.load(tmp_path / "absent.safetensors")


# --- Rankings and subsets ---------------------------------------------------------------------------------


def test_most_forgotten_puts_never_learned_first_then_counts_ties_by_position():
    result = feed(ForgettingEvents(5), hand_steps()).result()  # counts [2, 0, 0, 1, 1], example 1 never learned
    assert most_forgotten(result, 1.0).tolist() == [1, 0, 3, 4, 2]
    assert most_forgotten(result, 0.4).tolist() == [1, 0]
    assert least_forgotten(result, 1.0).tolist() == [2, 3, 4, 0, 1]
    assert least_forgotten(result, 0.6).tolist() == [2, 3, 4]
    counts = torch.tensor([1, 3, 3, 0, 3, 1])
    assert most_forgotten(counts, 1.0).tolist() == [1, 2, 4, 0, 5, 3]
    assert least_forgotten(counts, 1.0).tolist() == [3, 0, 5, 1, 2, 4]
    assert most_forgotten(counts.double() / 2, 0.5).tolist() == [1, 2, 4], "scores summed over seeds, any dtype"
    assert most_forgotten(counts, 0.0).tolist() == [] and most_forgotten(counts, 0.0).dtype == torch.int64


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), True, "0.5", None])
def test_a_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ValueError, match="fraction"):
        most_forgotten(torch.tensor([1, 2]), fraction)


def test_a_ranking_needs_every_example_presented_and_a_vector_of_counts():
    partial = feed(ForgettingEvents(3), [([0, 1], [True, False], 0)]).result()
    with pytest.raises(ValueError, match="never presented"):
        most_forgotten(partial, 0.5)
    with pytest.raises(ValueError, match="real vector"):
        most_forgotten(torch.zeros(2, 2), 0.5)


def test_the_split_without_the_most_forgotten_keeps_the_others_in_order():
    split = Split(torch.arange(12.0).reshape(6, 2), torch.arange(6))
    kept = without_examples(split, torch.tensor([4, 1, 4]))
    assert kept.y.tolist() == [0, 2, 3, 5] and torch.equal(kept.x, split.x[[0, 2, 3, 5]])
    assert len(without_examples(split, [])) == 6
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        without_examples(split, [6])
    with pytest.raises(ValueError, match="integer positions"):
        without_examples(split, torch.tensor([0.0]))


# --- A real training --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0, train_size=TRAIN_SIZE)


def tiny_mlp(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("mlp", (1, 8, 8), 10, depth=1, width=16)


def train_config(**overrides) -> TrainConfig:
    return TrainConfig(**{"epochs": EPOCHS, "batch_size": BATCH, "lr": 0.1, "momentum": 0.9, **overrides})


def outcomes_recorder(steps: list):
    """A callback keeping each step's (positions, correct, epoch), for the replay."""

    def record(step: TrainStep) -> None:
        steps.append((step.index.tolist(), (step.output.argmax(1) == step.target).tolist(), step.epoch))

    return record


def test_a_digits_training_counts_every_example_once_per_epoch_and_repeats_exactly(digits):
    def run():
        cb, steps = ForgettingEvents(len(digits.train), digits.device), []
        train(tiny_mlp(), digits, train_config(), seed=3, progress=False, callbacks=[cb, outcomes_recorder(steps)])
        return cb.result(), steps

    result, steps = run()
    again, _ = run()
    assert result.presentations.tolist() == [EPOCHS] * TRAIN_SIZE
    assert as_lists(result) == replay(TRAIN_SIZE, steps)
    assert result.events_per_epoch[0] == 0, "no event is possible at a first presentation"
    assert int(result.events_per_epoch.sum()) == int(result.counts.sum())
    assert bool((result.counts <= EPOCHS // 2).all()), "an event needs a correct presentation before it"
    assert result.never_learned_fraction < 0.5 < result.unforgettable_fraction + result.forgotten_fraction
    assert result.unforgettable_fraction + result.forgotten_fraction + result.never_learned_fraction == pytest.approx(
        1.0
    )
    assert as_lists(again) == as_lists(result), "the same seeds give the same counts"

    removed = most_forgotten(result, 0.1)
    subset = dataset_without(digits, removed)
    assert len(subset.train) == TRAIN_SIZE - 30 and subset.val is digits.val and subset.test is digits.test
    key = torch.where(result.learned, result.counts, torch.full_like(result.counts, EPOCHS))
    assert key[removed].min() >= key[least_forgotten(result, 0.9)].max(), "the removed are the most forgotten"


def test_a_training_resumed_from_its_checkpoint_counts_as_an_uninterrupted_one(digits, tmp_path):
    per_epoch = iterations_per_epoch(len(digits.train), BATCH)

    def callbacks(model):
        return [ForgettingEvents(len(digits.train), digits.device), EpochErrors(model, digits.train, per_epoch)]

    model = tiny_mlp()
    whole = callbacks(model)
    train(model, digits, train_config(), seed=3, progress=False, callbacks=whole)

    model = tiny_mlp()
    first = callbacks(model)
    checkpoint = tmp_path / "checkpoint.pt"
    train(
        model,
        digits,
        train_config(),
        seed=3,
        progress=False,
        callbacks=first,
        end_iteration=per_epoch + 2,
        checkpoint_path=checkpoint,
    )
    model = tiny_mlp(seed=1)  # the resumed model starts elsewhere; its initial error is the checkpoint's
    resumed = callbacks(model)
    train(
        model,
        digits,
        train_config(),
        seed=3,
        progress=False,
        callbacks=resumed,
        checkpoint_path=checkpoint,
        resume=True,
    )
    assert as_lists(resumed[0].result()) == as_lists(whole[0].result())
    assert resumed[1].errors == whole[1].errors and len(whole[1].errors) == EPOCHS + 1


# --- Convergence speed ------------------------------------------------------------------------------------


@pytest.mark.parametrize("epochs", [1, 2, 5, 10])
def test_instant_convergence_is_1_and_a_linear_drop_is_its_mean_fraction(epochs):
    instant = [0.9] + [0.1] * epochs
    assert convergence_speed(instant) == pytest.approx(1.0)
    linear = [0.9 - 0.8 * ep / epochs for ep in range(epochs + 1)]
    assert convergence_speed(linear) == pytest.approx((epochs + 1) / (2 * epochs))
    by_hand = sum(i / epochs for i in range(1, epochs + 1)) / epochs
    assert convergence_speed(torch.tensor(linear, dtype=torch.float64)) == pytest.approx(by_hand)


def test_convergence_speed_of_a_curve_worked_out_by_hand():
    # drop 0.5: fractions 1, 2, 1 -> 4/3 (an epoch below the final error counts more than the whole drop)
    assert convergence_speed([1.0, 0.5, 0.0, 0.5]) == pytest.approx(4 / 3)
    # drop 0.4: fractions -0.5, 0.5, 1 -> 1/3 (an epoch above the initial error counts negatively)
    assert convergence_speed([0.6, 0.8, 0.4, 0.2]) == pytest.approx(1 / 3)


def test_a_drop_that_is_not_positive_is_nan_or_an_error_and_bad_curves_are_refused():
    assert math.isnan(convergence_speed([0.5, 0.3, 0.5]))
    assert math.isnan(convergence_speed([0.5, 0.6]))
    with pytest.raises(ValueError, match="did not drop"):
        convergence_speed([0.5, 0.3, 0.5], strict=True)
    with pytest.raises(ValueError, match="at least one epoch"):
        convergence_speed([0.5])
    with pytest.raises(ValueError, match="finite"):
        convergence_speed([0.5, float("nan"), 0.1])


def test_epoch_errors_from_the_validation_records_match_the_callback_and_leave_training_unchanged(digits, tmp_path):
    per_epoch = iterations_per_epoch(len(digits.train), BATCH)
    cfg = train_config(epochs=EPOCHS + 0.5)  # a last half epoch: its record is not a whole epoch
    plain = tiny_mlp()
    train(plain, digits, cfg, seed=3, progress=False)
    model = tiny_mlp()
    initial = 1 - evaluate(model, digits.val)[1]
    cb = EpochErrors(model, digits.val, per_epoch)
    result = train(model, digits, cfg, seed=3, progress=False, callbacks=[cb], metrics_path=tmp_path / "m.jsonl")
    for key, value in plain.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), f"{key}: evaluating after each epoch changed training"
    assert cb.initial_error == initial
    errors = epoch_errors(result.history, initial)
    assert errors == epoch_errors(tmp_path / "m.jsonl", initial)
    assert len(errors) == EPOCHS + 1
    assert errors == pytest.approx(cb.errors, abs=1e-12)
    assert errors[-1] < errors[0] - 0.3, "precondition: the network learns"
    assert 0 < convergence_speed(errors) <= 1.5
    sparse = [r for r in result.history if r["iteration"] != 2 * per_epoch]
    with pytest.raises(ValueError, match=r"whole epochs \[1, 3, 4\]"):
        epoch_errors(sparse, initial)


def test_epoch_errors_need_a_classification_and_a_whole_epoch():
    with pytest.raises(ValueError, match="no validation accuracy"):
        epoch_errors([{"epoch": 1.0, "val_accuracy": None}], 0.5)
    with pytest.raises(ValueError, match="whole epochs"):
        epoch_errors([{"epoch": 0.5, "val_accuracy": 0.9}], 0.5)
    with pytest.raises(ValueError, match="floating targets"):
        EpochErrors(tiny_mlp(), Split(torch.zeros(2, 64), torch.zeros(2, 1)), 1)


# --- DDP --------------------------------------------------------------------------------------------------

WORLD = 2
DDP_TRAIN_SIZE = 76  # batches of 33, 33, 10: shards of 17 and 16, then 5 and 5


def ddp_worker(rank, port, data, cfg, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        synced, own, steps = ForgettingEvents(len(data.train)), ForgettingEvents(len(data.train), sync=False), []
        train(
            DistributedDataParallel(tiny_mlp()),
            data,
            cfg,
            seed=3,
            progress=False,
            callbacks=[synced, own, outcomes_recorder(steps)],
        )
        torch.save(
            {"synced": as_lists(synced.result()), "own": as_lists(own.result()), "steps": steps},
            out_dir / f"out{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_under_ddp_synced_counts_are_the_whole_training_sets_and_unsynced_the_shards(free_port, digits, tmp_path):
    data = dataclasses.replace(digits, train=Split(digits.train.x[:DDP_TRAIN_SIZE], digits.train.y[:DDP_TRAIN_SIZE]))
    cfg = train_config(epochs=3, batch_size=33)
    import torch._dynamo  # noqa: F401  (imported once before forking, as tests/train/test_distributed.py does)

    mp.start_processes(ddp_worker, args=(free_port, data, cfg, tmp_path), nprocs=WORLD, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"out{rank}.pt", weights_only=False) for rank in range(WORLD)]
    # the global batches: the ranks' shards of each step, joined
    joined = [(a[0] + b[0], a[1] + b[1], a[2]) for a, b in zip(ranks[0]["steps"], ranks[1]["steps"], strict=True)]
    assert ranks[0]["synced"] == ranks[1]["synced"] == replay(DDP_TRAIN_SIZE, joined)
    assert ranks[0]["synced"]["presentations"] == [3] * DDP_TRAIN_SIZE
    for rank in ranks:
        assert rank["own"] == replay(DDP_TRAIN_SIZE, rank["steps"])
        assert sum(rank["own"]["presentations"]) < 3 * DDP_TRAIN_SIZE, "a shard sees part of the examples"


def test_sync_without_a_process_group_is_an_error():
    with pytest.raises(RuntimeError, match="process group"):
        ForgettingEvents(3, sync=True)(step_of([0], [True]))


# --- On a GPU ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_the_gpu_the_update_reads_nothing_back_and_counts_as_on_the_cpu():
    steps = random_steps(1000, epochs=5, seed=7)
    on_cpu = feed(ForgettingEvents(1000), steps).result()
    gpu_steps = [step_of(index, correct, epoch, it) for it, (index, correct, epoch) in enumerate(steps, 1)]
    gpu_steps = [
        TrainStep(s.iteration, s.epoch, s.index.cuda(), s.output.cuda(), s.target.cuda(), s.loss.cuda())
        for s in gpu_steps
    ]
    cb = ForgettingEvents(1000, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in gpu_steps:
            cb(step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert as_lists(cb.result()) == as_lists(on_cpu)
