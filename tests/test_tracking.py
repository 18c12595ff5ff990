"""Experiment trackers, offline and for real: a tiny IMP run on the 8x8 digits sent to TensorBoard, W&B (offline)
and MLflow (a SQLite store), read back with each tracker's own reader, and the bad input the option can meet."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import socket
import struct
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from lth_sparse.cli import main
from lth_sparse.pipelines import imp
from lth_sparse.pipelines.common import stack_key
from lth_sparse.runs import config_hash
from lth_sparse.tracking import (
    TRACKERS,
    TrackerFailed,
    TrackingSpec,
    figures,
    parse_trackers,
    record_validation,
    resolve_wandb_mode,
    track_units,
)
from lth_sparse.units import unit_identity

TINY = dict(
    dataset="digits", model="lenet300", epochs=1, batch_size=64, lr=0.05, rounds=1, train_size=200, eval_every=2
)
FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
RECORD_KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy", "lr")


def metrics(unit_dir: Path) -> dict[str, list[dict]]:
    """The validation records of every training of a unit, by its folder (``round_00``, ...)."""
    return {
        path.parent.name: [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(unit_dir.glob("*/metrics.jsonl"))
    }


def offline_env(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    """No W&B credentials, no W&B or MLflow settings of the machine's: W&B's files under ``tmp``."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "MLFLOW_TRACKING_URI"):
        mp.delenv(name, raising=False)
    mp.setenv("NETRC", str(tmp / "no-netrc"))
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        mp.setenv(name, str(tmp / "wandb-home"))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One IMP run of two seeds (rounds 0 and 1) from the command line to all three trackers, its units in two
    process workers, W&B asked to log online without credentials (it falls back to offline)."""
    for package in ("tensorboard", "wandb", "mlflow"):
        pytest.importorskip(package)
    tmp = tmp_path_factory.mktemp("tracked")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        offline_env(mp, tmp)
        code = main(
            ["imp", *FLAGS, "--seeds=2", "--stack=1", "--executor=process", "--workers=2", "--threads=1"]
            + ["--tracker", "tensorboard,wandb,mlflow", "--out", str(tmp / "run")]
        )
    assert code == 0, out.getvalue()
    run = tmp / "run"
    saved = json.loads((run / "config.json").read_text())
    return SimpleNamespace(
        run=run,
        log=out.getvalue().splitlines(),
        hash=saved["hash"],
        config=saved["config"],
        summary=json.loads((run / "summary.json").read_text()),
        done={s: json.loads((run / f"seed_{s}" / "done.json").read_text()) for s in (0, 1)},
        metrics={s: metrics(run / f"seed_{s}") for s in (0, 1)},
    )


def summary_figures(summary: dict) -> dict[str, float]:
    return figures({k: v for k, v in summary.items() if k != "config"})


def identity(run_hash: str, seed: int) -> dict:
    """The tags of seed ``seed``'s unit of an IMP run."""
    unit = {"unit": f"IMP seed {seed}", "directory": f"seed_{seed}", "seed": seed}
    return {"pipeline": "imp", "run_hash": run_hash, **unit}


