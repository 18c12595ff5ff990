"""The contract every pipeline shares: units of work in stages, run by an executor, then a summary.

A **unit** is one independent, resumable piece of work: a picklable description
(its function by name, its config, its sub-directory of the run). It writes only
into its own directory and finishes by writing ``done.json``; a unit with
``done.json`` is never run again, and a killed unit restarts (from its own last
saved state where it keeps one, else from scratch). Its directory also gets
``unit.log``, the lines it logged.

A **pipeline** is a config dataclass, ``plan(config)``, which returns its units in
**stages** (the units of a stage are independent; a stage starts when the one
before it is done), ``check(config)``, which refuses bad input before anything is
written, and ``summarize(run_dir)``, which builds ``summary.json`` and the plots
from the units' saved results alone (so ``lth-sparse plot RUN`` can redo it any time).

:func:`run_pipeline` ties them together: it checks, claims the run directory,
hands each stage's unfinished units to an executor (:mod:`lth_sparse.executors`)
and summarises.

Under ``torchrun`` (several ranks; :mod:`lth_sparse.distributed`) every rank runs the
same units in the same order, in process (the local executor); rank 0 alone checks,
claims, logs, writes ``unit.log``, ``done.json`` and the summary, and the decisions it
takes from the run directory are shared with the others.
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

from lth_sparse.distributed import World, launched, launched_world_size
from lth_sparse.pipelines.steps import release_shared
from lth_sparse.runs import RunDir, Steps

__all__ = ["PIPELINES", "Pipeline", "Unit", "claim_run", "open_run", "over_seeds", "pipeline_for",
           "register_pipeline", "run_pipeline", "run_unit"]


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


def run_unit(unit: Unit, run_dir: str | Path, *, threads: int | None = None,
             echo: Callable[[str], None] | None = None, progress: bool | None = None) -> dict:
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

        log(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {unit.name}: started"
            + (f" ({threads} thread{'s' if threads != 1 else ''})" if threads is not None else "")
            + (f" on {world.size} ranks" if world.size > 1 else ""))
        started = time.perf_counter()
        try:
            result = function(unit.config, directory, log, progress)
        finally:
            torch.set_num_threads(threads_before)
        world.on_writer(lambda: steps.mark_done(unit.directory, result), share=False)
        log(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {unit.name}: done in {time.perf_counter() - started:.2f} s")
    return result


def over_seeds(values) -> dict:
    """A figure over seeds (or any repeats): ``mean``, ``std`` (the sample std, n - 1; 0 for one value), ``min``,
    ``max`` and ``n``; what every pipeline's summary reports beside its means."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    std = float(t.std(unbiased=True)) if len(values) > 1 else 0.0
    return {"mean": float(t.mean()), "std": std, "min": float(t.min()), "max": float(t.max()), "n": len(values)}


class Pipeline:
    """What a pipeline provides; subclasses set ``kind`` and ``config_class`` and implement the methods."""

    kind: str = ""
    config_class: type = object
    description: str = ""

    def check(self, config) -> None:
        """Refuse bad input (unknown data set, device, model) before anything is written."""

    def plan(self, config) -> list[list[Unit]]:
        raise NotImplementedError

    def summarize(self, run_dir: Path, *, plots: bool = True) -> dict:
        """Build ``summary.json`` (and the plots) from the units' saved results alone."""
        raise NotImplementedError

    def saved_config(self, run_dir: Path) -> tuple[dict, Any]:
        """(``config.json`` of ``run_dir`` as saved, the config it holds); a run of another kind is refused."""
        from lth_sparse.config import config_from_options
        from lth_sparse.runs import ConfigMismatch, read_json

        saved = read_json(Path(run_dir) / "config.json")
        if saved.get("kind") != self.kind:
            raise ConfigMismatch(f"{run_dir} holds a {saved.get('kind')!r} run, not a {self.kind} run")
        return saved, config_from_options(self.config_class, saved["config"], f"{Path(run_dir) / 'config.json'}",
                                          presets=False)

    def report(self, summary: dict) -> list[str]:
        """Lines that present ``summary`` at the end of a run (e.g. a table); none by default."""
        return []

    def prepare(self, run: RunDir, log: Callable[[str], None]) -> None:
        """Called once the run directory is claimed and before the first stage (e.g. to migrate a layout)."""


PIPELINES: dict[str, Pipeline] = {}


