"""``--executor slurm``: its options and refusals without a cluster, then on a real one-machine SLURM cluster.

The cluster tests (marked ``slurm``) start munged, MariaDB, slurmdbd, slurmctld and slurmd on this machine
(:mod:`tests.slurm_cluster`), so they run only when asked: ``python -m pytest -m slurm tests/test_slurm.py``
(the CI's own step, ``tools/ci_slurm.sh``); they are skipped, with the reason, where the packages are missing or
the cluster does not start. The tests without a cluster stand in fake ``sbatch``, ``srun``, ``sacct`` and
``squeue`` commands where they need SLURM on the PATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lth_sparse.cli import build_parser, executor_from_args, main
from lth_sparse.errors import UserError
from lth_sparse.executors import LocalExecutor, SlurmExecutor, UnitsFailed, make_executor, sbatch_message
from lth_sparse.integrity import read_done
from lth_sparse.pipelines import imp
from lth_sparse.runs import read_json
from lth_sparse.sweep import run_sweep, sweep_from_mapping
from lth_sparse.units import Unit
from tests.slurm_cluster import PAUSED, ClusterUnavailable, slurm_cluster
from tests.summaries import assert_sweep_as_local, without_timings

REPO = Path(__file__).resolve().parents[1]
FIXED = {
    "dataset": "digits",
    "model": "mlp",
    "model_options": {"width": 16},
    "rounds": 2,
    "epochs": 1,
    "train_size": 300,
    "stack": 1,  # each training alone, as the units run by hand below train
}
GRID = {"fraction": [0.2, 0.5], "seed": [0, 1]}


# --- without a cluster ----------------------------------------------------------------------------------------


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """SLURM's commands on the PATH as scripts: ``sbatch`` refuses every job with the message of a cluster that
    has no partition ``nope``; the others succeed and say nothing. The PATH holds only them and this Python's
    folder (none of a SLURM installed here)."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "sbatch": "echo 'sbatch: error: invalid partition specified: nope' >&2\n"
        "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2\nexit 1",
        "srun": "exit 0",
        "sacct": "exit 0",
        "squeue": "exit 0",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent)]))
    return bin_dir


def executor_of(argv: list[str]):
    args = build_parser().parse_args(["imp", *argv])
    return executor_from_args(args, 1)


def test_the_slurm_options_become_sbatch_parameters(fake_slurm):
    executor = executor_of(
        [
            "--executor", "slurm", "--slurm-partition", "gpu", "--slurm-gpus-per-task", "1", "--slurm-mem", "4G",
            "--slurm-time", "90", "--slurm-array-parallelism", "3", "--slurm-folder", "/shared/logs",
            "--slurm-option", "account=lab", "--slurm-option", "exclusive=true", "--retries", "4",
        ]
    )  # fmt: skip
    assert isinstance(executor, SlurmExecutor) and executor.name == "slurm"
    assert (executor.threads, executor.retries, executor.folder) == (1, 4, "/shared/logs")
    assert executor.parameters() == {
        "job_name": "lth-sparse",
        "time": 90,
        "cpus_per_task": 1,  # its thread count
        "gpus_per_task": 1,
        "mem": "4G",
        "partition": "gpu",
        "array_parallelism": 3,
        "additional_parameters": {"account": "lab", "exclusive": True},
    }
    plain = executor_of(["--executor", "slurm", "--slurm-cpus-per-task", "4"])
    assert plain.parameters() == {"job_name": "lth-sparse", "time": 60, "cpus_per_task": 4}
    assert plain.folder is None  # RUN/slurm, decided when it runs