def test_tensorboard_event_files_hold_the_curves_identity_config_and_summary(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    group = tracked.run / "tracking" / "tensorboard" / f"imp-{tracked.hash}"
    assert sorted(p.name for p in group.iterdir()) == ["_run", "seed_0", "seed_1"]

    def read(folder: Path):
        (attempt,) = folder.iterdir()  # one attempt: one TensorBoard run
        events = EventAccumulator(str(attempt), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
        events.Reload()
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        return events, {key: value.ListFields()[0][1] for key, value in hparams.items()}

    for seed in (0, 1):
        unit, tags = read(group / f"seed_{seed}")
        assert sorted(tracked.metrics[seed]) == ["round_00", "round_01"]
        for folder, records in tracked.metrics[seed].items():
            for key in RECORD_KEYS:
                scalars = unit.Scalars(f"{folder}/{key}")
                assert [s.step for s in scalars] == [r["iteration"] for r in records]
                assert [s.value for s in scalars] == pytest.approx([r[key] for r in records], rel=1e-6)  # float32
        assert unit.Scalars("final/rounds/1/test_accuracy")[0].value == pytest.approx(
            tracked.done[seed]["rounds"][1]["test_accuracy"], rel=1e-6
        )
        assert tags == identity(tracked.hash, seed)
    assert tracked.metrics[0] != tracked.metrics[1]  # two seeds: two curves

    run, hyperparameters = read(group / "_run")
    assert hyperparameters["lr"] == 0.05 and hyperparameters["rounds"] == 1 and hyperparameters["dataset"] == "digits"
    assert hyperparameters["tracker"] == str(["tensorboard", "wandb", "mlflow"])
    headline = summary_figures(tracked.summary)
    assert headline and all(
        run.Scalars(f"summary/{key}")[0].value == pytest.approx(value, rel=1e-6) for key, value in headline.items()
    )
    assert sorted(run.Tags()["images"]) == ["plots/accuracy_vs_remaining", "plots/layer_sparsity"]
    image = run.Images("plots/layer_sparsity")[0]
    assert image.encoded_image_string == (tracked.run / "plots" / "layer_sparsity.png").read_bytes()


def wandb_records(path: Path) -> list:
    """The records of a W&B run's transaction log (``run-ID.wandb``): W&B's protobuf records in the LevelDB log
    format (a 7-byte header ``:W&B``, magic, version; then 32 KiB blocks of chunks, each a 7-byte header: CRC,
    length, type 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    chunks, partial, position, block = [], b"", 7, 32768
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        else:
            chunks.append(partial + chunk)
    return [wandb_internal_pb2.Record.FromString(chunk) for chunk in chunks]


def wandb_runs(directory: Path) -> dict[str, SimpleNamespace]:
    """Each offline W&B run in ``directory``, by its name: its group, job type, config, history rows, summary and
    exit code, read back from its files."""

    def key(item) -> str:
        return item.key or "/".join(item.nested_key)

    runs = {}
    for path in directory.glob("offline-run-*/run-*.wandb"):
        run = SimpleNamespace(history=[], summary={}, config={}, exit_code=None)
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.name, run.group, run.job_type = record.run.display_name, record.run.run_group, record.run.job_type
                run.config.update({key(i): json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "history":
                run.history.append({key(i): json.loads(i.value_json) for i in record.history.item})
            elif kind == "summary":
                run.summary.update({key(i): json.loads(i.value_json) for i in record.summary.update})
            elif kind == "exit":
                run.exit_code = record.exit.exit_code
        runs[run.name] = run
    return runs


def test_wandb_falls_back_to_offline_once_and_its_run_files_hold_the_curves_identity_config_and_summary(tracked):
    warnings = [line for line in tracked.log if "W&B" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: W&B has no credentials")
    assert "logging offline" in warnings[0]
    runs = wandb_runs(tracked.run / "tracking" / "wandb")
    assert sorted(runs) == ["IMP seed 0", "IMP seed 1", f"imp-{tracked.hash}"]
    run = runs[f"imp-{tracked.hash}"]
    for seed in (0, 1):
        unit = runs[f"IMP seed {seed}"]
        assert (unit.group, unit.job_type) == (f"imp-{tracked.hash}", "unit")
        assert {k: unit.config[k] for k in identity(tracked.hash, seed)} == identity(tracked.hash, seed)
        for folder, records in tracked.metrics[seed].items():
            rows = [row for row in unit.history if f"{folder}/iteration" in row]
            assert [row[f"{folder}/iteration"] for row in rows] == [r["iteration"] for r in records]
            for key in RECORD_KEYS:
                assert [row[f"{folder}/{key}"] for row in rows] == [r[key] for r in records]  # exact: JSON both ways
        assert unit.summary["final/rounds/1/test_accuracy"] == tracked.done[seed]["rounds"][1]["test_accuracy"]
        assert unit.exit_code == 0
    assert (run.group, run.job_type, run.exit_code) == (f"imp-{tracked.hash}", "run", 0)
    assert {k: run.config[k] for k in ("lr", "rounds", "dataset", "tracker", "seeds")} == {
        k: tracked.config[k] for k in ("lr", "rounds", "dataset", "tracker", "seeds")
    }
    assert all(run.summary[f"summary/{k}"] == v for k, v in summary_figures(tracked.summary).items())
    assert {"plots/accuracy_vs_remaining", "plots/layer_sparsity"} <= {k.split("/path")[0] for k in run.summary}


def test_mlflow_store_holds_the_curves_identity_config_and_summary(tracked):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tracked.run / 'tracking' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lth-sparse")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["IMP seed 0", "IMP seed 1", f"imp-{tracked.hash}"]
    run = runs[f"imp-{tracked.hash}"]
    for seed in (0, 1):
        unit = runs[f"IMP seed {seed}"]
        assert unit.data.tags["mlflow.parentRunId"] == run.info.run_id
        tags = {k: str(v) for k, v in identity(tracked.hash, seed).items()}
        assert {k: unit.data.tags[k] for k in tags} == tags
        for folder, records in tracked.metrics[seed].items():
            for key in RECORD_KEYS:
                history = sorted(client.get_metric_history(unit.info.run_id, f"{folder}/{key}"), key=lambda m: m.step)
                assert [(m.step, m.value) for m in history] == [(r["iteration"], r[key]) for r in records]
        assert unit.data.metrics["final/rounds/1/test_accuracy"] == tracked.done[seed]["rounds"][1]["test_accuracy"]
        assert unit.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.05" and run.data.params["dataset"] == "digits"
    assert set(run.data.params) == set(tracked.config)
    headline = summary_figures(tracked.summary)
    assert {k: run.data.metrics[f"summary/{k}"] for k in headline} == headline
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "plots")) == [
        "plots/accuracy_vs_remaining.png",
        "plots/layer_sparsity.png",
    ]
    assert run.info.status == "FINISHED"


def test_the_trackers_change_neither_the_hash_nor_the_stacking(tracked):
    plain = imp.ImpConfig(**TINY, seeds=(0, 1))
    chosen = dataclasses.replace(plain, tracker=("tensorboard", "wandb"), tracker_dir="/else", wandb_mode="offline")
    assert config_hash(chosen) == config_hash(plain) == tracked.hash
    assert stack_key(chosen) == stack_key(plain)


def test_from_the_api_each_member_of_a_stack_logs_its_own_curves(tmp_path, monkeypatch):
    """Two seeds trained as one stack, in process: each member's records go to its own unit's tracker run."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    offline_env(monkeypatch, tmp_path)
    config = imp.ImpConfig(**{**TINY, "rounds": 0}, seeds=(0, 1), stack=2, tracker="tensorboard")
    imp.run(config, tmp_path / "run", log=lambda line: None, plots=False)
    assert "a stack of 2" in (tmp_path / "run" / "seed_1" / "unit.log").read_text()
    group = tmp_path / "run" / "tracking" / "tensorboard" / f"imp-{config_hash(config)}"
    curves = []
    for seed in (0, 1):
        (attempt,) = (group / f"seed_{seed}").iterdir()
        events = EventAccumulator(str(attempt), size_guidance={"scalars": 0})
        events.Reload()
        (records,) = metrics(tmp_path / "run" / f"seed_{seed}").values()
        curves.append([(s.step, s.value) for s in events.Scalars("round_00/val_loss")])
        assert curves[-1] == [(r["iteration"], pytest.approx(r["val_loss"], rel=1e-6)) for r in records]
    assert curves[0] != curves[1]


def test_an_unknown_tracker_is_refused_naming_the_known_ones_and_nothing_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["imp", *FLAGS, "--tracker", "tensorboard,comet", "--out", str(tmp_path / "run")])
    assert exit.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "lth-sparse imp: error: argument --tracker: unknown tracker 'comet'; known: tensorboard, wandb, mlflow "
        "(or none)"
    )
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="unknown tracker 'neptune'"):
        imp.ImpConfig(tracker="neptune")


