"""``lth_sparse.runs``: atomic writes (a crash keeps the old file), the run directory's config and hash,
the refusal of another config or kind, fields outside the identity, and finished steps."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import pytest
import torch

from lth_sparse import runs
from lth_sparse.pipelines.imp import ImpConfig
from lth_sparse.runs import (
    LOCK_FILE,
    ConfigMismatch,
    RunBusy,
    RunDir,
    RunLock,
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


def refuse_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")


def test_atomic_write_json_writes_strict_json_where_a_float_is_not_finite(tmp_path):
    path = tmp_path / "summary.json"
    nan, inf = float("nan"), float("inf")
    atomic_write_json(path, {"val_loss": nan, "rounds": [{"best_val_loss": inf, "x": -inf, "y": 0.1}], "t": (nan, 2)})
    assert json.loads(path.read_text(), parse_constant=refuse_constant) == {
        "val_loss": None,
        "rounds": [{"best_val_loss": None, "x": None, "y": 0.1}],
        "t": [None, 2],
    }


def test_atomic_write_json_writes_finite_values_as_json_dumps_does(tmp_path):
    obj = {"b": 0.1 + 0.2, "a": [1, 2.5e-07, True, None, "x"], "shape": (2, 3), "path": tmp_path, "t": torch.ones(2)}
    atomic_write_json(tmp_path / "f.json", obj)
    expected = json.dumps(obj, indent=2, default=runs.json_default) + "\n"
    assert (tmp_path / "f.json").read_text() == expected


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
    # The hash is the first 16 hex digits of the SHA-256 of the schema and the identity fields that differ
    # from their defaults, as sorted JSON.
    changed = {"dataset": "digits", "model": "mlp", "epochs": 1, "milestones": [1.0, 2.0]}
    canonical = json.dumps({"schema": 2, "fields": changed}, sort_keys=True)
    assert run.hash == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert saved["schema"] == runs.HASH_SCHEMA == 2
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
    RunDir(tmp_path, small_config(fraction=0.2), kind="imp").mark_done("round_00", {})
    with pytest.raises(ConfigMismatch) as error:
        RunDir(tmp_path, small_config(fraction=0.35), kind="imp")
    message = str(error.value)
    assert "fraction" in message and "0.2" in message and "0.35" in message
    assert "seed" not in message, "only the differing fields are named"
    assert read_json(tmp_path / "config.json")["config"]["fraction"] == 0.2, "the refused run writes nothing"


def test_a_run_hashed_against_other_defaults_resumes_with_the_same_values(tmp_path):
    """The hash counts the fields that differ from their defaults, so moving a default (plant's pruning batch, 256
    then 40) changes the hash of a run made with the old value; given that value explicitly, the run resumes: the
    same values of every identity field are the same experiment. Its config.json then holds today's hash."""
    RunDir(tmp_path, small_config(fraction=0.2), kind="imp").mark_done("round_00", {"x": 1})
    saved = read_json(tmp_path / "config.json")
    saved["hash"] = "0" * 16  # as if hashed when some default was another value
    (tmp_path / "config.json").write_text(json.dumps(saved))
    again = RunDir(tmp_path, small_config(fraction=0.2), kind="imp")
    assert again.is_done("round_00") and again.replacing is None
    assert read_json(tmp_path / "config.json")["hash"] == again.hash
    with pytest.raises(ConfigMismatch, match="fraction"):
        RunDir(tmp_path, small_config(fraction=0.35), kind="imp")


def test_a_refusal_names_every_differing_field_including_tuples(tmp_path):
    RunDir(tmp_path, small_config(), kind="imp").mark_done("round_00/control_reinit", {})
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
    assert run.result("round_1") == {
        "round": 1,
        "sparsity": 0.2,
        "layer_sparsity": {"fc1.weight": 0.2},
        "milestones": [1, 2],
    }
    assert listing(step) == ["done.json"]