def test_threads_and_cpus_are_sized_by_the_job_not_by_this_node(fake_slurm):
    # this (login) node's idle cores say nothing of a compute node's: without --threads, the CPUs asked for
    assert (SlurmExecutor().threads, SlurmExecutor().cpus_per_task) == (1, 1)
    assert (SlurmExecutor(cpus_per_task=8).threads, SlurmExecutor(cpus_per_task=8).cpus_per_task) == (8, 8)
    assert (SlurmExecutor(threads=4).threads, SlurmExecutor(threads=4).cpus_per_task) == (4, 4)
    both = SlurmExecutor(threads=2, cpus_per_task=8)
    assert (both.threads, both.cpus_per_task) == (2, 8)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mem": "4X"}, "--slurm-mem must be a size such as 4G or 500M, got '4X'"),
        ({"time_limit": 0}, "--slurm-time must be a positive integer, got 0"),
        ({"cpus_per_task": 0}, "--slurm-cpus-per-task must be a positive integer, got 0"),
        ({"gpus_per_task": -1}, "--slurm-gpus-per-task must be an integer >= 0, got -1"),
        ({"array_parallelism": 0}, "--slurm-array-parallelism must be a positive integer, got 0"),
        ({"partition": " "}, "--slurm-partition must not be empty"),
    ],
)
def test_bad_slurm_options_are_refused_before_anything_is_submitted(fake_slurm, options, message):
    with pytest.raises(UserError) as error:
        make_executor("slurm", threads=1, slurm=options)
    assert str(error.value) == message


