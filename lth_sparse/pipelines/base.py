"""The contract every pipeline shares, and the one driver that runs it.

A **pipeline** is a frozen config dataclass and four methods: ``check(config)`` refuses bad
input before anything is written; ``plan(config)`` lists the run's **units**
(:mod:`lth_sparse.units`) in **stages** (the units of a stage are independent; a stage starts
when the one before it is done), reading nothing but the config; ``prepare(run, log)`` readies
a claimed run directory; ``summarize(run_dir)`` builds ``summary.json`` and the plots from the
planned units' saved results alone (so ``lth-sparse plot RUN`` can redo it any time).

:meth:`Pipeline.run` is the driver, for one run; :func:`drive` runs several runs of one pipeline
together (a sweep's points: every unit of a stage through one executor call). Both check every
run, then claim it, plan it, hand each stage's unfinished units to an executor
(:mod:`lth_sparse.executors`), summarise and report. A summary and its plots are rebuilt only
when something under them changed (a unit's ``done.json``, the run's ``config.json``, a file
outside the run it reads, the package's version), or plots are asked for where none were drawn:
re-running a finished run does no work. The command line and sweeps both go through them.

One process at a time runs a run directory: the driver takes the directory's
:class:`~lth_sparse.runs.RunLock` when it claims it and holds it until its summary is written, so a
second driver (or ``lth-sparse plot``) on it is refused at once, naming the process that holds it;
the lock dies with its holder. A run with experiment trackers (the config's ``tracker``;
:mod:`lth_sparse.tracking`) gets its own tracker run from the driver (its config, then its summary and plots)
and each of its units one where the unit runs. The summary of an unfinished run (``lth-sparse plot`` on a killed
run: :meth:`Pipeline.summarize_partial`) says so (``"partial": {"units_done": k, "units": n}``)
and never replaces a ``summary.json`` that holds more figures.

Under ``torchrun`` (several ranks; :mod:`lth_sparse.distributed`) every rank runs the same
units in the same order, in process (the local executor); rank 0 alone checks, claims, logs,
writes ``unit.log``, ``done.json`` and the summary, and the decisions it takes from the run
directory are shared with the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from lth_sparse.atomic import atomic_write_json, read_json, strict_json_value
from lth_sparse.distributed import launched, launched_world_size
from lth_sparse.errors import UserError, judging_input
from lth_sparse.experiment import release_shared
from lth_sparse.integrity import Damaged
from lth_sparse.registry import Registry
from lth_sparse.runs import RunDir, RunLock, Steps, check_run
from lth_sparse.tracking import RunTracking, TrackingSpec, check_trackers, resolve_wandb_mode
from lth_sparse.units import Unit, stacks

__all__ = [
    "KINDS",
    "PIPELINES",
    "Pipeline",
    "RunPlan",
    "claim",
    "drive",
    "open_run",
    "pipeline_for",
    "register_pipeline",
    "repair",
    "summarize_if_changed",
    "summary_figures",
]

SUMMARY_STAMP = "summary-stamp.json"
"""The file beside ``summary.json`` that says what it was built from (see :meth:`Pipeline.summary_stamp`)."""


class Pipeline:
    """What a pipeline provides: subclasses set ``kind``, ``config_class`` and the command line's texts
    (``help``: one line for ``lth-sparse --help``; ``description`` and ``epilog`` for ``lth-sparse KIND
    --help``), and implement ``plan`` and ``summarize`` (``check``, ``prepare``, ``report`` and
    ``summary_inputs`` where they have something to do)."""

    kind: str = ""
    config_class: type = object
    summary_format: int = 1
    """The version of what :meth:`summarize` makes of the same units: raised when a summary's content changes
    (a field renamed, a figure computed otherwise), so that a finished run's summary is rebuilt on its next
    resume instead of read back (:meth:`summary_stamp`)."""
    help: str = ""
    description: str = ""
    epilog: str = ""

    @property
    def default_out(self) -> str:
        """The run directory the command line writes when given no ``--out``."""
        return f"runs/{self.kind}"

    def check(self, config) -> None:
        """Refuse bad input (unknown data set, device, model, source run) before anything is written."""

    def plan(self, config) -> list[list[Unit]]:
        """The run's units in stages, from the config alone (no data loaded, no file read)."""
        raise NotImplementedError

    def prepare(self, run: RunDir, log: Callable[[str], None]) -> None:
        """Called once the run directory is claimed and before the first stage."""

    def summarize(self, run_dir: Path, *, plots: bool = True) -> dict:
        """Build ``summary.json`` (and the plots) from the units' saved results alone, written by
        :meth:`write_summary`; returns the summary ``summary.json`` holds."""
        raise NotImplementedError

    def units_done(self, run_dir: Path, config) -> tuple[int, int]:
        """(how many of the units planned for ``config`` have their ``done.json`` in ``run_dir``, how many
        are planned)."""
        steps = Steps(run_dir)
        units = [u.directory for stage in self.plan(config) for u in stage]
        return sum(steps.is_done(d) for d in units), len(units)

    def write_summary(self, run_dir: Path, config, summary: dict) -> dict:
        """Write ``summary`` of the run of ``config`` in ``run_dir`` to ``summary.json``; returns what the file
        then holds. A finished run's summary is written as it is. An unfinished run's says so, under its last
        key ``"partial": {"units_done": k, "units": n}``, and is written only where it holds at least as many
        figures (:func:`summary_figures`) as the ``summary.json`` already there, which is kept otherwise (and
        returned): a summary of fewer results never replaces one of more."""
        path = Path(run_dir) / "summary.json"
        done, planned = self.units_done(run_dir, config)
        if done < planned:
            summary = {**summary, "partial": {"units_done": done, "units": planned}}
            try:
                there = read_json(path)
            except (OSError, ValueError):
                there = None
            if isinstance(there, dict) and summary_figures(there) > summary_figures(summary):
                return there
        atomic_write_json(path, summary)
        return summary

    def summarize_partial(
        self, run_dir, *, plots: bool = True, log: Callable[[str], None] = print
    ) -> tuple[dict, tuple[int, int]]:
        """:meth:`summarize` of ``run_dir`` whether or not its run has finished (what ``lth-sparse plot`` does),
        under the run's lock (:class:`~lth_sparse.runs.RunLock`: a run another process is running is refused,
        with a :class:`~lth_sparse.runs.RunBusy` naming it, rather than summarised while it writes). Returns
        the summary ``summary.json`` holds (see :meth:`write_summary`) and (units done, units planned); where
        not every unit is done, logs ``partial: K of N units done``. The run's files are checked first
        (:func:`~lth_sparse.runs.check_run`): a damaged step's result is used where its ``done.json`` is intact
        (it is what the summary is built from), with a warning naming the damaged file; a damaged ``done.json``
        is a :class:`~lth_sparse.integrity.Damaged` naming it."""
        run_dir = Path(run_dir)
        with RunLock(run_dir):
            _warn_of_damage(run_dir, log)
            summary = self.summarize(run_dir, plots=plots)
            done, planned = self.units_done(run_dir, self.saved_config(run_dir)[1])
        if done < planned:
            log(f"partial: {done} of {planned} units done")
        return summary, (done, planned)

    def unit_results(self, run_dir: Path, config, within: str = "") -> dict[str, dict]:
        """The ``done.json`` of every planned unit of ``config`` in ``run_dir`` that is done (whose directory
        lies under ``within``, where given), by unit directory, in the order of the directories' paths: what
        :meth:`summarize` is built from."""
        steps = Steps(run_dir)
        units = sorted((u.directory for stage in self.plan(config) for u in stage), key=PurePosixPath)
        return {
            d: steps.result(d)
            for d in units
            if PurePosixPath(within) in (PurePosixPath(d), *PurePosixPath(d).parents) and steps.is_done(d)
        }

    def stack_size(self, config) -> int:
        """How many of the run's trainings a stack holds at most: ``config.stack``, or for ``auto`` (``None``) what
        :func:`~lth_sparse.train.recommended_stack` measured pays for :meth:`stacked_model` at the config's
        batch size on its device (1 where the pipeline has no stacked trainings)."""
        from lth_sparse.train import recommended_stack

        stack = getattr(config, "stack", 1)
        if stack is not None:
            return stack
        model = self.stacked_model(config)
        return 1 if model is None else recommended_stack(model, config.batch_size, config.device)

    def check_stack(self, config) -> None:
        """Refuse a ``--stack K`` whose stack would not fit in the memory available (saying what it needs)."""
        from lth_sparse.train import available_memory, stack_memory

        stack = getattr(config, "stack", None)
        if stack is None or stack == 1:
            return
        model = self.stacked_model(config)
        if model is None:
            return
        need, have = stack_memory(model, config.batch_size, stack), available_memory()
        if need > have:
            fits = max(1, stack * have // need)
            raise ValueError(
                f"--stack {stack}: a stack of {stack} trainings of this model at batch {config.batch_size} needs "
                f"about {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB is available; use --stack {fits} or auto"
            )

    def stacked_model(self, config):
        """One member of the run's stacked trainings: the model they train (``None``: none is stacked)."""
        return None

    def summary_inputs(self, config) -> list[Path]:
        """Files outside the run directory that :meth:`summarize` reads (e.g. other runs' results)."""
        return []

    def report(self, summary: dict) -> list[str]:
        """Lines that present ``summary`` at the end of a run (e.g. a table); none by default."""
        return []

    def saved_config(self, run_dir: Path) -> tuple[dict, Any]:
        """(``config.json`` of ``run_dir`` as saved, the config it holds); a run of another kind is refused."""
        from lth_sparse.config import config_from_options
        from lth_sparse.runs import ConfigMismatch

        saved = read_json(Path(run_dir) / "config.json")
        if saved.get("kind") != self.kind:
            raise ConfigMismatch(f"{run_dir} holds a {saved.get('kind')!r} run, not a {self.kind} run")
        return saved, config_from_options(
            self.config_class, saved["config"], f"{Path(run_dir) / 'config.json'}", presets=False
        )

    def summary_stamp(self, run_dir: Path, config, units: Sequence[Unit]) -> str:
        """What ``summary.json`` of ``run_dir`` is built from, as a digest: the package's version, the
        pipeline's :attr:`summary_format`, the run's ``config.json``, every planned unit's ``done.json`` and
        :meth:`summary_inputs` (each by size and modification time)."""
        from lth_sparse._version import __version__

        def stat(path: Path) -> list:
            try:
                s = os.stat(path)
            except OSError:
                return [str(path), None]
            return [str(path), s.st_size, s.st_mtime_ns]

        record = [
            __version__,
            self.summary_format,
            (run_dir / "config.json").read_bytes().hex(),
            [stat(run_dir / u.directory / "done.json") for u in units],
            [stat(Path(p)) for p in self.summary_inputs(config)],
        ]
        return hashlib.sha256(json.dumps(record).encode()).hexdigest()

    def run(
        self,
        config,
        out_dir,
        *,
        executor=None,
        log: Callable[[str], None] = print,
        progress: bool | None = None,
        plots: bool = True,
    ) -> dict:
        """Run (or resume) ``config`` in ``out_dir``; returns the summary, also in ``out_dir/summary.json``.

        ``executor`` (default :class:`~lth_sparse.executors.LocalExecutor`, with ``config.threads``)
        runs the units; its thread count per unit is recorded in ``config.json``. Nothing is written
        before the inputs are checked (:class:`~lth_sparse.errors.UserError` says what is wrong).
        Units that fail are reported together (:class:`lth_sparse.executors.UnitsFailed`) once the
        others of their stage have finished; the stages after it do not start.

        Under torchrun (``WORLD_SIZE`` > 1) the process group is opened here for the run (and closed
        after it, unless the caller had opened it; see :func:`lth_sparse.distributed.launched`) and the
        executor must be the local one. Rank 0 checks the config, claims the directory, logs and
        summarises; each stage's unfinished units, as rank 0 finds them, run on every rank; every rank
        returns rank 0's summary.
        """
        executor, config = _with_executor(self, config, executor)
        ranks = launched_world_size()
        if ranks > 1 and getattr(executor, "name", None) != "local":
            raise UserError(
                f"under torchrun ({ranks} ranks) every rank runs the units itself, in process: use "
                f"--executor local (the default), not {getattr(executor, 'name', type(executor).__name__)}"
            )
        return drive(
            self,
            [config],
            lambda: [open_run(self, config, out_dir)],
            out_dir,
            executor=executor,
            log=log,
            progress=progress,
            plots=plots,
            report=True,
        )[0]


@dataclasses.dataclass
class RunPlan:
    """One run the driver runs: its pipeline, its checked (not yet claimed) directory, where its units'
    directories are written relative to the executor's root (``prefix``: a sweep's point name, else none),
    and the directory's lock (taken by :func:`claim`)."""

    pipeline: Pipeline
    run: RunDir
    prefix: str = ""
    lock: RunLock = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.lock = RunLock(self.run.path)

    @property
    def config(self):
        return self.run.config


def _with_executor(pipeline: Pipeline, config, executor):
    """``executor`` (default: the local one with the config's threads) and ``config`` with the executor's
    thread count, which ``config.json`` records."""
    from lth_sparse.executors import LocalExecutor

    if not isinstance(config, pipeline.config_class):
        raise TypeError(f"{pipeline.kind} needs a {pipeline.config_class.__name__}, got {type(config).__name__}")
    has_threads = any(f.name == "threads" for f in dataclasses.fields(config))
    executor = executor or LocalExecutor(config.threads if has_threads else None)
    if has_threads:
        config = dataclasses.replace(config, threads=executor.threads)
    return executor, config


def open_run(pipeline: Pipeline, config, out_dir, prefix: str = "") -> RunPlan:
    """The run of ``config`` in ``out_dir``, checked (the directory's kind and config, then the config's inputs
    by :meth:`Pipeline.check`, unless the directory holds this very config and every unit of it is done: a
    finished run re-run does no work), not yet written. What ``check`` refuses (``ValueError``, ``KeyError``,
    ``OSError``: it judges the user's input) is raised as a :class:`~lth_sparse.errors.UserError`, and so is an
    experiment tracker whose package is missing."""
    check_trackers(getattr(config, "tracker", ()))
    with judging_input():
        run = RunDir(out_dir, config, pipeline.kind, claim=False)
        if not _finished(pipeline, run):  # a finished run of the same options has nothing left to check
            pipeline.check(config)
            pipeline.check_stack(config)
    return RunPlan(pipeline, run, prefix)


def _finished(pipeline: Pipeline, run: RunDir) -> bool:
    """Whether ``run`` holds its very config (every option as given) and every unit its plan lists is done."""
    if not run.recorded():
        return False
    done, planned = pipeline.units_done(run.path, run.config)
    return done == planned


def claim(plan: RunPlan, log: Callable[[str], None]) -> RunPlan:
    """Take the lock of a checked run directory (:class:`~lth_sparse.runs.RunBusy` at once where another
    process holds it), claim it (replacing an unfinished run of another config, which is said), let the
    pipeline prepare it, and say how much of it is done. The caller releases ``plan.lock`` once the run's
    summary is written."""
    run = plan.run
    with judging_input():  # an --out that cannot be written
        plan.lock.acquire()
        if run.replacing is not None:
            log(
                f"replacing the unfinished run in {run.path} (no unit of it had finished; it had another config: "
                f"{run.replacing})"
            )
        run.claim()
    plan.pipeline.prepare(run, log)
    repair(plan, log)
    finished, planned = plan.pipeline.units_done(run.path, plan.config)
    if planned and finished == planned:
        log(f"found a finished run in {run.path}: all {planned} units are done, nothing to run")
    elif finished:
        log(f"resuming: {finished} of {planned} units already done in {run.path}")
    return plan


def _warn_of_damage(run_dir: Path, log: Callable[[str], None]) -> None:
    """Check the files of ``run_dir`` (:func:`~lth_sparse.runs.check_run`) for a summary built from its finished
    steps' results: a damaged ``done.json`` is raised, other damaged files are said, one warning line a step."""
    found = check_run(run_dir)
    unreadable = [d for d in found.damages() if d.path.name == "done.json"]
    if unreadable:
        raise Damaged(f"{unreadable[0]}; re-running the command that made {run_dir} repairs it")
    for step, damages in found.damaged.items():
        if not step:
            continue  # config.json is read (and named where it does not parse), summary.json rewritten
        log(
            f"warning: {_first_damage(damages)}: the summary uses {step}'s recorded result; "
            "re-running the command repairs it"
        )


def _first_damage(damages) -> str:
    """A damaged step's first damaged file, and how many more it has."""
    return f"{damages[0]}" + (f" (and {len(damages) - 1} more of its files)" if len(damages) > 1 else "")


def repair(plan: RunPlan, log: Callable[[str], None]) -> None:
    """Find the finished steps of a claimed run whose files are damaged (:func:`~lth_sparse.runs.check_run`:
    a file missing, cut short, overwritten, a ``done.json`` that does not parse) and mark each unfinished, with
    the steps above it up to the planned unit that holds it, so that the run's units redo them (a unit skips
    its steps that are intact). Each is said in one warning line naming the first damaged file. Damaged steps
    outside every planned unit are left to ``lth-sparse verify``."""
    run = plan.run
    units = sorted({u.directory for stage in plan.pipeline.plan(plan.config) for u in stage}, key=PurePosixPath)
    for step, damages in check_run(run.path).damaged.items():
        path = PurePosixPath(step)
        holders = [u for u in units if PurePosixPath(u) in (path, *path.parents)]
        if not holders:
            continue
        unit = max(holders, key=lambda u: len(PurePosixPath(u).parts))  # the innermost unit holding the step
        log(f"warning: {_first_damage(damages)}: {step} runs again")
        while True:
            run.undo(path.as_posix())
            if path == PurePosixPath(unit):
                break
            path = path.parent


def summarize_if_changed(plan: RunPlan, stages: list[list[Unit]], plots: bool) -> dict:
    """The run's summary: rebuilt by :meth:`Pipeline.summarize` where anything it is made from changed since it
    was last built (see :meth:`Pipeline.summary_stamp`) or plots are asked for where none were drawn, else read
    back from ``summary.json``. ``SUMMARY_STAMP`` beside it records the digest and whether plots were drawn."""
    pipeline, path = plan.pipeline, plan.run.path
    units = [u for stage in stages for u in stage]
    stamp = {"built_from": pipeline.summary_stamp(path, plan.config, units), "plots": plots}
    try:
        before = read_json(path / SUMMARY_STAMP)
    except (OSError, ValueError):
        before = None
    if (
        isinstance(before, dict)
        and before.get("built_from") == stamp["built_from"]
        and (before.get("plots") or not plots)
        and (path / "summary.json").exists()
    ):
        return read_json(path / "summary.json")
    summary = pipeline.summarize(path, plots=plots)
    atomic_write_json(path / SUMMARY_STAMP, stamp)
    return summary


def drive(
    pipeline: Pipeline,
    configs: Sequence,
    open_plans: Callable[[], list[RunPlan]],
    root,
    *,
    executor,
    log: Callable[[str], None] = print,
    progress: bool | None = None,
    plots: bool = True,
    report: bool = False,
) -> list[dict]:
    """The one driver: run the runs of ``pipeline`` with ``configs`` together. ``open_plans()`` opens and
    checks every one of them (:func:`open_run`) before any is written; then each is claimed, every stage's
    unfinished units of all of them go through one ``executor.run`` call per stage (their directories relative
    to ``root``, under each run's ``prefix``), and each run's summary is built where something under it changed.
    Returns the summaries, in the order of ``configs``. With ``report`` (one run in ``root``), the pipeline's
    report of its summary and where it lies are logged at the end.

    Each run's lock (:class:`~lth_sparse.runs.RunLock`) is taken when it is claimed and held until the summaries
    are written (or the driver fails): a run another process holds is refused (:class:`~lth_sparse.runs.RunBusy`).

    A run with experiment trackers (:mod:`lth_sparse.tracking`) has its own tracker run opened once it is claimed
    (its config as hyperparameters) and closed with its summary's figures and plots (or as failed, where the
    driver fails); its units carry its :class:`~lth_sparse.tracking.TrackingSpec` to where they run. Whether W&B
    logs online is decided once, here.

    Under torchrun (one run only) every rank calls it: rank 0 alone opens, claims (and locks), finds the
    unfinished units and summarises, and shares what it found; every rank runs the units and returns rank 0's
    summaries.
    """
    if len(configs) > 1:
        refuse_under_torchrun()
    root, started = Path(root), time.time()
    with launched(getattr(configs[0], "device", "cpu")) as world, contextlib.ExitStack() as locks:
        if not world.writer:
            log, progress = _silent, False

        trackings: list[RunTracking | None] = []  # on rank 0: each run's own tracker run, where it has trackers

        def open_and_claim() -> list[RunPlan]:
            plans = open_plans()
            for plan in plans:
                locks.callback(plan.lock.release)
                claim(plan, log)
            trackings.extend(_start_tracking(plans, log))
            for tracking in trackings:
                if tracking is not None:  # closed as failed where the driver fails (a no-op once closed)
                    locks.callback(tracking.finish, None)
            return plans

        plans = world.on_writer(open_and_claim, share=False)
        specs = [t.spec if t is not None else None for t in trackings] or [None] * len(configs)
        sizes: list[int] = []

        def stacked(units: list[Unit]) -> list:
            """``units`` in stacks (one process alone trains each under torchrun), their size decided once,
            where a stage first has stackable units left to run."""
            if world.size > 1 or not any(u.stacked for u in units):
                return units
            if not sizes:
                sizes.append(pipeline.stack_size(configs[0]))
            if sizes[0] == 1:  # each alone (--stack 1, or not measured to pay): the units themselves
                return units
            # a process executor's workers each get a stack where there are enough units: smaller stacks side by
            # side rather than one big one and idle workers (a unit's numbers do not depend on its stack)
            workers = getattr(executor, "workers", 1)
            return stacks(units, max(1, min(sizes[0], -(-sum(bool(u.stacked) for u in units) // workers))))

        stages_of = [pipeline.plan(config) for config in configs]  # pure: every rank plans alike
        prefixes = world.on_writer(lambda: [plan.prefix for plan in plans])

        def unfinished(i: int) -> list[tuple[int, int]]:  # on rank 0: (run, unit) of stage i not done
            return [
                (k, j)
                for k, stages in enumerate(stages_of)
                if i < len(stages)
                for j, unit in enumerate(stages[i])
                if not plans[k].run.is_done(unit.directory)
            ]

        for i in range(max((len(stages) for stages in stages_of), default=0)):
            pending = world.on_writer(functools.partial(unfinished, i))
            if pending:
                units = [_under(stages_of[k][i][j], prefixes[k], specs[k]) for k, j in pending]
                executor.run(stacked(units), root, log=log, progress=progress)
        release_shared()  # the data the units of this process shared
        summaries = world.on_writer(
            lambda: [summarize_if_changed(plan, stages, plots) for plan, stages in zip(plans, stages_of)]
        )
        for plan, tracking, summary in zip(plans or [], trackings, summaries):
            if tracking is not None:
                tracking.finish(summary, sorted((plan.run.path / "plots").rglob("*.png")) if plots else ())
                for line in tracking.spec.where():
                    log(line)
        locks.close()  # the summaries are written: another process may run these runs now
        if report:
            for line in pipeline.report(summaries[0]):
                log(line)
            log(
                f"done in {time.time() - started:.0f} s: {root / 'summary.json'}"
                + (f", plots in {root / 'plots'}" if plots else "")
            )
    return summaries


def summary_figures(summary: dict) -> int:
    """How many figures ``summary`` holds at any depth, its ``partial`` count aside, as ``summary.json`` holds
    them (:func:`~lth_sparse.atomic.strict_json_value`): numbers; neither a boolean nor a NaN (written ``null``)
    counts. What :meth:`Pipeline.write_summary` compares to keep the richer of two summaries of one run."""

    def count(value) -> int:
        if isinstance(value, dict):
            return sum(count(v) for v in value.values())
        if isinstance(value, list):
            return sum(count(v) for v in value)
        return int(isinstance(value, (int, float)) and not isinstance(value, bool))

    return sum(count(value) for key, value in strict_json_value(summary).items() if key != "partial")


def refuse_under_torchrun() -> None:
    """Several runs at once (a sweep) are one process's job: under torchrun every rank would run every run."""
    ranks = launched_world_size()
    if ranks > 1:
        raise UserError(
            f"a sweep does not run under torchrun ({ranks} ranks): run it once, with --executor "
            "process or ray to spread its points"
        )


def _under(unit: Unit, prefix: str, tracking: TrackingSpec | None = None) -> Unit:
    """``unit`` of a run in ``prefix/``, its directory relative to the root that holds that run, carrying the
    run's ``tracking`` (where it has trackers)."""
    if tracking is not None:
        unit = dataclasses.replace(unit, tracking=tracking)
    if not prefix:
        return unit
    return dataclasses.replace(
        unit, directory=(PurePosixPath(prefix) / unit.directory).as_posix(), label=f"{prefix}: {unit.name}"
    )


def _start_tracking(plans: Sequence[RunPlan], log: Callable[[str], None]) -> list[RunTracking | None]:
    """Each claimed run's own tracker run (:class:`~lth_sparse.tracking.RunTracking`; ``None`` for a run without
    trackers, and for a finished one: the tracker run of when it ran holds it, and running the command again, a
    sweep re-made, adds no copy), W&B's mode decided once for all of them."""
    modes: dict[str, str] = {}
    trackings: list[RunTracking | None] = []
    try:
        for plan in plans:
            config = plan.config
            trackers = getattr(config, "tracker", ())
            if not trackers:
                trackings.append(None)
                continue
            done, planned = plan.pipeline.units_done(plan.run.path, config)
            if done == planned:
                trackings.append(None)
                log(f"{plan.run.path}: every unit is done already: no new tracker run")
                continue
            requested = config.wandb_mode if "wandb" in trackers else "offline"
            if requested not in modes:
                modes[requested] = resolve_wandb_mode(requested, log)
            spec = TrackingSpec.of_run(config, plan.pipeline.kind, plan.run.hash, plan.run.path, modes[requested])
            settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
            trackings.append(RunTracking(spec, settings))
    except BaseException:
        for tracking in trackings:
            if tracking is not None:
                tracking.finish(None)
        raise
    return trackings


def _silent(line: str) -> None:
    """The log of the ranks other than 0 under torchrun: rank 0 logs for the run."""


KINDS = ("imp", "consensus", "transfer", "instability", "plant")
"""The pipelines, each registered by its module ``lth_sparse.pipelines.<kind>``, in the command line's order."""

PIPELINES: Registry[Pipeline] = Registry("pipeline")


def register_pipeline(pipeline: Pipeline) -> Pipeline:
    """Register ``pipeline`` under its ``kind`` (each module ``lth_sparse.pipelines.<kind>`` registers its own)."""
    return PIPELINES.register(pipeline.kind)(pipeline)


def pipeline_for(kind: str) -> Pipeline:
    """The registered pipeline ``kind`` (one of :data:`KINDS`); another name is a :class:`KeyError`."""
    if kind not in KINDS:
        raise KeyError(f"unknown pipeline {kind!r}; known: {', '.join(sorted(KINDS))}")
    if kind not in PIPELINES:
        import importlib

        importlib.import_module(f"lth_sparse.pipelines.{kind}")  # registers itself
    return PIPELINES[kind]
