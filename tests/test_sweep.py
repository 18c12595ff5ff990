"""Sweeps (``lth-sparse sweep``): a grid of tiny IMP runs on the real 8x8 digits (offline)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from lth_sparse.cli import build_parser
from lth_sparse.errors import UserError
from lth_sparse.executors import LocalExecutor
from lth_sparse.pipelines import imp
from lth_sparse.rundata import load_run
from lth_sparse.runs import ConfigMismatch, RunBusy, RunLock, read_json
from lth_sparse.sweep import GridError, load_sweep, point_name, run_sweep, summary_rows, sweep_from_mapping
from lth_sparse.units import Stack

FIXED = {
    "dataset": "digits",
    "model": "mlp",
    "model_options": {"width": 16},
    "rounds": 1,
    "epochs": 1,
    "train_size": 300,
}
GRID = {"fraction": [0.2, 0.5], "seed": [0, 1]}
POINTS = ["fraction=0.2,seed=0", "fraction=0.2,seed=1", "fraction=0.5,seed=0", "fraction=0.5,seed=1"]


def write_grid(path: Path, fixed=None, grid=None, pipeline="imp") -> Path:
    path.write_text(
        yaml.safe_dump(
            {"pipeline": pipeline, "fixed": FIXED if fixed is None else fixed, "grid": GRID if grid is None else grid}
        )
    )
    return path


def without_timings(rounds: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("train_seconds")} for r in rounds]


def sweep_command(argv: list[str]):
    """``lth-sparse sweep ARGV`` through the subcommand's own parser (as cli.py registers it)."""
    args = build_parser().parse_args(["sweep", *argv])
    return args.func(args)


class RecordingExecutor(LocalExecutor):
    """The local executor, keeping the units of each ``run`` call."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.calls: list[list] = []

    def run(self, units, run_dir, **kwargs) -> None:
        self.calls.append(list(units))
        super().run(units, run_dir, **kwargs)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A 2 x 2 sweep (fraction x seed) run locally, and a plain IMP run of each point's config."""
    tmp = tmp_path_factory.mktemp("sweep")
    executor = RecordingExecutor()
    lines: list[str] = []
    table = run_sweep(
        load_sweep(write_grid(tmp / "grid.yaml")), tmp / "sweep", executor=executor, log=lines.append, plots=False
    )
    plain = {}
    for fraction, seed in ((0.2, 0), (0.2, 1), (0.5, 0), (0.5, 1)):
        config = imp.ImpConfig(**{**FIXED, "model_options": (("width", 16),)}, fraction=fraction, seed=seed)
        run_dir = tmp / "plain" / f"{fraction}-{seed}"
        imp.run(config, run_dir, progress=False, log=lambda line: None, plots=False)
        plain[f"fraction={fraction},seed={seed}"] = read_json(run_dir / "summary.json")
    return SimpleNamespace(
        dir=tmp / "sweep", grid=tmp / "grid.yaml", table=table, plain=plain, calls=executor.calls, lines=lines
    )


def test_each_grid_point_is_the_run_a_plain_imp_run_of_its_config_gives(swept):
    assert sorted(p.name for p in swept.dir.iterdir() if p.is_dir()) == POINTS
    for name, plain in swept.plain.items():
        summary = read_json(swept.dir / name / "summary.json")
        assert summary["hash"] == plain["hash"], name
        assert summary["config"] == plain["config"], name
        assert without_timings(summary["per_seed"][str(summary["config"]["seed"])]) == without_timings(
            plain["per_seed"][str(plain["config"]["seed"])]
        ), name
    assert read_json(swept.dir / "fraction=0.5,seed=1" / "summary.json")["rounds"][1]["density"] == pytest.approx(
        0.5, abs=1e-3
    )


def test_every_unit_of_every_point_goes_to_the_executor_in_one_call(swept):
    assert len(swept.calls) == 1
    units = [m for u in swept.calls[0] for m in (u.members if isinstance(u, Stack) else [u])]  # stacked or not
    assert sorted(u.directory for u in units) == [f"{p}/seed_{p[-1]}" for p in POINTS]
    assert all((swept.dir / u.directory / "done.json").exists() for u in units)
    assert any("4 points (2 fraction x 2 seed)" in line and "4 units" in line for line in swept.lines)


