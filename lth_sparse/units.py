"""Units: the resumable pieces of work every pipeline is made of, and the one place that runs one.

A **unit** is one independent, resumable piece of work: a picklable description (its
function by name, its config, its sub-directory of the run). It writes only into its own
directory and finishes by writing ``done.json``; a unit with ``done.json`` is never run
again, and a killed unit restarts (from its own last saved state where it keeps one, else
from scratch). Its directory also gets ``unit.log``, the lines it logged. A unit of a run sent to
experiment trackers carries the run's :class:`~lth_sparse.tracking.TrackingSpec`: it is tracked where it
runs, as its own tracker run (:func:`~lth_sparse.tracking.track_units`).

Every executor (:mod:`lth_sparse.executors`) runs a unit through :func:`run_unit`, so a
unit's files are the same whichever executor ran it. Under ``torchrun`` every rank runs
the unit; rank 0 alone decides whether it is done and writes its directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lth_sparse.distributed import World
from lth_sparse.runs import Steps
from lth_sparse.tracking import TrackingSpec, track_units
from lth_sparse.train import TrainConfig

__all__ = ["Stack", "Unit", "run_unit", "stacks", "unit_identity"]


@dataclass(frozen=True)
class Unit:
    """One resumable piece of work of a pipeline.

    ``function`` is ``"module:name"`` of ``fn(config, directory: Path, log, progress) -> dict``
    (``log(line)`` writes to the unit's log; ``progress``: whether to show progress bars); the
    dict it returns becomes ``done.json``. ``directory`` is relative to the run directory.

    A unit that can train together with others (stacked training, :func:`~lth_sparse.train.train_stacked`)
    names ``stacked``: ``"module:name"`` of ``fn(configs, directories, logs, progress) -> list[dict]``, which
    does for several units of ``function`` at once what ``function`` does for each (each unit's files in its
    own directory, each result its ``done.json``), and ``stack_key``: units of one stage whose ``stacked`` and
    ``stack_key`` are equal may run as one :class:`Stack` (their trainings share what stacking needs: the
    architecture, the data's shape, the schedule).

    ``tracking``: the experiment trackers of its run (set by the driver where the run has any), which
    :func:`run_unit` opens the unit's tracker run in.
    """

    function: str
    config: Any
    directory: str
    label: str = ""
    stacked: str = ""
    stack_key: Any = None
    tracking: TrackingSpec | None = None

    @property
    def name(self) -> str:
        return self.label or self.directory


@dataclass(frozen=True)
class Stack:
    """Units that run together, each its own unit still: its directory, its ``unit.log``, its ``done.json``
    (:func:`run_unit` runs those of its members that are not done, through their ``stacked`` function)."""

    members: tuple[Unit, ...]

    @property
    def name(self) -> str:
        return f"{self.members[0].name} and {len(self.members) - 1} more, stacked"


def stacks(units: Sequence[Unit], size: int) -> list[Unit | Stack]:
    """``units`` with those that can train together (the same ``stacked`` and ``stack_key``) gathered into
    :class:`Stack` s of at most ``size`` members, in the order of their first members; a stackable unit with no
    partner (or ``size`` 1) is a stack of one, trained the stacked way: a unit's results do not depend on how
    many others share its stack (a resumed run regroups what is left), only on whether it is stacked, which is
    the caller's choice (``--stack 1``: it does not call this)."""
    if size < 1:
        raise ValueError(f"a stack holds at least 1 unit, got {size}")
    groups: dict[tuple, list[Unit]] = {}
    order: list[Unit | tuple] = []
    for unit in units:
        if not unit.stacked:
            order.append(unit)
            continue
        key = (unit.stacked, unit.stack_key)
        if key not in groups or len(groups[key][-1]) == size:
            groups.setdefault(key, []).append([])
            order.append((key, len(groups[key]) - 1))
        groups[key][-1].append(unit)
    out: list[Unit | Stack] = []
    for entry in order:
        if isinstance(entry, Unit):
            out.append(entry)
            continue
        key, i = entry
        out.append(Stack(tuple(groups[key][i])))
    return out


def unit_identity(config) -> dict[str, Any]:
    """What tells a unit apart among its run's, from its arguments ``config``: the plain values (str, int, float,
    bool) among the fields of a spec dataclass (seed, round, task, ticket kind, copy, ...) and the ``seed`` of a
    config it carries where it has none of its own; of a whole pipeline config (an IMP seed's), its ``seed``.
    The tags of the unit's tracker run."""
    if isinstance(config, TrainConfig):
        return {"seed": config.seed} if hasattr(config, "seed") else {}
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return {}
    identity: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, (str, int, float, bool)):
            identity[field.name] = value
        elif isinstance(value, TrainConfig) and hasattr(value, "seed"):
            identity.setdefault("seed", value.seed)
    return identity


def _resolve(function: str) -> Callable:
    module, _, name = function.partition(":")
    if not module or not name:
        raise ValueError(f"a unit's function must be 'module:name', got {function!r}")
    return getattr(importlib.import_module(module), name)


def run_unit(
    unit: Unit | Stack,
    run_dir: str | Path,
    *,
    threads: int | None = None,
    echo: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> dict | list[dict]:
    """Run ``unit`` in ``run_dir / unit.directory`` unless it is done; returns its ``done.json``.

    ``threads`` sets torch's CPU threads for the unit (restored afterwards). Every line the
    unit logs is appended to its ``unit.log`` (and passed to ``echo`` when given). The same
    whichever executor calls it: this is the one place that applies the ``done.json`` rule.
    Under torchrun every rank runs the unit; rank 0 decides whether it is done and alone
    writes its directory and ``unit.log`` (the others log nothing), and alone tracks it (its ``tracking``).

    A :class:`Stack`: its members that are not done run together through their ``stacked`` function, each
    logging to its own ``unit.log`` and finished by its own ``done.json``; returns their ``done.json`` s.
    """
    if isinstance(unit, Stack):
        return _run_stack(unit, Path(run_dir), threads, echo, progress)
    world = World.current()
    steps = Steps(run_dir)
    directory = steps / unit.directory
    finished = world.on_writer(lambda: steps.result(unit.directory) if steps.is_done(unit.directory) else None)
    if finished is not None:
        return finished
    function = _resolve(unit.function)
    with contextlib.ExitStack() as files:
        log = _unit_log(files, directory if world.writer else None, echo)
        log(
            _stamp(
                unit.name, "started" + _threads_note(threads) + (f" on {world.size} ranks" if world.size > 1 else "")
            )
        )
        tracked = [(unit.tracking, directory, unit.name, unit_identity(unit.config))] if world.writer else []
        tracking = files.enter_context(track_units(tracked))
        started = time.perf_counter()
        with _torch_threads(threads):
            result = function(unit.config, directory, log, progress)
        world.on_writer(lambda: steps.mark_done(unit.directory, result), share=False)
        tracking.finish([result])
        log(_stamp(unit.name, f"done in {time.perf_counter() - started:.2f} s"))
    return result


def _run_stack(
    stack: Stack, run_dir: Path, threads: int | None, echo: Callable[[str], None] | None, progress: bool | None
) -> list[dict]:
    steps = Steps(run_dir)
    pending = [u for u in stack.members if not steps.is_done(u.directory)]
    if not pending:
        return [steps.result(u.directory) for u in stack.members]
    if World.current().size > 1:
        raise RuntimeError("stacked units do not run under torchrun: every rank would train every member")
    function = _resolve(pending[0].stacked)
    with contextlib.ExitStack() as files:
        logs = [_unit_log(files, steps / unit.directory, echo) for unit in pending]
        for unit, log in zip(pending, logs):
            log(_stamp(unit.name, f"started in a stack of {len(pending)}" + _threads_note(threads)))
        tracking = files.enter_context(
            track_units([(u.tracking, steps / u.directory, u.name, unit_identity(u.config)) for u in pending])
        )
        started = time.perf_counter()
        with _torch_threads(threads):
            results = function([u.config for u in pending], [steps / u.directory for u in pending], logs, progress)
        if len(results) != len(pending):
            raise RuntimeError(f"{pending[0].stacked} returned {len(results)} results for {len(pending)} units")
        for unit, log, result in zip(pending, logs, results):
            steps.mark_done(unit.directory, result)
            log(_stamp(unit.name, f"done in {time.perf_counter() - started:.2f} s (a stack of {len(pending)})"))
        tracking.finish(results)
    return results


def _unit_log(files: contextlib.ExitStack, directory: Path | None, echo: Callable[[str], None] | None):
    """The ``log`` of a unit: each line appended to ``directory/unit.log`` (opened in ``files``; the directory
    made where missing) and passed to ``echo``; with no ``directory`` (a rank other than 0) it logs nothing."""
    if directory is None:
        return lambda line: None
    directory.mkdir(parents=True, exist_ok=True)
    log_file = files.enter_context(open(directory / "unit.log", "a"))

    def log(line: str) -> None:
        log_file.write(line + "\n")
        log_file.flush()
        if echo is not None:
            echo(line)

    return log


def _stamp(name: str, what: str) -> str:
    """A unit's log line of when it started or ended: ``# DATE TIME NAME: WHAT``."""
    return f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {name}: {what}"


def _threads_note(threads: int | None) -> str:
    return f" ({threads} thread{'s' if threads != 1 else ''})" if threads is not None else ""


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """torch's CPU threads set to ``threads`` (where given) for the block, restored after it."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
