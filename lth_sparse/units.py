"""Units: the resumable pieces of work every pipeline is made of, and the one place that runs one.

A **unit** is one independent, resumable piece of work: a picklable description (its
function by name, its config, its sub-directory of the run). It writes only into its own
directory and finishes by writing ``done.json``; a unit with ``done.json`` is never run
again, and a killed unit restarts (from its own last saved state where it keeps one, else
from scratch). Its directory also gets ``unit.log``, the lines it logged.

Every executor (:mod:`lth_sparse.executors`) runs a unit through :func:`run_unit`, so a
unit's files are the same whichever executor ran it. Under ``torchrun`` every rank runs
the unit; rank 0 alone decides whether it is done and writes its directory.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lth_sparse.distributed import World
from lth_sparse.runs import Steps

__all__ = ["Unit", "run_unit"]


@dataclass(frozen=True)
class Unit:
    """One resumable piece of work of a pipeline.

    ``function`` is ``"module:name"`` of ``fn(config, directory: Path, log, progress) -> dict``
    (``log(line)`` writes to the unit's log; ``progress``: whether to show progress bars); the
    dict it returns becomes ``done.json``. ``directory`` is relative to the run directory.
    """

    function: str
    config: Any
    directory: str
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.directory


def _resolve(function: str) -> Callable:
    module, _, name = function.partition(":")
    if not module or not name:
        raise ValueError(f"a unit's function must be 'module:name', got {function!r}")
    return getattr(importlib.import_module(module), name)


def run_unit(
    unit: Unit,
    run_dir: str | Path,
    *,
    threads: int | None = None,
    echo: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> dict:
    """Run ``unit`` in ``run_dir / unit.directory`` unless it is done; returns its ``done.json``.

    ``threads`` sets torch's CPU threads for the unit (restored afterwards). Every line the
    unit logs is appended to its ``unit.log`` (and passed to ``echo`` when given). The same
    whichever executor calls it: this is the one place that applies the ``done.json`` rule.
    Under torchrun every rank runs the unit; rank 0 decides whether it is done and alone
    writes its directory and ``unit.log`` (the others log nothing).
    """
    world = World.current()
    steps = Steps(run_dir)
    directory = steps / unit.directory
    finished = world.on_writer(lambda: steps.result(unit.directory) if steps.is_done(unit.directory) else None)
    if finished is not None:
        return finished
    function = _resolve(unit.function)
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    with contextlib.ExitStack() as stack:
        log_file = None
        if world.writer:
            directory.mkdir(parents=True, exist_ok=True)
            log_file = stack.enter_context(open(directory / "unit.log", "a"))

        def log(line: str) -> None:
            if log_file is None:
                return
            log_file.write(line + "\n")
            log_file.flush()
            if echo is not None:
                echo(line)

        log(
            f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {unit.name}: started"
            + (f" ({threads} thread{'s' if threads != 1 else ''})" if threads is not None else "")
            + (f" on {world.size} ranks" if world.size > 1 else "")
        )
        started = time.perf_counter()
        try:
            result = function(unit.config, directory, log, progress)
        finally:
            torch.set_num_threads(threads_before)
        world.on_writer(lambda: steps.mark_done(unit.directory, result), share=False)
        log(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {unit.name}: done in {time.perf_counter() - started:.2f} s")
    return result
