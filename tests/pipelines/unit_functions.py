"""Unit functions for the executor tests: importable by name in spawned worker processes and Ray workers."""

from __future__ import annotations

import os
import signal
from pathlib import Path


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