def test_a_refusal_of_sbatch_is_one_line_with_its_message(fake_slurm, tmp_path, capsys):
    status = main(
        ["imp", "--dataset", "digits", "--model", "mlp", "--rounds", "1", "--epochs", "1", "--train-size", "100",
         "--threads", "1", "--executor", "slurm", "--out", str(tmp_path / "run"), "--no-plots"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2
    assert err == (
        "lth-sparse imp: error: SLURM refused the job: invalid partition specified: nope; "
        "Batch job submission failed: Invalid partition name specified\n"
    )


def test_sbatch_message_is_its_lines_without_their_prefix():
    assert sbatch_message("sbatch: error: a\n\nsbatch: error: b\n") == "a; b"
    assert sbatch_message("  plain words \n") == "plain words"
    assert sbatch_message("") == "no message"


def test_without_submitit_the_slurm_executor_names_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # an import of it raises ImportError
    with pytest.raises(UserError, match=r"pip install 'lth_sparse\[slurm\]'"):
        SlurmExecutor(threads=1)
    status = main(["imp", "--executor", "slurm", "--threads", "1", "--out", str(tmp_path / "run")])
    assert status == 2
    assert capsys.readouterr().err == (
        "lth-sparse imp: error: --executor slurm needs submitit: pip install 'lth_sparse[slurm]' "
        "(or pip install submitit)\n"
    )


def test_without_slurm_on_the_path_the_slurm_executor_says_so(fake_slurm, monkeypatch):
    (fake_slurm / "sbatch").unlink()
    (fake_slurm / "squeue").unlink()
    with pytest.raises(UserError, match=r"^--executor slurm: no SLURM here \(sbatch, squeue not found on PATH\)$"):
        SlurmExecutor(threads=1)


# --- on a real one-machine cluster ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    """A SLURM cluster on this machine, started for this module and stopped after it; its jobs import ``tests.*``
    by name. Started only when the tests were selected by ``-m slurm``."""
    if "slurm" not in (request.config.option.markexpr or ""):
        pytest.skip("the SLURM cluster tests start daemons: run them with -m slurm (tools/ci_slurm.sh)")
    pytest.importorskip("submitit")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        try:
            env = stack.enter_context(slurm_cluster(tmp_path_factory.mktemp("slurm-cluster")))
        except ClusterUnavailable as why:
            pytest.skip(str(why).splitlines()[0])
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.setenv("SLURM_CONF", env["SLURM_CONF"])
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        print(f"\nSLURM test cluster up in {time.perf_counter() - started:.1f} s")
        yield


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "sweep"
    started = time.perf_counter()
    table = run_sweep(
        sweep_from_mapping({"pipeline": "imp", "fixed": FIXED, "grid": GRID}),
        out,
        executor=LocalExecutor(1),
        log=lambda line: None,
        plots=False,
    )
    print(f"\nthe sweep through the local executor: {time.perf_counter() - started:.1f} s")
    return out, table


@pytest.mark.slurm
def test_a_sweep_through_slurm_from_the_cli_gives_the_summaries_of_the_local_executor(
    cluster, local_sweep, tmp_path, capsys
):
    local_dir, local_table = local_sweep
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"pipeline": "imp", "fixed": FIXED, "grid": GRID}))
    started = time.perf_counter()
    status = main(["sweep", str(grid), "--out", str(tmp_path / "sweep"), "--executor", "slurm", "--threads", "1"])
    seconds = time.perf_counter() - started
    out = capsys.readouterr().out
    assert status == 0
    assert "through the slurm executor" in out and "4 unit(s) submitted to SLURM as job" in out
    print(f"\nthe sweep through SLURM: {seconds:.1f} s")
    assert_sweep_as_local(read_json(tmp_path / "sweep" / "sweep.json"), tmp_path / "sweep", local_table, local_dir)
    assert sorted(p.name for p in (tmp_path / "sweep" / "slurm").glob("*_result.pkl")), "submitit's files there"


def run_with_seed_0_paused(tmp_path, local_dir, act) -> list[str]:
    """Seeds 0 and 1 of a point through SLURM, seed 0's job paused after its round 0 and ``act(job)`` done to it
    there; checks that both end with the local run's results and that seed 0 ran twice, resuming from round 1.
    Returns the executor's log lines."""
    points = {p.name: p.config for p in sweep_from_mapping({"pipeline": "imp", "fixed": FIXED, "grid": GRID}).points}
    paused = Unit("tests.slurm_cluster:imp_seed_paused_after_round_0", points["fraction=0.2,seed=0"], "seed_0")
    plain = imp.IMP.plan(points["fraction=0.2,seed=1"])[0]
    assert [u.directory for u in plain] == ["seed_1"]
    lines: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            SlurmExecutor(threads=1, retries=2).run([paused, *plain], tmp_path, log=lines.append)
        except BaseException as error:  # noqa: BLE001 - raised again in the test
            errors.append(error)

    runner = threading.Thread(target=run)
    runner.start()
    marker = tmp_path / "seed_0" / PAUSED
    deadline = time.monotonic() + 100
    while not marker.exists() and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), f"the unit never paused: {lines} {errors}"
    while not (job := marker.read_text().strip()):  # its job id is being written
        time.sleep(0.05)
    act(job)
    runner.join(timeout=240)
    assert not runner.is_alive(), "the executor still waits"
    assert not errors, errors
    for s in (0, 1):
        ours = read_done(tmp_path / f"seed_{s}" / "done.json")
        theirs = read_done(local_dir / f"fraction=0.2,seed={s}" / f"seed_{s}" / "done.json")
        assert without_timings(ours) == without_timings(theirs), s
    log = (tmp_path / "seed_0" / "unit.log").read_text()
    assert log.count(": started") == 2 and "resuming: 1 of 3 rounds already done" in log, "ran again, round 0 kept"
    round_0_done = (tmp_path / "seed_0" / "round_00" / "done.json").stat().st_mtime_ns
    assert round_0_done < marker.stat().st_mtime_ns, "round 0 was not redone"
    return lines


def slurm_command(*command: str) -> None:
    """Run a SLURM client command; its exit status is not enough (scancel says 0 for a job it does not know)."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "error" not in done.stderr, (command, done.stderr)


@pytest.mark.slurm
def test_a_job_cancelled_with_scancel_is_resubmitted_and_its_unit_resumes(cluster, local_sweep, tmp_path):
    """Seed 0's job is cancelled (scancel) after its round 0; seed 1 runs beside it."""
    lines = run_with_seed_0_paused(tmp_path, local_sweep[0], lambda job: slurm_command("scancel", job))
    assert any("ended without a result (state CANCELLED" in line and "resubmitting (1/2)" in line for line in lines)
    assert sum("submitted to SLURM" in line for line in lines) == 2


@pytest.mark.slurm
def test_a_preempted_job_is_requeued_and_its_unit_resumes(cluster, local_sweep, tmp_path):
    """Seed 0's job gets, after its round 0, the signals of a preemption (SIGTERM, then submitit's SIGUSR2, which
    SLURM also sends before a time limit): submitit requeues it. SLURM holds a requeued job for a while (its begin
    time); the test starts it at once, as a free cluster would later."""

    def preempt(job: str) -> None:
        slurm_command("scancel", "--signal=TERM", job)
        # slurmd delivers the signal to every process of the job when it gets to it: one arriving after USR2 would
        # also reach the `scontrol requeue` submitit's USR2 handler starts (a real preemption's TERM comes first)
        time.sleep(2)
        slurm_command("scancel", "--signal=USR2", job)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
            if state.stdout.strip() == "PENDING":
                slurm_command("scontrol", "update", f"JobId={job}", "StartTime=now")
                return
            time.sleep(0.2)
        raise AssertionError(f"job {job} was not requeued")

    lines = run_with_seed_0_paused(tmp_path, local_sweep[0], preempt)
    assert not any("resubmitting" in line for line in lines), "requeued by SLURM, not resubmitted"
    assert sum("submitted to SLURM" in line for line in lines) == 1


@pytest.mark.slurm
def test_units_that_raise_are_reported_and_killed_ones_resubmitted(cluster, tmp_path):
    """As the process executor: a unit that raises is reported with its traceback, not run again; one whose job
    is killed (SIGKILL) is resubmitted, and fails once it was killed more often than ``retries`` allows."""
    units = [
        Unit(f"tests.pipelines.unit_functions:{function}", {"x": x}, f"unit_{x}")
        for function, x in (("double", 3), ("fail", 7), ("die_once", 5), ("always_die", 9))
    ]
    lines: list[str] = []
    with pytest.raises(UnitsFailed) as error:
        SlurmExecutor(threads=1, retries=1).run(units, tmp_path, log=lines.append)
    assert sorted(error.value.failures) == ["unit_7", "unit_9"]
    assert "Traceback" in error.value.failures["unit_7"] and "ValueError: boom in unit 7" in str(error.value)
    assert "ended without a result (state FAILED); tried 2 times" in error.value.failures["unit_9"]
    assert read_done(tmp_path / "unit_3" / "done.json")["value"] == 6
    assert read_done(tmp_path / "unit_5" / "done.json") == {"value": 5, "attempts": 2}
    assert any(line.startswith("unit_5: its SLURM job") and "resubmitting (1/1)" in line for line in lines)
    assert not any(line.startswith("unit_7:") and "resubmitting" in line for line in lines)


@pytest.mark.slurm
def test_options_the_cluster_refuses_are_one_line_with_the_schedulers_message(cluster, tmp_path, capsys):
    base = ["imp", "--dataset", "digits", "--model", "mlp", "--rounds", "1", "--epochs", "1", "--train-size", "100",
            "--threads", "1", "--executor", "slurm", "--no-plots"]  # fmt: skip
    status = main([*base, "--out", str(tmp_path / "a"), "--slurm-partition", "nope"])
    assert status == 2
    assert capsys.readouterr().err == (
        "lth-sparse imp: error: SLURM refused the job: invalid partition specified: nope; "
        "Batch job submission failed: Invalid partition name specified\n"
    )
    status = main([*base, "--out", str(tmp_path / "b"), "--slurm-mem", "100000000M"])
    assert status == 2
    assert capsys.readouterr().err == (
        "lth-sparse imp: error: SLURM refused the job: Memory specification can not be satisfied; "
        "Batch job submission failed: Requested node configuration is not available\n"
    )
