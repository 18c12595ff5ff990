"""Unit functions for the executor tests: importable by name in spawned worker processes and Ray workers; and
:data:`HOLDING`, a pipeline of them whose units wait until they are let go (a run to kill while it runs)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from lth_sparse.executors import ProcessExecutor
from lth_sparse.pipelines.base import Pipeline
from lth_sparse.runs import read_json
from lth_sparse.units import Unit


def double(config: dict, directory: Path, log, progress) -> dict:
    (directory / "output.txt").write_text(str(config["x"] * 2))
    log(f"doubled {config['x']}")
    return {"value": config["x"] * 2, "pid": os.getpid()}


def fail(config: dict, directory: Path, log, progress) -> dict:
    raise ValueError(f"boom in unit {config['x']}")


def die_once(config: dict, directory: Path, log, progress) -> dict:
    """Killed (SIGKILL, as by `kill -9 PID`) on its first attempt; succeeds on the next."""
    marker = directory / "attempted"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return {"value": config["x"], "attempts": 2}


def always_die(config: dict, directory: Path, log, progress) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)


def imp_seed_killed_after_round_0(config, directory: Path, log, progress) -> dict:
    """The IMP unit, its process killed once (SIGKILL) as soon as its round 0 is finished."""
    from lth_sparse.pipelines.imp_rounds import imp_seed

    marker = directory / "killed_once"

    def watching_log(line: str) -> None:
        log(line)
        if (directory / "round_00" / "done.json").exists() and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    return imp_seed(config, directory, watching_log, progress)


RELEASE = "release"
"""The file in a :data:`HOLDING` run's directory that lets its held units finish."""


def hold(config: dict, directory: Path, log, progress) -> dict:
    """Writes its process id to ``started``, then waits until the run directory has :data:`RELEASE` (at most
    two minutes, a test that never lets go failing rather than hanging)."""
    (directory / "started").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not (directory.parent / RELEASE).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{directory.parent / RELEASE} never appeared")
        time.sleep(0.05)
    return {"value": config["x"], "pid": os.getpid()}


@dataclass(frozen=True)
class HoldingConfig:
    """Units ``unit_1`` ... ``unit_{units}``: from ``held_from`` on :func:`hold`, the others :func:`double`."""

    units: int = 3
    held_from: int = 2


class HoldingPipeline(Pipeline):
    """One stage of :func:`double` and :func:`hold` units; its summary lists the values of the finished ones."""

    kind = "holding"
    config_class = HoldingConfig

    def plan(self, config: HoldingConfig) -> list[list[Unit]]:
        return [
            [
                Unit(f"{__name__}:{'hold' if x >= config.held_from else 'double'}", {"x": x}, f"unit_{x}")
                for x in range(1, config.units + 1)
            ]
        ]

    def summarize(self, run_dir, *, plots: bool = True) -> dict:
        config = HoldingConfig(**read_json(Path(run_dir) / "config.json")["config"])
        values = [result["value"] for result in self.unit_results(Path(run_dir), config).values()]
        return self.write_summary(run_dir, config, {"kind": self.kind, "values": values})


HOLDING = HoldingPipeline()


def run_holding(out_dir: str, workers: int = 2) -> dict:
    """The default :data:`HOLDING` run in ``out_dir`` through a process pool (what a test starts, then kills)."""
    return HOLDING.run(
        HoldingConfig(), out_dir, executor=ProcessExecutor(workers, threads=1), log=print, progress=False
    )