@pytest.mark.parametrize("tracker", TRACKERS)
def test_a_tracker_whose_package_is_missing_names_the_pip_command(tmp_path, capsys, monkeypatch, tracker):
    monkeypatch.setitem(sys.modules, tracker, None)  # import raises ImportError, as where it is not installed
    assert main(["imp", *FLAGS, "--tracker", tracker, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"lth-sparse imp: error: --tracker {tracker} needs the {tracker} package, which is not installed: "
        f"pip install 'lth_sparse[{tracker}]'"
    ]
    assert not (tmp_path / "run").exists()


def test_wandb_online_falls_back_to_offline_without_credentials_or_server(tmp_path, monkeypatch):
    offline_env(monkeypatch, tmp_path)
    said: list[str] = []
    assert resolve_wandb_mode("online", said.append) == "offline"
    assert len(said) == 1 and "no credentials" in said[0]
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    said.clear()
    assert resolve_wandb_mode("online", said.append) == "offline"
    assert len(said) == 1 and "127.0.0.1 cannot be reached" in said[0]
    with socket.socket() as server:  # a server that answers: online, nothing said
        server.bind(("127.0.0.1", 0))
        server.listen()
        answer = threading.Thread(target=lambda: server.accept()[0].close())
        answer.start()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        said.clear()
        assert resolve_wandb_mode("online", said.append) == "online" and said == []
        answer.join()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode("online", said.append) == "offline" and said == []
    assert resolve_wandb_mode("offline", said.append) == "offline" and said == []


def test_the_tracker_option_reads_a_comma_list_once_each():
    assert parse_trackers("mlflow,tensorboard,mlflow") == ("mlflow", "tensorboard")
    assert parse_trackers(["wandb"]) == ("wandb",)
    assert parse_trackers("none") == parse_trackers("") == ()
    assert imp.ImpConfig(tracker="wandb, mlflow").tracker == ("wandb", "mlflow")
    with pytest.raises(ValueError, match="wandb_mode"):
        imp.ImpConfig(wandb_mode="cloud")


def test_a_unit_is_told_apart_by_the_plain_values_of_its_arguments_and_its_configs_seed():
    @dataclasses.dataclass(frozen=True)
    class Spec:
        config: imp.ImpConfig
        round: int
        control: str
        masks: tuple = ()

    assert unit_identity(Spec(imp.ImpConfig(seed=3), 2, "random")) == {"seed": 3, "round": 2, "control": "random"}
    assert unit_identity(imp.ImpConfig(seed=5, lr=0.3)) == {"seed": 5}
    assert unit_identity("anything else") == {}


def test_records_outside_a_tracked_unit_go_nowhere(tmp_path):
    record_validation(tmp_path / "metrics.jsonl", {"iteration": 1, "val_loss": 0.5})  # no tracker open: no error
    assert figures({"a": [1, {"b": 2.5, "c": True, "d": None, "e": float("nan")}], "f": "text"}) == {
        "a/0": 1,
        "a/1/b": 2.5,
    }


def test_a_unit_that_raises_closes_its_tracker_run_as_failed_with_the_records_of_its_own_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    offline_env(monkeypatch, tmp_path)
    spec = TrackingSpec(("wandb",), str(tmp_path / "tracking"), "p", "imp", "0123", str(tmp_path / "run"))
    unit = tmp_path / "run" / "seed_0"
    with pytest.raises(RuntimeError, match="diverged"), track_units([(spec, unit, "IMP seed 0", {"seed": 0})]):
        record_validation(unit / "round_00" / "metrics.jsonl", {"iteration": 2, "val_loss": 0.5, "val_accuracy": None})
        record_validation(tmp_path / "run" / "seed_1" / "metrics.jsonl", {"iteration": 2, "val_loss": 9.0})
        record_validation(unit / "metrics.jsonl", {"iteration": 4, "val_loss": 0.25})
        raise RuntimeError("diverged")
    (run,) = wandb_runs(tmp_path / "tracking" / "wandb").values()
    assert (run.name, run.group, run.exit_code) == ("IMP seed 0", "imp-0123", 1)
    assert [{k: v for k, v in row.items() if not k.startswith("_")} for row in run.history] == [
        {"round_00/iteration": 2, "round_00/val_loss": 0.5},
        {"train/iteration": 4, "train/val_loss": 0.25},
    ]


def test_a_tracker_that_fails_is_said_once_and_dropped_while_the_training_and_the_others_go_on(tmp_path, monkeypatch):
    """A tracker's failure (its server gone, its database locked) must not fail the training it watches: the
    failing tracker is warned once and left out, the other trackers keep every record, the run finishes."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    offline_env(monkeypatch, tmp_path)
    calls = []

    def broken(self, values, step):
        calls.append(step)
        raise OSError("database is locked")

    monkeypatch.setattr("lth_sparse.tracking._TensorBoard.curve", broken)
    config = imp.ImpConfig(**{**TINY, "rounds": 1}, tracker="tensorboard,mlflow")
    with pytest.warns(TrackerFailed) as said:
        summary = imp.run(config, tmp_path / "run", log=lambda line: None, plots=False)
    assert len(summary["rounds"]) == 2 and (tmp_path / "run" / "seed_0" / "done.json").exists()
    # once per tracker run (the unit's, then the run's with its summary), each then dropped
    messages = [str(w.message) for w in said]
    assert len(messages) == len(calls) == 2, messages
    assert "tensorboard failed for 'IMP seed 0' (OSError: database is locked)" in messages[0]
    assert f"tensorboard failed for 'imp-{config_hash(config)}'" in messages[1]
    records = [r for rows in metrics(tmp_path / "run" / "seed_0").values() for r in rows]
    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'tracking' / 'mlflow.db'}")
    (unit,) = [r for r in client.search_runs([client.get_experiment_by_name("lth-sparse").experiment_id])
               if r.data.tags.get("unit") == "IMP seed 0"]  # fmt: skip
    logged = client.get_metric_history(unit.info.run_id, "round_00/val_loss")
    assert len(logged) + len(client.get_metric_history(unit.info.run_id, "round_01/val_loss")) == len(records)


def test_wandb_mode_disabled_is_honoured(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    said: list[str] = []
    assert resolve_wandb_mode("online", said.append) == "disabled" and said == []


def test_running_a_finished_run_again_opens_no_new_tracker_run(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    offline_env(monkeypatch, tmp_path)
    config = imp.ImpConfig(**{**TINY, "rounds": 0}, tracker="tensorboard")
    imp.run(config, tmp_path / "run", log=lambda line: None, plots=False)
    folder = tmp_path / "run" / "tracking" / "tensorboard" / f"imp-{config_hash(config)}"
    before = sorted(p.relative_to(folder) for p in folder.rglob("events.out.tfevents.*"))
    lines: list[str] = []
    imp.run(config, tmp_path / "run", log=lines.append, plots=False)
    assert sorted(p.relative_to(folder) for p in folder.rglob("events.out.tfevents.*")) == before
    assert any("every unit is done already: no new tracker run" in line for line in lines)
