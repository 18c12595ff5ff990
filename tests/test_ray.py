"""The Ray executor on a local Ray cluster (2 CPUs): the same results as in process, and retries of killed units.

Starting Ray takes seconds (20 on a loaded 2-core machine), so one cluster serves the module.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from lth_sparse.executors import LocalExecutor, RayExecutor  # noqa: E402
from lth_sparse.integrity import read_done  # noqa: E402
from lth_sparse.pipelines import imp  # noqa: E402
from lth_sparse.sweep import run_sweep, sweep_from_mapping  # noqa: E402
from lth_sparse.units import Unit  # noqa: E402
from tests.summaries import assert_sweep_as_local, without_timings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXED = {
    "dataset": "digits",
    "model": "mlp",
    "model_options": {"width": 16},
    "rounds": 1,
    "epochs": 1,
    "train_size": 300,
    "stack": 1,  # each training alone, as the units run by hand below train (stacked: test_stacking.py)
}
GRID = {"fraction": [0.2, 0.5], "seed": [0, 1]}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs, never one found on the machine; its workers import ``tests.*`` by name."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "sweep"
    table = run_sweep(
        sweep_from_mapping({"pipeline": "imp", "fixed": FIXED, "grid": GRID}),
        out,
        executor=LocalExecutor(1),
        log=lambda line: None,
        plots=False,
    )
    return out, table


def test_a_sweep_on_a_ray_cluster_gives_the_summaries_of_the_local_executor(cluster, local_sweep, tmp_path):
    local_dir, local_table = local_sweep
    lines: list[str] = []
    table = run_sweep(
        sweep_from_mapping({"pipeline": "imp", "fixed": FIXED, "grid": GRID}),
        tmp_path / "sweep",
        executor=RayExecutor(address="local", threads=1),
        log=lines.append,
        plots=False,
    )
    assert any("through the ray executor" in line for line in lines)
    assert_sweep_as_local(table, tmp_path / "sweep", local_table, local_dir)


def test_a_unit_killed_on_ray_is_retried_and_redoes_nothing_it_had_finished(cluster, local_sweep, tmp_path):
    """Seed 0's Ray worker is killed (SIGKILL, by its PID) right after its round 0 finished; seed 1 runs beside it."""
    local_dir, _ = local_sweep
    points = {p.name: p.config for p in sweep_from_mapping({"pipeline": "imp", "fixed": FIXED, "grid": GRID}).points}
    killed = Unit(
        "tests.pipelines.unit_functions:imp_seed_killed_after_round_0", points["fraction=0.2,seed=0"], "seed_0"
    )
    plain = imp.IMP.plan(points["fraction=0.2,seed=1"])[0]
    assert [u.directory for u in plain] == ["seed_1"]
    RayExecutor(address="local", threads=1, retries=2).run([killed, *plain], tmp_path, log=lambda line: None)
    for s in (0, 1):
        ours = read_done(tmp_path / f"seed_{s}" / "done.json")
        theirs = read_done(local_dir / f"fraction=0.2,seed={s}" / f"seed_{s}" / "done.json")
        assert without_timings(ours) == without_timings(theirs), s
    seed_dir = tmp_path / "seed_0"
    marker = seed_dir / "killed_once"
    assert marker.exists() and int(marker.read_text()) != os.getpid(), "it ran in a Ray worker, which was killed"
    log = (seed_dir / "unit.log").read_text()
    assert log.count(": started") == 2 and "resuming: 1 of 2 rounds already done" in log, "retried, round 0 kept"
    round_0_done = (seed_dir / "round_00" / "done.json").stat().st_mtime_ns
    assert round_0_done < marker.stat().st_mtime_ns, "round 0 was not redone after the kill"
    assert (seed_dir / "round_01" / "done.json").stat().st_mtime_ns > marker.stat().st_mtime_ns