def register_pipeline(pipeline: Pipeline) -> Pipeline:
    if pipeline.kind in PIPELINES:
        raise ValueError(f"pipeline {pipeline.kind!r} is already registered")
    PIPELINES[pipeline.kind] = pipeline
    return pipeline


def pipeline_for(kind: str) -> Pipeline:
    if kind not in PIPELINES:
        importlib.import_module(f"lth_sparse.pipelines.{kind}")  # registers itself
    return PIPELINES[kind]


def run_pipeline(pipeline: Pipeline, config, out_dir, *, executor=None, log: Callable[[str], None] = print,
                 progress: bool | None = None, plots: bool = True) -> dict:
    """Check ``config``, claim ``out_dir``, run every stage's unfinished units through ``executor``
    (default: in process, in order), then summarise; returns the summary (also in ``summary.json``).

    Units that fail are reported together (:class:`lth_sparse.executors.UnitsFailed`) once the
    others of their stage have finished; the stages after it do not start.

    Under torchrun (``WORLD_SIZE`` > 1) the process group is opened here for the run (and
    closed after it, unless the caller had opened it; see :func:`lth_sparse.distributed.launched`)
    and the executor must be the local one. Rank 0 checks the config, claims the directory,
    logs and summarises; each stage's unfinished units, as rank 0 finds them, run on every
    rank; every rank returns rank 0's summary.
    """
    from lth_sparse.executors import LocalExecutor

    if not isinstance(config, pipeline.config_class):
        raise TypeError(f"{pipeline.kind} needs a {pipeline.config_class.__name__}, got {type(config).__name__}")
    executor = executor or LocalExecutor()
    ranks = launched_world_size()
    if ranks > 1 and getattr(executor, "name", None) != "local":
        raise ValueError(f"under torchrun ({ranks} ranks) every rank runs the units itself, in process: use "
                         f"--executor local (the default), not {getattr(executor, 'name', type(executor).__name__)}")
    stages = pipeline.plan(config)
    with launched(getattr(config, "device", "cpu")) as world:
        if not world.writer:
            log, progress = _silent, False
        run = world.on_writer(lambda: _claim(pipeline, config, out_dir, stages, log), share=False)
        run_path = run.path if world.writer else Path(out_dir)
        started = time.time()
        for stage in stages:
            pending = world.on_writer(lambda: [i for i, u in enumerate(stage) if not run.is_done(u.directory)])
            if pending:
                executor.run([stage[i] for i in pending], run_path, log=log, progress=progress)
        release_shared()  # the data the units of this process shared
        summary = world.on_writer(lambda: pipeline.summarize(run_path, plots=plots))
        for line in pipeline.report(summary):
            log(line)
        log(f"done in {time.time() - started:.0f} s: {run_path / 'summary.json'}"
            + (f", plots in {run_path / 'plots'}" if plots else ""))
    return summary


def _silent(line: str) -> None:
    """The log of the ranks other than 0 under torchrun: rank 0 logs for the run."""


def open_run(pipeline: Pipeline, config, out_dir) -> RunDir:
    """The run directory for ``config``, checked (its kind and config, and the config's inputs), not yet written."""
    run = RunDir(out_dir, config, pipeline.kind, claim=False)
    pipeline.check(config)
    return run


def claim_run(pipeline: Pipeline, run: RunDir, log: Callable[[str], None]) -> None:
    """Claim a run directory that :func:`open_run` checked (replacing an unfinished run of another config,
    which is said) and let the pipeline prepare it."""
    if run.replacing is not None:
        log(f"replacing the unfinished run in {run.path} (no unit of it had finished; it had another config: "
            f"{run.replacing})")
    run.claim()
    pipeline.prepare(run, log)


def _claim(pipeline: Pipeline, config, out_dir, stages: list[list[Unit]], log: Callable[[str], None]) -> RunDir:
    """Check ``config`` and ``out_dir``, claim the directory and prepare it (what only rank 0 does)."""
    run = open_run(pipeline, config, out_dir)
    claim_run(pipeline, run, log)
    units = [u for stage in stages for u in stage]
    finished = [u for u in units if run.is_done(u.directory)]
    if units and len(finished) == len(units):
        log(f"found a finished run in {run.path}: all {len(units)} units are done, nothing to run")
    elif finished:
        log(f"resuming: {len(finished)} of {len(units)} units already done in {run.path}")
    return run
