"""The CPU thread policy shared by the pipelines (``lth_sparse.executors``)."""

from __future__ import annotations

import os

import pytest

from lth_sparse import executors
from lth_sparse.integrity import read_done


@pytest.fixture
def machine(monkeypatch):
    """A machine with ``cores`` usable cores and a 1-minute load average of ``load``; no OMP_NUM_THREADS."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def set_machine(cores: int, load: float) -> None:
        monkeypatch.setattr(executors, "usable_cores", lambda: cores)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))

    return set_machine


@pytest.mark.parametrize(
    "cores, load, workers, expected",
    [
        (2, 0.0, 1, 2),  # an idle machine: every core
        (2, 1.1, 1, 1),  # another job on one of two cores: the one left
        (2, 5.0, 1, 1),  # overloaded: never below one
        (16, 3.6, 1, 12),  # four busy cores (3.6 rounds to 4)
        (16, 0.0, 4, 4),  # four workers share the cores
        (3, 0.0, 2, 1),  # shares round down
    ],
)
def test_default_threads_are_the_idle_cores_shared_among_workers(machine, cores, load, workers, expected):
    machine(cores, load)
    assert executors.default_threads(workers) == expected


def test_omp_num_threads_wins_when_set(machine, monkeypatch):
    machine(16, 0.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert executors.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert executors.default_threads() == 16


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_resolve_threads_refuses_what_is_not_a_positive_int(bad):
    with pytest.raises(ValueError, match="positive integer"):
        executors.resolve_threads(bad)


def test_resolve_threads_keeps_an_explicit_count(machine):
    machine(2, 0.0)
    assert executors.resolve_threads(7) == 7
    assert executors.resolve_threads(None) == 2


# --- units and executors ------------------------------------------------------------------------------------

import time  # noqa: E402

from lth_sparse.executors import LocalExecutor, ProcessExecutor, UnitsFailed, make_executor  # noqa: E402
from lth_sparse.pipelines import imp  # noqa: E402
from lth_sparse.pipelines.common import parse_seeds  # noqa: E402
from lth_sparse.units import Unit, run_unit  # noqa: E402

FUNCTIONS = "tests.pipelines.unit_functions"


def units_of(function: str, xs) -> list[Unit]:
    return [Unit(f"{FUNCTIONS}:{function}", {"x": x}, f"unit_{x}") for x in xs]


def test_run_unit_writes_done_json_and_its_log_and_never_runs_a_done_unit_again(tmp_path):
    unit = units_of("double", [3])[0]
    result = run_unit(unit, tmp_path, threads=1)
    assert result["value"] == 6
    assert read_done(tmp_path / "unit_3" / "done.json") == result
    assert "doubled 3" in (tmp_path / "unit_3" / "unit.log").read_text()
    (tmp_path / "unit_3" / "output.txt").unlink()
    assert run_unit(unit, tmp_path) == result
    assert not (tmp_path / "unit_3" / "output.txt").exists(), "a done unit is not run again"


def test_a_unit_that_raises_writes_no_done_json(tmp_path):
    with pytest.raises(ValueError, match="boom in unit 1"):
        run_unit(units_of("fail", [1])[0], tmp_path)
    assert not (tmp_path / "unit_1" / "done.json").exists()


def test_the_process_pool_runs_each_unit_in_a_worker_retries_killed_ones_and_reports_errors(tmp_path):
    """One pool (workers are slow to start: each imports torch) for every behaviour of the process executor."""
    units = (
        units_of("double", [1, 2])
        + units_of("fail", [7])
        + units_of("die_once", [5])
        + units_of("always_die", [9])
        + units_of("double", [3])
    )
    lines = []
    with pytest.raises(UnitsFailed) as error:
        ProcessExecutor(workers=2, threads=1, retries=1).run(units, tmp_path, log=lines.append)
    # A unit that raises: reported with its traceback, not retried.
    assert sorted(error.value.failures) == ["unit_7", "unit_9"]
    assert "Traceback" in error.value.failures["unit_7"] and "ValueError: boom in unit 7" in str(error.value)
    # A unit whose worker is killed: retried on a fresh worker; one killed every time fails after its retries.
    assert read_done(tmp_path / "unit_5" / "done.json") == {"value": 5, "attempts": 2}
    assert any("unit_5: its worker process died (exit code -9); retrying (1/1)" in line for line in lines)
    assert "its worker process died (exit code -9); tried 2 times" in error.value.failures["unit_9"]
    # The others finish, in worker processes.
    results = [read_done(tmp_path / f"unit_{x}" / "done.json") for x in (1, 2, 3)]
    assert [r["value"] for r in results] == [2, 4, 6]
    assert os.getpid() not in {r["pid"] for r in results}
    assert not (tmp_path / "unit_7" / "done.json").exists() and not (tmp_path / "unit_9" / "done.json").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(name="cluster"), "unknown executor 'cluster'"),
        (dict(name="process", workers=0), "workers must be a positive integer"),
        (dict(name="process", retries=-1), "retries must be an integer >= 0"),
    ],
)
def test_bad_executor_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        make_executor(**options)


def test_an_unreachable_ray_address_is_a_clear_error_within_seconds(tmp_path):
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    executor = make_executor("ray", ray_address=f"127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        executor.run(units_of("double", [1]), tmp_path, log=lambda s: None)
    assert time.monotonic() - started < 15


# --- IMP through the executors, and with several seeds ------------------------------------------------------

# each training alone, as the units these tests run by hand train (stacked: tests/pipelines/test_stacking.py)
TINY = dict(
    dataset="digits", model="mlp", model_options=(("width", 16),), rounds=1, epochs=1, train_size=300, lr=0.05, stack=1
)


def without_timings(rounds: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("train_seconds")} for r in rounds]


@pytest.fixture(scope="module")
def single_seed_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    # Under --seeds the split stays --seed's (0): the single-seed runs they equal say so with --split-seed.
    return {
        s: imp.run(
            imp.ImpConfig(**TINY, seed=s, split_seed=0),
            tmp / f"seed{s}",
            progress=False,
            log=lambda line: None,
            plots=False,
        )
        for s in (0, 1)
    }


def test_several_seeds_equal_the_single_seed_runs_and_their_spread_is_summarised(tmp_path, single_seed_runs):
    summary = imp.run(
        imp.ImpConfig(**TINY, seeds=(0, 1)), tmp_path / "run", progress=False, log=lambda s: None, plots=True
    )
    for s in (0, 1):
        assert without_timings(summary["per_seed"][str(s)]) == without_timings(single_seed_runs[s]["per_seed"][str(s)])
        assert (tmp_path / "run" / f"seed_{s}" / "round_01" / "masks.safetensors").exists()
    for r, mean in enumerate(summary["rounds"]):
        values = [single_seed_runs[s]["rounds"][r]["test_accuracy"] for s in (0, 1)]
        assert mean["seeds"] == 2
        assert mean["test_accuracy"] == pytest.approx(sum(values) / 2)
        assert mean["test_accuracy_min"] == min(values) and mean["test_accuracy_max"] == max(values)
        assert mean["test_accuracy_std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert (tmp_path / "run" / "plots" / "accuracy_vs_remaining.png").stat().st_size > 1000


def test_imp_units_in_the_process_pool_equal_the_local_runs_and_a_killed_one_redoes_nothing_finished(
    tmp_path, single_seed_runs
):
    """Seed 0's worker is killed (SIGKILL) right after its round 0 finished; seed 1 runs beside it."""
    killed = Unit(
        f"{FUNCTIONS}:imp_seed_killed_after_round_0", imp.ImpConfig(**TINY, seeds=(0, 1)).for_seed(0), "seed_0"
    )
    plain = [u for u in imp.IMP.plan(imp.ImpConfig(**TINY, seeds=(0, 1)))[0] if u.directory == "seed_1"]
    lines = []
    ProcessExecutor(workers=2, threads=1).run([killed, *plain], tmp_path, log=lines.append)
    for s in (0, 1):
        result = read_done(tmp_path / f"seed_{s}" / "done.json")
        assert without_timings(result["rounds"]) == without_timings(single_seed_runs[s]["per_seed"][str(s)])
    seed_dir = tmp_path / "seed_0"
    assert (seed_dir / "killed_once").exists() and any("seed_0: its worker process died" in x for x in lines)
    assert "resuming: 1 of 2 rounds already done" in (seed_dir / "unit.log").read_text(), "round 0 was kept"
    round_0_done = (seed_dir / "round_00" / "done.json").stat().st_mtime_ns
    assert round_0_done < (seed_dir / "killed_once").stat().st_mtime_ns, "round 0 was not redone after the kill"


def test_seeds_on_the_command_line_are_a_count_or_a_list():
    assert parse_seeds("3") == (0, 1, 2)
    assert parse_seeds("0,4,7") == (0, 4, 7)
    assert parse_seeds("4,") == (4,)
    assert parse_seeds(2) == (0, 1) and parse_seeds([5, 6]) == (5, 6)
    for bad in ("0", "a,b", "", True, -1):
        with pytest.raises(ValueError):
            parse_seeds(bad)
    with pytest.raises(ValueError, match="distinct"):
        imp.ImpConfig(seeds=(1, 1))


def test_local_executor_threads_default_from_the_policy(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert LocalExecutor().threads == 3 and LocalExecutor(1).threads == 1
