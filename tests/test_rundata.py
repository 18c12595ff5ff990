"""Runs as data (``lth_sparse.load_run``): tiny real runs on the 8x8 digits (offline) and the committed
reproductions in results/, read back as tables and checked against their files and summaries."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

import lth_sparse
from lth_sparse.config import config_from_options
from lth_sparse.errors import UserError
from lth_sparse.pipelines import imp, instability
from lth_sparse.pipelines.instability import InstabilityConfig
from lth_sparse.rundata import TABLES, PartialRun, load_run, summary_rows
from lth_sparse.runs import read_json

needs_pandas = pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="to_pandas needs pandas")

RESULTS = Path(__file__).resolve().parent.parent / "results"
IMP_README = RESULTS / "imp-lenet300-fashion-mnist-3seeds"
TINY_IMP = dict(
    dataset="digits", model="mlp", model_options=(("width", 16),), rounds=2, epochs=2, train_size=300, seeds=(0, 1)
)


def quiet(line):
    pass


def done(path: Path) -> dict:
    """A ``done.json`` without its record of files."""
    result = read_json(path / "done.json")
    result.pop("files", None)
    return result


@pytest.fixture(scope="module")
def tiny_imp(tmp_path_factory):
    """An IMP run of 2 seeds and 2 rounds with its controls, evaluated twice an epoch."""
    path = tmp_path_factory.mktemp("rundata") / "imp"
    config = imp.ImpConfig(**TINY_IMP, controls=True, eval_every=5)
    summary = imp.run(config, path, progress=False, log=quiet, plots=False)
    return SimpleNamespace(path=path, config=config, summary=summary, run=load_run(path))


def test_an_imp_run_reads_back_its_kind_config_summary_and_units(tiny_imp):
    run = tiny_imp.run
    saved = read_json(tiny_imp.path / "config.json")
    assert (run.kind, run.hash, run.config) == ("imp", saved["hash"], saved["config"])
    assert run.summary == read_json(tiny_imp.path / "summary.json")
    controls = [f"seed_{s}/round_0{r}/control_{c}" for s in (0, 1) for r in (1, 2) for c in ("random_mask", "reinit")]
    assert run.units == ("seed_0", *controls[:4], "seed_1", *controls[4:])
    assert run.done == run.units and run.missing == () and not run.partial and run.planned
    units = run.rows("units")
    assert [u["unit"] for u in units] == list(run.units) and all(u["done"] for u in units)
    reinit = units[run.units.index("seed_1/round_02/control_reinit")]
    for key, value in done(tiny_imp.path / "seed_1" / "round_02" / "control_reinit").items():
        if not isinstance(value, (dict, list)):
            assert reinit[key] == value, key


def test_imp_results_are_each_seeds_rounds_with_their_controls_as_the_files_hold_them(tiny_imp):
    rows = tiny_imp.run.rows("results")
    assert [(r["seed"], r["round"]) for r in rows] == [(s, r) for s in (0, 1) for r in (0, 1, 2)]
    for row in rows:
        folder = tiny_imp.path / f"seed_{row['seed']}" / f"round_{row['round']:02d}"
        own = done(folder)
        assert row["density"] == own["density"] and row["test_accuracy"] == own["test_accuracy"]
        assert "layer_sparsity" not in row  # nested figures stay in the files
        for control in ("reinit", "random_mask"):
            if row["round"] == 0:
                assert f"{control}_test_accuracy" not in row
            else:
                assert row[f"{control}_test_accuracy"] == done(folder / f"control_{control}")["test_accuracy"]
    per_seed = tiny_imp.summary["per_seed"]
    for row in rows:  # the summary's per-seed rounds, flat
        expected = per_seed[str(row["seed"])][row["round"]]
        assert {k: v for k, v in row.items() if k != "seed"} == {
            k: v for k, v in expected.items() if not isinstance(v, (dict, list))
        }


@needs_pandas
def test_the_summary_means_and_stds_are_a_groupby_of_the_results(tiny_imp):
    frame = tiny_imp.run.to_pandas("results")
    table = frame.groupby("round").agg(
        density=("density", "mean"),
        test_accuracy=("test_accuracy", "mean"),
        test_accuracy_std=("test_accuracy", "std"),
        reinit_test_accuracy=("reinit_test_accuracy", "mean"),
    )
    for entry in tiny_imp.summary["rounds"]:
        got = table.loc[entry["round"]]
        for key in ("density", "test_accuracy", "test_accuracy_std"):
            assert got[key] == pytest.approx(entry[key], abs=1e-12), (entry["round"], key)
        if entry["round"]:
            assert got["reinit_test_accuracy"] == pytest.approx(entry["reinit_test_accuracy"], abs=1e-12)


def test_records_and_metrics_are_every_round_and_every_evaluation_of_each_unit(tiny_imp):
    records = tiny_imp.run.rows("records")
    assert [(r["unit"], r["records"], r["index"], r["round"]) for r in records] == [
        (f"seed_{s}", "rounds", r, r) for s in (0, 1) for r in (0, 1, 2)
    ]
    metrics = tiny_imp.run.rows("metrics")
    files = sorted(tiny_imp.path.rglob("metrics.jsonl"))
    assert len(files) == 2 * (3 + 4)  # each seed's 3 rounds and 4 controls
    lines = [
        (f.parent.relative_to(tiny_imp.path).as_posix(), json.loads(line))
        for f in files
        for line in f.read_text().splitlines()
    ]
    assert len(metrics) == len(lines) > len(files)  # several evaluations per training
    by_step = {}
    for step, record in lines:
        by_step.setdefault(step, []).append(record)
    for row in metrics:
        assert row["unit"] == (row["step"] if "control" in row["step"] else row["step"].split("/")[0])
    for step, records in by_step.items():
        rows = [r for r in metrics if r["step"] == step]
        assert [r["iteration"] for r in rows] == [r["iteration"] for r in records]
        assert [r["val_accuracy"] for r in rows] == [r["val_accuracy"] for r in records]


def test_summary_table_is_the_sweeps_rows_of_the_run(tiny_imp):
    assert tiny_imp.run.rows("summary") == summary_rows(tiny_imp.summary)
    assert [r["round"] for r in tiny_imp.run.rows("summary")] == [0, 1, 2]


def test_a_partial_run_loads_says_which_units_are_missing_and_tables_what_is_done(tiny_imp, tmp_path):
    copy = tmp_path / "partial"
    shutil.copytree(tiny_imp.path, copy)
    for unit in ("seed_1", "seed_1/round_02/control_reinit"):
        (copy / unit / "done.json").unlink()
    (copy / "seed_1" / "round_02" / "done.json").unlink()  # seed 1 was killed in its last round
    with pytest.warns(PartialRun, match=r"partial imp run: 2 of 10 units not done \(seed_1, seed_1/round_02/control"):
        run = load_run(copy)
    assert run.partial and run.missing == ("seed_1", "seed_1/round_02/control_reinit")
    assert [(r["seed"], r["round"]) for r in run.rows("results")] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert [u["done"] for u in run.rows("units")].count(False) == 2
    quiet_run = load_run(copy, warn=False)  # no warning asked for: the flag alone
    assert quiet_run.partial


def test_to_pandas_without_pandas_says_how_to_get_it_in_one_line(tiny_imp, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"needs pandas: pip install pandas") as error:
        tiny_imp.run.to_pandas("results")
    assert "\n" not in str(error.value)
    assert tiny_imp.run.rows("results")  # the rows need no pandas


def test_an_unknown_table_is_refused_naming_the_tables(tiny_imp):
    with pytest.raises(UserError, match="unknown table 'rounds'.*units, records, metrics, results, summary"):
        tiny_imp.run.rows("rounds")
    assert TABLES == ("units", "records", "metrics", "results", "summary")


def test_a_directory_that_is_not_a_run_is_refused_naming_what_it_holds(tmp_path):
    with pytest.raises(UserError, match="no such run directory"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a run directory"):
        load_run(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"not a run directory \(no config.json\); it holds nothing"):
        load_run(empty)
    (empty / "seed_0").mkdir()
    (empty / "notes.txt").write_text("")
    with pytest.raises(UserError, match=r"no config.json\); it holds notes.txt, seed_0/"):
        load_run(empty)
    sweep = tmp_path / "sweep"
    (sweep / "seed=0").mkdir(parents=True)
    (sweep / "seed=0" / "config.json").write_text("{}")
    (sweep / "sweep.json").write_text("{}")
    with pytest.raises(
        UserError,
        match=re.escape(f"a sweep's directory, not a run's: its 1 points are runs (load_run('{sweep / 'seed=0'}'))"),
    ):
        load_run(sweep)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not a run's config"),
        (json.dumps({"kind": "prune-it", "config": {}}), "its kind is 'prune-it', not one of imp, consensus"),
        (json.dumps(["imp"]), "its kind is None"),
        (json.dumps({"kind": "imp", "config": {"rounds": "many"}}), "a imp config this version cannot read"),
    ],
)
def test_a_config_that_is_no_runs_is_refused(tmp_path, content, message):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(UserError, match=re.escape(message)):
        load_run(tmp_path)


def test_load_run_is_the_packages():
    assert lth_sparse.load_run is load_run and "load_run" in lth_sparse.__all__


@needs_pandas
def test_the_readme_imp_table_is_one_groupby_of_the_committed_run():
    run = load_run(IMP_README)
    table = (
        run.to_pandas("results")
        .groupby("round")
        .agg(
            density=("density", "mean"),
            accuracy=("test_accuracy", "mean"),
            std=("test_accuracy", "std"),
            reinit=("reinit_test_accuracy", "mean"),
            random_mask=("random_mask_test_accuracy", "mean"),
        )
    )
    for entry in run.summary["rounds"]:
        got = table.loc[entry["round"]]
        assert got["accuracy"] == pytest.approx(entry["test_accuracy"], abs=1e-12)
        assert got["std"] == pytest.approx(entry["test_accuracy_std"], abs=1e-12)
        assert got["density"] == pytest.approx(entry["density"], abs=1e-12)
    cells = (100 * table).round(2)
    # the README's IMP sentence: 89.14% +- 0.17 dense, 89.12% +- 0.13 at 10.7%, 88.20% +- 0.14 at 1.15%,
    # against 85.06% for a random re-initialisation and 83.18% for a random mask
    assert tuple(cells.loc[0, ["accuracy", "std"]]) == (89.14, 0.17)
    assert tuple(cells.loc[10, ["density", "accuracy", "std"]]) == (10.74, 89.12, 0.13)
    assert tuple(cells.loc[20, ["density", "accuracy", "std", "reinit", "random_mask"]]) == (
        1.15,
        88.2,
        0.14,
        85.06,
        83.18,
    )
    readme = (RESULTS.parent / "README.md").read_text()
    assert "(89.14% +- 0.17)" in readme and "(89.12% +- 0.13 at 10.7%)" in readme
    assert "88.20% +- 0.14, against 85.06%" in readme and "83.18% for a random mask" in readme


@pytest.fixture(scope="module")
def tiny_instability(tmp_path_factory):
    path = tmp_path_factory.mktemp("rundata") / "instability"
    config = config_from_options(
        InstabilityConfig,
        dict(
            dataset="digits",
            model="mlp",
            model_options={"width": 16},
            epochs=1,
            train_size=300,
            batch_size=64,
            alphas=5,
            seeds=2,
            rewind_points="init,iter:2",
        ),
    )
    return path, instability.run(config, path, progress=False, log=quiet, plots=False)


@needs_pandas
def test_instability_results_are_its_pairs_barriers_per_rewind_point(tiny_instability):
    path, summary = tiny_instability
    run = load_run(path)
    rows = run.rows("results")
    assert sorted((r["seed"], r["point"]) for r in rows) == [(s, p) for s in (0, 1) for p in ("init", "iter:2")]
    for row in rows:
        assert (
            row["test_error_barrier"]
            == done(path / f"seed_{row['seed']}" / row["point"].replace(":", "_") / "pair_0_1")["test_error_barrier"]
        )
    means = run.to_pandas().groupby("point")["test_error_barrier"].agg(["mean", "std"])
    for point in summary["points"]:  # the summary's mean and std over seeds, per rewind point
        assert means.loc[point["point"], "mean"] == pytest.approx(point["test_error_barrier"]["mean"], abs=1e-12)
        assert means.loc[point["point"], "std"] == pytest.approx(point["test_error_barrier"]["std"], abs=1e-12)


@needs_pandas
def test_consensus_results_are_its_retrainings_whose_means_the_summary_holds():
    run = load_run(RESULTS / "consensus-lenet5-fmnist-3tasks")
    frame = run.to_pandas()
    assert len(frame) == 3 * 5 * 3  # seeds x tickets (consensus, random, 3 bespoke) x targets
    assert set(frame["seed"]) == {0, 1, 2}
    means = frame.groupby(["ticket", "target"])["test_accuracy"].mean()
    for row in run.summary["retrain"]:
        assert means.loc[(row["ticket"], row["target"])] == pytest.approx(row["test_accuracy"]["mean"], abs=1e-12)


@needs_pandas
def test_plant_results_are_its_units_whose_means_the_summary_rows_hold():
    run = load_run(RESULTS / "plant" / "run")
    frame = run.to_pandas()
    assert len(frame) == len(run.units) == 444
    means = frame.groupby(["task", "depth", "pruner", "density_label"])["score"].mean()
    for row in run.summary["rows"]:
        key = (row["task"], row["depth"], row["pruner"], row["density_label"])
        assert means.loc[key] == pytest.approx(row["score"]["mean"], abs=1e-12), key


@needs_pandas
def test_a_transfer_whose_sources_moved_reads_its_finished_units_unplanned():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finished run: no partial warning
        run = load_run(RESULTS / "transfer-fmnist" / "a-to-b")
    assert not run.planned and run.missing is None and not run.partial  # its plan reads the sources, elsewhere
    frame = run.to_pandas()
    assert len(frame) == len(run.done) == 3 * 11 * 6  # seeds x source rounds x tickets
    sparsest = frame[frame["round"] == frame["round"].max()].groupby("ticket")["test_accuracy"].mean()
    assert sparsest["rewind-global"] == pytest.approx(run.summary["test_accuracy_rewind_global_sparsest"], abs=1e-12)


@needs_pandas
def test_the_analysis_page_example_prints_what_the_page_shows(tmp_path, monkeypatch, capsys):
    page = (RESULTS.parent / "docs" / "analysis.md").read_text()
    code, shown = re.search(r"```python\n(.*?)```\n\nprints\n\n```text\n(.*?)```", page, re.DOTALL).groups()
    (tmp_path / "results").symlink_to(RESULTS)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/analysis.md", "exec"), {})  # noqa: S102 (the docs' own code)
    assert capsys.readouterr().out == shown
    assert (tmp_path / "accuracy_vs_density.png").stat().st_size > 0