def test_a_run_of_another_config_with_no_finished_step_is_replaced_when_claimed(tmp_path):
    old = RunDir(tmp_path, small_config(fraction=0.2), kind="imp")
    (old.step_dir("round_00") / "metrics.jsonl").write_text("{}\n")  # a killed first round
    atomic_torch_save(tmp_path / "init.pt", {"w": torch.zeros(2)})
    new = RunDir(tmp_path, small_config(fraction=0.35), kind="imp", claim=False)
    assert "fraction: 0.2 there, 0.35 now" in new.replacing
    assert listing(tmp_path) == ["config.json", "init.pt", "round_00"], "nothing is touched before the claim"
    new.claim()
    assert listing(tmp_path) == ["config.json"]
    assert read_json(tmp_path / "config.json")["config"]["fraction"] == 0.35


def test_a_run_lock_refuses_a_second_holder_at_once_naming_the_directory_and_the_holder(tmp_path):
    run = tmp_path / "run"
    with RunLock(run) as lock:
        assert lock.held and (run / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunBusy, match=rf"{run} is in use by another process \(pid {os.getpid()}\)"):
            RunLock(run).acquire()
    with RunLock(run) as again:  # released: the next holder takes it
        assert again.held


def test_replacing_an_unfinished_run_keeps_the_lock_its_claimer_holds(tmp_path):
    RunDir(tmp_path, small_config(fraction=0.2), kind="imp")
    with RunLock(tmp_path):
        RunDir(tmp_path, small_config(fraction=0.35), kind="imp")
        assert listing(tmp_path) == ["config.json", LOCK_FILE]
        with pytest.raises(RunBusy):
            RunLock(tmp_path).acquire()


def test_a_deferred_claim_writes_nothing_until_claimed(tmp_path):
    run = RunDir(tmp_path / "run", small_config(), kind="imp", claim=False)
    assert not (tmp_path / "run").exists()
    run.claim()
    assert listing(tmp_path / "run") == ["config.json"]


def test_a_file_given_as_the_run_directory_is_refused(tmp_path):
    (tmp_path / "out").write_text("not a run")
    with pytest.raises(NotADirectoryError, match="is a file"):
        RunDir(tmp_path / "out", small_config(), kind="imp")


def test_an_unreadable_config_json_is_refused_not_overwritten(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigMismatch, match="not a run's config"):
        RunDir(tmp_path, small_config(), kind="imp")
    assert (tmp_path / "config.json").read_text() == "{not json"


@dataclasses.dataclass(frozen=True)
class _Old:
    lr: float = 0.1


@dataclasses.dataclass(frozen=True)
class _New:
    lr: float = 0.1
    precision: str = dataclasses.field(default="fp32", metadata={"since": "0.2"})


def test_a_field_added_later_keeps_old_hashes_while_it_holds_its_default():
    assert config_hash(_New()) == config_hash(_Old())
    assert config_hash(_New(precision="bf16")) != config_hash(_Old())
    assert "precision" in config_identity(_New(precision="bf16"))