def test_sweep_json_and_csv_have_one_row_per_point_and_round(swept):
    table = read_json(swept.dir / "sweep.json")
    assert table["pipeline"] == "imp" and table["grid"] == GRID and table["fixed"] == FIXED
    assert [p["name"] for p in table["points"]] == POINTS
    rows = table["rows"]
    assert [(r["point"], r["round"]) for r in rows] == [(p, r) for p in POINTS for r in (0, 1)]
    for row in rows:
        expected = swept.plain[row["point"]]["rounds"][row["round"]]
        assert row["point"] == f"fraction={row['fraction']},seed={row['seed']}"
        for key in ("density", "test_accuracy", "test_accuracy_std", "val_loss", "effective_sparsity"):
            assert row[key] == expected[key], (row["point"], key)
        assert "layer_sparsity" not in row  # nested figures stay in each point's summary.json
    with open(swept.dir / "sweep.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[:4] == ["point", "fraction", "seed", "round"]
        csv_rows = list(reader)
    assert len(csv_rows) == len(rows)
    for row, csv_row in zip(rows, csv_rows):
        assert csv_row["point"] == row["point"] and int(csv_row["round"]) == row["round"]
        assert float(csv_row["fraction"]) == row["fraction"]
        assert float(csv_row["test_accuracy"]) == row["test_accuracy"]
    assert table == swept.table


def test_each_points_rows_are_its_runs_summary_table_and_its_results_a_groupby_away(swept):
    rows = read_json(swept.dir / "sweep.json")["rows"]
    for point in POINTS:
        run = load_run(swept.dir / point)
        values = {"point": point, **dict(zip(("fraction", "seed"), (float(point[9:12]), int(point[-1]))))}
        assert [r for r in rows if r["point"] == point] == [{**values, **figures} for figures in run.rows("summary")]
        results = run.rows("results")  # one seed: its rounds are the summary's means
        assert [r["test_accuracy"] for r in results] == [r["test_accuracy"] for r in run.rows("summary")]
    with pytest.raises(UserError, match=r"a sweep's directory, not a run's: its 4 points are runs"):
        load_run(swept.dir)


def test_a_point_another_process_runs_refuses_the_sweep_and_the_points_locked_are_let_go(swept):
    busy = swept.dir / POINTS[1]
    with RunLock(busy):
        with pytest.raises(RunBusy, match=rf"{busy} is in use by another process \(pid {os.getpid()}\)"):
            run_sweep(load_sweep(swept.grid), swept.dir, executor=LocalExecutor(1), log=lambda line: None)
    for point in POINTS:
        with RunLock(swept.dir / point) as lock:  # every point's lock is free again
            assert lock.held


def test_re_running_the_command_resumes_and_runs_nothing_again(swept, capsys):
    done = sorted(swept.dir.rglob("done.json"))
    assert len(done) == 4 * 3  # per point: the seed's unit and its two rounds
    before = {p: p.stat().st_mtime_ns for p in done}
    assert (
        sweep_command(
            [str(swept.grid), "--out", str(swept.dir), "--executor", "process", "--no-plots", "--threads", "1"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "4 units, 4 already done" in out
    assert {p: p.stat().st_mtime_ns for p in done} == before


def test_a_changed_fixed_option_is_refused_naming_it_before_anything_is_written(swept, tmp_path):
    configs = sorted(swept.dir.glob("*/config.json"))
    before = {p: p.stat().st_mtime_ns for p in [*configs, swept.dir / "sweep.json"]}
    changed = load_sweep(write_grid(tmp_path / "grid.yaml", fixed={**FIXED, "train_size": 200}))
    with pytest.raises(ConfigMismatch, match="train_size: 300 there, 200 now"):
        run_sweep(changed, swept.dir, executor=LocalExecutor(1), log=lambda line: None, plots=False)
    assert {p: p.stat().st_mtime_ns for p in before} == before


@pytest.mark.parametrize(
    "content, message",
    [
        ([{"pipeline": "imp"}], "expected a mapping with 'pipeline', 'fixed' and 'grid', got list"),
        ({"pipeline": "imp", "grid": GRID, "seeds": 2}, "unknown entries ['seeds']"),
        ({"pipeline": "prune-it", "grid": GRID}, "unknown pipeline 'prune-it'; known: consensus, imp"),
        ({"pipeline": "base", "grid": GRID}, "unknown pipeline 'base'"),
        ({"grid": GRID}, "no 'pipeline'"),
        ({"pipeline": "imp", "grid": {"lerning_rate": [0.1]}}, "grid: unknown options ['lerning_rate']"),
        ({"pipeline": "imp", "fixed": {"epoch": 1}, "grid": GRID}, "fixed: unknown options ['epoch']"),
        ({"pipeline": "imp", "fixed": [1], "grid": GRID}, "fixed must be a mapping"),
        ({"pipeline": "imp", "grid": {}}, "grid must be a non-empty mapping"),
        ({"pipeline": "imp", "fixed": FIXED}, "grid must be a non-empty mapping"),
        ({"pipeline": "imp", "grid": {"seed": []}}, "grid: seed must be a non-empty list of values, got []"),
        ({"pipeline": "imp", "grid": {"seed": 3}}, "grid: seed must be a non-empty list of values, got 3"),
        ({"pipeline": "imp", "fixed": {"seed": 1}, "grid": {"seed": [2]}}, "['seed'] in both fixed and grid"),
        ({"pipeline": "imp", "grid": {"threads": [1, 2]}}, "grid: threads is where the units run"),
        ({"pipeline": "imp", "grid": {"seed": [1, 1]}}, "give the same point (seed=1)"),
        ({"pipeline": "imp", "grid": {"rounds": ["one"]}}, "point rounds=one: rounds must be int, got 'one'"),
        ({"pipeline": "imp", "grid": {"fraction": [0.5, 1.5]}}, "point fraction=1.5: fraction must be in (0, 1)"),
    ],
)
def test_a_grid_that_describes_no_sweep_is_refused_with_what_is_wrong(content, message):
    with pytest.raises(GridError) as error:
        sweep_from_mapping(content, "grid.yaml")
    assert str(error.value).startswith("grid.yaml: ") and message in str(error.value)


def test_the_command_refuses_a_bad_grid_file_and_writes_nothing(tmp_path):
    grid = write_grid(tmp_path / "grid.yaml", grid={"lerning_rate": [0.1]})
    with pytest.raises(UserError, match=r"grid.yaml: grid: unknown options \['lerning_rate'\]"):
        sweep_command([str(grid), "--out", str(tmp_path / "out")])
    (tmp_path / "list.yaml").write_text("- fraction\n- seed\n")
    with pytest.raises(UserError, match="expected a mapping"):
        sweep_command([str(tmp_path / "list.yaml"), "--out", str(tmp_path / "out")])
    with pytest.raises(UserError, match="no such file"):
        sweep_command([str(tmp_path / "nowhere.yaml"), "--out", str(tmp_path / "out")])
    with pytest.raises(UserError, match="workers must be a positive integer"):
        sweep_command(
            [
                str(write_grid(tmp_path / "ok.yaml")),
                "--out",
                str(tmp_path / "out"),
                "--executor",
                "process",
                "--workers",
                "0",
            ]
        )
    assert not (tmp_path / "out").exists()


def test_a_point_the_pipeline_refuses_stops_the_sweep_before_anything_is_written(tmp_path):
    fixed = {k: v for k, v in FIXED.items() if k != "dataset"}
    sweep = sweep_from_mapping({"pipeline": "imp", "fixed": fixed, "grid": {"dataset": ["digits", "no-such-data"]}})
    with pytest.raises(ValueError, match="no-such-data"):
        run_sweep(sweep, tmp_path / "out", executor=LocalExecutor(1), log=lambda line: None)
    assert not (tmp_path / "out").exists()


def test_a_run_directory_is_not_taken_for_a_sweep_directory(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"kind": "imp"}))
    with pytest.raises(GridError, match="is a run directory, not a sweep's"):
        run_sweep(sweep_from_mapping({"pipeline": "imp", "grid": GRID}), tmp_path / "run", log=lambda line: None)


def test_point_names_are_sorted_by_option_filesystem_safe_and_stable():
    assert point_name({"seed": 1, "fraction": 0.2}) == point_name({"fraction": 0.2, "seed": 1}) == "fraction=0.2,seed=1"
    assert (
        point_name({"rewind": "epoch:2", "lr": 1e-05, "controls": True, "structured": None})
        == "controls=true,lr=1e-05,rewind=epoch_2,structured=none"
    )
    assert (
        point_name({"model_options": {"width": 16, "depth": 3}, "milestones": [10, 20]})
        == "milestones=10+20,model_options=depth=3+width=16"
    )
    assert point_name({"data_dir": "/data/a b"}) == "data_dir=_data_a_b"
    long_a, long_b = point_name({"rewind": "x" * 200 + "a"}), point_name({"rewind": "x" * 200 + "b"})
    assert len(long_a) <= 120 and long_a != long_b and long_a == point_name({"rewind": "x" * 200 + "a"})


def test_a_sweep_is_refused_under_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"does not run under torchrun \(2 ranks\)"):
        run_sweep(sweep_from_mapping({"pipeline": "imp", "grid": GRID}), tmp_path / "out", log=lambda line: None)
    assert not (tmp_path / "out").exists()


def test_an_instability_summary_gives_one_row_per_rewind_point():
    # the sweep's table of instability runs: each rewind point labelled, its figures' mean and spread over seeds
    summary = {
        "kind": "instability",
        "threshold": 0.02,
        "points": [
            {
                "point": "init",
                "pairs": 3,
                "iteration": 0,
                "test_error_barrier": {"mean": 0.3, "std": 0.1, "min": 0.2, "max": 0.4, "n": 3},
                "stable": False,
                "alphas": [0.0, 0.5, 1.0],
            },
            {"point": "iter:5", "pairs": 3, "iteration": 5, "test_error_barrier": {"mean": 0.01, "std": 0.0, "n": 3}},
        ],
    }
    rows = summary_rows(summary)
    assert rows == [
        {
            "rewind_point": "init",
            "pairs": 3,
            "iteration": 0,
            "test_error_barrier": 0.3,
            "test_error_barrier_std": 0.1,
            "test_error_barrier_min": 0.2,
            "test_error_barrier_max": 0.4,
        },
        {
            "rewind_point": "iter:5",
            "pairs": 3,
            "iteration": 5,
            "test_error_barrier": 0.01,
            "test_error_barrier_std": 0.0,
        },
    ]
    assert summary_rows({"threshold": 0.02, "points": []}) == []
    assert summary_rows({"threshold": 0.02, "sparsity": {"mean": 0.5}}) == [{"threshold": 0.02}]
