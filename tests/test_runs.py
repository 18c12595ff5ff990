"""``lth_sparse.runs``: atomic writes (a crash keeps the old file), the run directory's config and hash,
the refusal of another config or kind, fields outside the identity, and finished steps."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from lth_sparse import runs
from lth_sparse.pipelines.imp import ImpConfig
from lth_sparse.runs import (
    ConfigMismatch,
    RunDir,
    atomic_torch_save,
    atomic_write_json,
    config_hash,
    config_identity,
    read_json,
)


class Crash(RuntimeError):
    """What the monkeypatched writers raise: a process dying in the middle of a write."""


def listing(directory) -> list[str]:
    return sorted(os.listdir(directory))


# --- atomic writes --------------------------------------------------------------------------------------------

def test_atomic_write_json_writes_the_object_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    atomic_write_json(path, {"rounds": [{"round": 0, "shape": (2, 3)}], "path": tmp_path})
    assert read_json(path) == {"rounds": [{"round": 0, "shape": [2, 3]}], "path": str(tmp_path)}
    atomic_write_json(path, {"rounds": []})
    assert read_json(path) == {"rounds": []}
    assert listing(path.parent) == ["summary.json"]


def test_atomic_write_json_refuses_what_json_cannot_hold_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"old": True})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"new": object()})
    assert read_json(path) == {"old": True}


@pytest.mark.parametrize("crash_in", ["fsync", "replace"])
def test_a_crash_while_writing_json_keeps_the_old_file(tmp_path, monkeypatch, crash_in):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"version": 1})

    def crash(*args, **kwargs):
        raise Crash(crash_in)

    with monkeypatch.context() as patch:
        patch.setattr(runs.os, crash_in, crash)
        with pytest.raises(Crash):
            atomic_write_json(path, {"version": 2, "payload": list(range(1000))})
    assert read_json(path) == {"version": 1}
    # The next write after the crash succeeds and leaves only the file.
    atomic_write_json(path, {"version": 3})
    assert read_json(path) == {"version": 3}
    assert listing(tmp_path) == ["summary.json"]


def test_atomic_torch_save_round_trips_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "round_1" / "rewind.pt"
    state = {"fc1.weight": torch.randn(3, 4), "fc1.mask": torch.rand(3, 4) < 0.5, "iteration": 7}
    atomic_torch_save(path, state)
    loaded = torch.load(path)
    assert loaded.keys() == state.keys()
    assert torch.equal(loaded["fc1.weight"], state["fc1.weight"])
    assert torch.equal(loaded["fc1.mask"], state["fc1.mask"])
    assert loaded["iteration"] == 7
    assert listing(path.parent) == ["rewind.pt"]


def test_a_crash_in_the_middle_of_torch_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "rewind.pt"
    old = {"w": torch.arange(6.0)}
    atomic_torch_save(path, old)
    real_save = torch.save

    def save_half_then_crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:  # a torn file: half of it written
            handle.truncate(os.path.getsize(f) // 2)
        raise Crash("killed during torch.save")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", save_half_then_crash)
        with pytest.raises(Crash):
            atomic_torch_save(path, {"w": torch.zeros(1000)})
    assert torch.equal(torch.load(path)["w"], old["w"])
    atomic_torch_save(path, {"w": torch.ones(2)})
    assert torch.equal(torch.load(path)["w"], torch.ones(2))
    assert listing(tmp_path) == ["rewind.pt"]


def test_a_crash_before_the_rename_of_torch_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "rewind.pt"
    atomic_torch_save(path, {"w": torch.arange(3.0)})

    def crash(*args, **kwargs):
        raise Crash("replace")

    with monkeypatch.context() as patch:
        patch.setattr(runs.os, "replace", crash)
        with pytest.raises(Crash):
            atomic_torch_save(path, {"w": torch.zeros(3)})
    assert torch.equal(torch.load(path)["w"], torch.arange(3.0))


# --- run directory ---------------------------------------------------------------------------------------------

def small_config(**overrides) -> ImpConfig:
    base = dict(dataset="digits", model="mlp", rounds=2, epochs=1, milestones=(1.0, 2.0))
    base.update(overrides)
    return ImpConfig(**base)


def test_run_dir_writes_the_config_with_its_kind_and_hash(tmp_path):
    config = small_config()
    run = RunDir(tmp_path / "run", config, kind="imp")
    saved = read_json(tmp_path / "run" / "config.json")
    assert saved["kind"] == "imp"
    assert saved["hash"] == run.hash == config_hash(config)
    assert len(run.hash) == 16 and int(run.hash, 16) >= 0
    assert saved["config"] == json.loads(json.dumps(dataclasses.asdict(config)))
    assert run / "summary.json" == tmp_path / "run" / "summary.json"


def test_the_hash_depends_on_every_identity_field():
    base = small_config()
    assert config_hash(small_config()) == config_hash(base)
    for field, value in [("fraction", 0.3), ("seed", 1), ("lr", 0.05), ("milestones", (1.0,)), ("controls", True)]:
        assert config_hash(dataclasses.replace(base, **{field: value})) != config_hash(base), field


def test_fields_outside_the_identity_do_not_change_the_hash(tmp_path):
    base = small_config(rounds=2)
    assert "rounds" not in config_identity(base) and "device" not in config_identity(base)
    for field, value in [("rounds", 10), ("device", "cuda"), ("data_dir", "/data")]:
        assert config_hash(dataclasses.replace(base, **{field: value})) == config_hash(base), field
    RunDir(tmp_path, base, kind="imp")
    more_rounds = RunDir(tmp_path, dataclasses.replace(base, rounds=10), kind="imp")  # resuming with more rounds
    assert more_rounds.hash == config_hash(base)


def test_the_same_config_is_accepted_again_and_finds_its_finished_steps(tmp_path):
    first = RunDir(tmp_path, small_config(), kind="imp")
    first.mark_done("round_0", {"test_accuracy": 0.9})
    again = RunDir(tmp_path, small_config(), kind="imp")
    assert again.hash == first.hash
    assert again.is_done("round_0")
    assert again.result("round_0") == {"test_accuracy": 0.9}


def test_another_config_is_refused_naming_the_field_and_both_values(tmp_path):
    RunDir(tmp_path, small_config(fraction=0.2), kind="imp")
    with pytest.raises(ConfigMismatch) as error:
        RunDir(tmp_path, small_config(fraction=0.35), kind="imp")
    message = str(error.value)
    assert "fraction" in message and "0.2" in message and "0.35" in message
    assert "seed" not in message, "only the differing fields are named"
    assert read_json(tmp_path / "config.json")["config"]["fraction"] == 0.2, "the refused run writes nothing"


def test_a_refusal_names_every_differing_field_including_tuples(tmp_path):
    RunDir(tmp_path, small_config(), kind="imp")
    with pytest.raises(ConfigMismatch) as error:
        RunDir(tmp_path, small_config(milestones=(3.0,), optimizer="adam"), kind="imp")
    message = str(error.value)
    for text in ("milestones", "[1.0, 2.0]", "[3.0]", "optimizer", "'sgd'", "'adam'"):
        assert text in message, text


def test_a_run_of_another_kind_is_refused(tmp_path):
    RunDir(tmp_path, small_config(), kind="imp")
    with pytest.raises(ConfigMismatch) as error:
        RunDir(tmp_path, small_config(), kind="ticket-transfer")
    assert "'imp'" in str(error.value) and "'ticket-transfer'" in str(error.value)
    assert read_json(tmp_path / "config.json")["kind"] == "imp"


def test_mark_done_is_done_and_result_round_trip(tmp_path):
    run = RunDir(tmp_path, small_config(), kind="imp")
    assert not run.is_done("round_1")
    step = run.step_dir("round_1")
    assert step.is_dir() and step == tmp_path / "round_1"
    result = {"round": 1, "sparsity": 0.2, "layer_sparsity": {"fc1.weight": 0.2}, "milestones": (1, 2)}
    run.mark_done("round_1", result)
    assert run.is_done("round_1")
    assert not run.is_done("round_2")
    assert run.result("round_1") == {"round": 1, "sparsity": 0.2, "layer_sparsity": {"fc1.weight": 0.2},
                                     "milestones": [1, 2]}
    assert listing(step) == ["done.json"]
