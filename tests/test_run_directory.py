"""What a run directory guarantees while it runs: its process-pool workers die with the driver, however the
driver dies, and one process at a time runs it (a second is refused, naming the first; a killed one frees it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lth_sparse.executors import LocalExecutor
from lth_sparse.integrity import read_done
from lth_sparse.runs import LOCK_FILE, RunBusy
from tests.pipelines.unit_functions import HOLDING, RELEASE, HoldingConfig

REPO = Path(__file__).resolve().parents[1]

DRIVER = "import sys; from tests.pipelines.unit_functions import run_holding; run_holding(sys.argv[1])"
"""A process-pool run of :data:`HOLDING` in the directory given, in a process of its own (the one killed)."""

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie waiting for its parent has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.05)


def test_a_killed_driver_takes_its_workers_with_it_and_leaves_the_run_to_resume(tmp_path):
    run = tmp_path / "run"
    held = [run / f"unit_{x}" for x in (2, 3)]
    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(run)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until(
            lambda: (run / "unit_1" / "done.json").exists() and all((d / "started").exists() for d in held),
            180,
            f"unit_1 done and units 2 and 3 running in the driver's workers ({log.read_text()[-2000:]})",
        )
        workers = [int((d / "started").read_text()) for d in held]
        assert all(running(pid) for pid in workers) and driver.pid not in workers
        assert (run / LOCK_FILE).read_text().split() == [str(driver.pid)]

        # While it runs, a second driver and `lth-sparse plot` are refused, naming the directory and the driver.
        with pytest.raises(RunBusy, match=rf"{run} is in use by another process \(pid {driver.pid}\)"):
            HOLDING.run(HoldingConfig(), run, executor=LocalExecutor(1), log=lambda line: None)
        with pytest.raises(RunBusy, match=rf"pid {driver.pid}"):
            HOLDING.summarize_partial(run, log=lambda line: None)

        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        wait_until(lambda: not any(running(pid) for pid in workers), 2, "the workers ended after their driver")
    finally:
        if driver.poll() is None:
            driver.kill()
    # A worker that had lived on would finish its unit now: none writes a done.json.
    (run / RELEASE).touch()
    time.sleep(0.5)
    assert not any((d / "done.json").exists() for d in held)

    # The lock died with the driver: a re-run proceeds, resuming after the unit that had finished.
    unit_1 = read_done(run / "unit_1" / "done.json")
    lines: list[str] = []
    summary = HOLDING.run(HoldingConfig(), run, executor=LocalExecutor(1), log=lines.append)
    assert any(f"resuming: 1 of 3 units already done in {run}" in line for line in lines), lines
    assert read_done(run / "unit_1" / "done.json") == unit_1, "the finished unit was not run again"
    assert [read_done(d / "done.json")["pid"] for d in held] == [os.getpid()] * 2
    assert summary == {"kind": "holding", "values": [2, 2, 3]}
    assert (run / LOCK_FILE).read_text().split() == [str(os.getpid())]


def test_a_finished_runs_summary_is_rebuilt_when_its_pipelines_summary_format_moves(tmp_path):
    # a summary is read back while nothing it is made from changed; a new summary format (the same units made
    # into another summary) is such a change
    from tests.pipelines.unit_functions import HoldingPipeline

    class Counting(HoldingPipeline):
        built = 0

        def summarize(self, run_dir, *, plots: bool = True) -> dict:
            type(self).built += 1
            return super().summarize(run_dir, plots=plots)

    config, run = HoldingConfig(held_from=9), tmp_path / "run"
    quiet = dict(executor=LocalExecutor(1), log=lambda line: None, progress=False, plots=False)
    pipeline = Counting()
    assert pipeline.run(config, run, **quiet) == {"kind": "holding", "values": [2, 4, 6]}
    pipeline.run(config, run, **quiet)
    assert Counting.built == 1, "nothing changed: read back"
    pipeline.summary_format = 2
    pipeline.run(config, run, **quiet)
    assert Counting.built == 2, "another summary format: rebuilt"
    pipeline.run(config, run, **quiet)
    assert Counting.built == 2