def test_atomic_write_calls_the_writer_on_a_temporary_file_and_renames_it(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.name != "masks.bin"
        tmp.write_bytes(b"abc")

    assert runs.atomic_write(tmp_path / "masks.bin", write) == tmp_path / "masks.bin"
    assert (tmp_path / "masks.bin").read_bytes() == b"abc"
    assert not seen[0].exists() and listing(tmp_path) == ["masks.bin"]


def test_every_atomic_writer_of_the_package_goes_through_one_writer(tmp_path, monkeypatch):
    """Masks.save, the data cache and the benchmarks' JSON use atomic.atomic_write (one writer, with fsync)."""
    from lth_sparse import atomic
    from lth_sparse.data import cache
    from lth_sparse.masks import Masks

    calls = []
    real = atomic.atomic_write

    def counting(path, write):
        calls.append(os.path.basename(path))
        return real(path, write)

    monkeypatch.setattr(atomic, "atomic_write", counting)
    Masks({"fc.weight": torch.ones(2, 2, dtype=torch.bool)}).save(tmp_path / "masks.safetensors")
    cache.cached_tensors(tmp_path, "k1", lambda: {"x": torch.zeros(1)})
    assert calls == ["masks.safetensors", "k1.pt"]


def test_the_hash_of_the_default_imp_config_is_pinned():
    """Adding an option (at its default) must never change this: every existing run would refuse to resume."""
    assert config_hash(ImpConfig()) == "a37f6220ae99cd04"
    assert config_hash(ImpConfig(rounds=20, device="cuda", threads=3)) == "a37f6220ae99cd04", "outside the identity"
    assert config_hash(ImpConfig(lr=0.1)) != "a37f6220ae99cd04"


def test_a_directory_of_another_hash_rule_is_refused_with_the_rule_named(tmp_path):
    record = {
        "kind": "imp",
        "hash": config_hash(small_config()),
        "schema": 1,
        "config": json.loads(json.dumps(dataclasses.asdict(small_config()))),
    }
    (tmp_path / "config.json").write_text(json.dumps(record))
    with pytest.raises(ConfigMismatch, match="hashed by rule 1, not by this version's rule 2"):
        RunDir(tmp_path, small_config(), kind="imp")


def test_every_file_gets_the_mode_the_umask_gives_whatever_wrote_it(tmp_path):
    """safetensors creates its file 0600; through atomic_write, masks get the umask's mode like every run file."""
    from lth_sparse.atomic import atomic_write_json
    from lth_sparse.masks import Masks

    previous = os.umask(0o027)
    try:
        Masks({"fc.weight": torch.ones(2, 2, dtype=torch.bool)}).save(tmp_path / "masks.safetensors")
        atomic_write_json(tmp_path / "done.json", {"a": 1})
    finally:
        os.umask(previous)
    assert oct((tmp_path / "masks.safetensors").stat().st_mode & 0o777) == oct(0o640)
    assert oct((tmp_path / "done.json").stat().st_mode & 0o777) == oct(0o640)


def test_a_default_moved_since_a_run_was_made_is_refused_not_resumed_under_the_new_one(tmp_path):
    """Equal hashes, other values: a run made when a default was another value (here fraction's, as if 0.3 then)
    hashes like today's defaults, but its finished rounds were made with the old value: resuming it under the new
    one would mix the two, so it is refused, naming the field; given the old value, it resumes."""
    RunDir(tmp_path, small_config(), kind="imp").mark_done("round_00", {"x": 1})
    saved = read_json(tmp_path / "config.json")
    saved["config"]["fraction"] = 0.3  # what the default was when it ran: the hash is that of all defaults
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigMismatch) as error:
        RunDir(tmp_path, small_config(), kind="imp")
    assert "fraction: 0.3 there, 0.2 now" in str(error.value) and "a default has changed" in str(error.value)
    assert RunDir(tmp_path, small_config(fraction=0.3), kind="imp").is_done("round_00")


def test_a_field_a_saved_config_predates_means_what_the_code_did_then(tmp_path):
    """plant's --planting came with the reference planting as its default; runs made before it were planted the
    exact way, which its `absent` value says: read back as exact, refused under the new default."""
    from lth_sparse.config import config_from_options
    from lth_sparse.pipelines.plant import PlantConfig

    RunDir(tmp_path, PlantConfig(), kind="plant").mark_done("unit", {"x": 1})
    saved = read_json(tmp_path / "config.json")
    del saved["config"]["planting"]  # as written before the option existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert config_from_options(PlantConfig, saved["config"], presets=False).planting == "exact"
    assert config_from_options(PlantConfig, {}).planting == "reference", "a new run: the default"
    with pytest.raises(ConfigMismatch, match="planting: 'exact' there, 'reference' now"):
        RunDir(tmp_path, PlantConfig(), kind="plant")
    assert RunDir(tmp_path, PlantConfig(planting="exact"), kind="plant").is_done("unit")
