"""Executors: where a pipeline's units run, and with how many CPU threads each.

One interface runs any pipeline anywhere (see :mod:`lth_sparse.units` and :mod:`lth_sparse.pipelines.base`):

- :class:`LocalExecutor` (``--executor local``, the default): in this process, in order;
- :class:`ProcessExecutor` (``--executor process --workers N``): N local worker processes,
  each running one unit at a time; a unit whose worker dies (killed, out of memory) is
  retried on a fresh worker up to ``retries`` times; a unit that raises is reported with
  its traceback once the others have finished (errors are not retried: they would recur);
  the workers die with the process that started them, however it dies (within about
  0.1 s; see :func:`die_with_parent`), so that no unit goes on alone;
- :class:`RayExecutor` (``--executor ray``): each unit a Ray task on a cluster;
- :class:`SlurmExecutor` (``--executor slurm``): each stage a SLURM job array (through submitit), a unit
  (or stack of units) a task of it, with its CPUs, GPUs, memory, time limit and partition.

A unit's files are the same whichever executor ran it (same seeds, same files, same
thread count): each calls :func:`lth_sparse.units.run_unit`.

Threads: torch's default (one OpenMP thread per core) collapses when the cores are
already busy. On this project's 2-core machine, with another process running, one
dense IMP round took 5-6 s on one thread and 66-81 s on the default two (OpenMP
threads spin-wait for each other on a core that is not theirs). So each executor
gives each unit ``threads`` threads, by default the idle cores shared among its
workers (:func:`default_threads`), so that workers x threads fits the cores. Results
may differ in the last bits between thread counts, so the count used is recorded in
the run's ``config.json``.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from lth_sparse.errors import UserError
from lth_sparse.units import run_unit

__all__ = [
    "EXECUTORS",
    "LocalExecutor",
    "ProcessExecutor",
    "RayExecutor",
    "SlurmExecutor",
    "UnitsFailed",
    "default_threads",
    "die_with_parent",
    "make_executor",
    "resolve_threads",
    "sbatch_message",
    "usable_cores",
]

EXECUTORS = ("local", "process", "ray", "slurm")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads(workers: int = 1) -> int:
    """Threads per worker when none are asked for: ``OMP_NUM_THREADS`` if it is set, else the
    usable cores not already busy (the 1-minute load average, rounded, counts as busy cores),
    shared among ``workers`` workers of this job; at least 1."""
    _check_count("workers", workers, 1)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value >= 1:
            return value
    cores = usable_cores()
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):  # no load average on this platform
        busy = 0
    return max(1, (cores - min(busy, cores - 1)) // workers)


def resolve_threads(requested: int | None, workers: int = 1) -> int:
    """``requested`` checked (a positive int), or :func:`default_threads` when it is ``None``."""
    if requested is None:
        return default_threads(workers)
    return _check_count("threads", requested, 1)


def _check_count(name: str, value, minimum: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum`` (0 or 1), else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise UserError(f"{name} must be {expected}, got {value!r}")
    return value


class UnitsFailed(RuntimeError):
    """Units that raised (with their tracebacks) or whose worker died more often than allowed."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = dict(failures)
        parts = [f"--- {name} ---\n{why.rstrip()}" for name, why in self.failures.items()]
        super().__init__(f"{len(self.failures)} unit(s) failed: {', '.join(self.failures)}\n" + "\n".join(parts))


def _unit_bar(total: int, progress: bool | None, desc: str):
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if progress is None else not progress
    return tqdm(total=total, desc=desc, unit="unit", disable=disable, leave=False)


class LocalExecutor:
    """Units in this process, one after the other (a unit's log lines are echoed)."""

    name = "local"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = resolve_threads(threads, 1)

    def run(
        self, units: Sequence, run_dir, *, log: Callable[[str], None] = print, progress: bool | None = None
    ) -> None:
        for i, unit in enumerate(units):
            if len(units) > 1:
                log(f"[unit {i + 1}/{len(units)}] {unit.name}")
            run_unit(unit, run_dir, threads=self.threads, echo=log, progress=progress)


PARENT_POLL_SECONDS = 0.1
"""How often a worker looks whether the process that started it is still its parent."""

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Make this process end within a moment of the death of ``parent`` (its parent's process id), however that
    dies (SIGKILL included): where Linux offers it, the kernel sends it SIGKILL when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``); and a daemon thread ends it (``os._exit``) once its parent is no longer
    ``parent`` (an orphan is given to init or to a subreaper), every :data:`PARENT_POLL_SECONDS`, which
    catches what the first cannot (another platform, a parent that died before the request). A unit cut short
    so has written no ``done.json``: it is run again by the next run."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc to ask: the watcher alone
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)  # at once: no clean-up that could write into the run directory

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _worker(conn, run_dir: str, threads: int, parent: int) -> None:
    """A worker process: runs the units sent over its own pipe until it receives None (or the pipe closes); it
    dies with ``parent``, the process that started it (:func:`die_with_parent`)."""
    die_with_parent(parent)
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        index, unit = item
        try:
            run_unit(unit, run_dir, threads=threads, progress=False)
            message = ("done", index, None)
        except BaseException:  # noqa: BLE001 - reported to the parent with its traceback
            message = ("error", index, traceback.format_exc())
        conn.send(message)  # synchronous: written before the next unit starts


class ProcessExecutor:
    """``workers`` local processes (spawned), each running one unit at a time.

    Each worker talks to the parent over its own pipe (no shared queue, whose lock a killed
    worker could take with it), so the parent always knows which unit a dead worker was
    running: that unit alone is retried (up to ``retries`` times) on a fresh worker. A unit
    that raises is not retried; its traceback is reported, with every other failure, once the
    rest have finished (:class:`UnitsFailed`). The workers die with this process however it
    dies (:func:`die_with_parent`); where :meth:`run` is left by an error or an interrupt, the
    workers still running a unit are killed at once (those units run again on the next run).
    """

    name = "process"

    def __init__(self, workers: int = 2, threads: int | None = None, retries: int = 2) -> None:
        self.workers = _check_count("workers", workers, 1)
        self.retries = _check_count("retries", retries, 0)
        self.threads = resolve_threads(threads, workers)

    def run(
        self, units: Sequence, run_dir, *, log: Callable[[str], None] = print, progress: bool | None = None
    ) -> None:
        from multiprocessing.connection import wait

        context = multiprocessing.get_context("spawn")  # fork after torch has started threads is unsafe
        run_dir = str(Path(run_dir))
        pending = list(range(len(units)))
        attempts = [0] * len(units)
        failures: dict[str, str] = {}
        workers: list[dict] = []  # {"process", "conn", "index" (of the unit it runs, or None)}

        def start_worker() -> None:
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(child, run_dir, self.threads, os.getpid()), daemon=True)
            process.start()
            child.close()
            workers.append({"process": process, "conn": parent, "index": None})

        def died(worker: dict, bar) -> None:
            workers.remove(worker)
            worker["conn"].close()
            worker["process"].join(timeout=5)
            index = worker["index"]
            attempts[index] += 1
            why = f"its worker process died (exit code {worker['process'].exitcode})"
            if attempts[index] > self.retries:
                failures[units[index].name] = f"{why}; tried {attempts[index]} times"
                bar.update(1)
            else:
                log(f"{units[index].name}: {why}; retrying ({attempts[index]}/{self.retries})")
                pending.insert(0, index)
            if pending and len(workers) < self.workers:
                start_worker()

        for _ in range(min(self.workers, len(units))):
            start_worker()
        with _unit_bar(len(units), progress, f"units ({self.workers} workers)") as bar:
            try:
                while pending or any(w["index"] is not None for w in workers):
                    for w in workers:
                        if w["index"] is None and pending:
                            w["index"] = pending.pop(0)
                            w["conn"].send((w["index"], units[w["index"]]))
                    busy = [w for w in workers if w["index"] is not None]
                    ready = set(wait([w["conn"] for w in busy] + [w["process"].sentinel for w in busy], timeout=1.0))
                    for w in busy:
                        if w["conn"] in ready:
                            try:
                                status, index, payload = w["conn"].recv()
                            except (EOFError, OSError):
                                died(w, bar)
                                continue
                            w["index"] = None
                            if status == "error":
                                failures[units[index].name] = payload
                                log(f"{units[index].name}: failed (its traceback follows at the end)")
                            bar.update(1)
                        elif w["process"].sentinel in ready:
                            died(w, bar)
            finally:
                for w in workers:
                    if w["index"] is not None:  # left by an error or an interrupt: the unit is not waited for
                        w["process"].kill()
                        continue
                    try:
                        w["conn"].send(None)
                    except (BrokenPipeError, OSError):
                        pass
                for w in workers:
                    w["process"].join(timeout=10)
                    if w["process"].is_alive():
                        w["process"].kill()
                    w["conn"].close()
        if failures:
            raise UnitsFailed(failures)


class RayExecutor:
    """Each unit a Ray task (retried by Ray up to ``retries`` times when its worker dies).

    ``address``: ``"auto"`` (a cluster started with ``ray start --head`` on this machine or
    named by ``RAY_ADDRESS``), ``HOST:PORT`` of a cluster's head, or ``"local"`` (or ``None``)
    for a local cluster started for this run. Where Ray is already initialised in this process
    (``ray.init`` called by the caller), that connection is used whatever ``address`` says.
    The run directory must be on a file system every node sees.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = "auto",
        threads: int | None = None,
        retries: int = 2,
        num_cpus: float | None = None,
        num_gpus: float = 0,
        connect_timeout: float = 10.0,
    ) -> None:
        try:
            import ray  # noqa: F401
        except ImportError as error:
            raise UserError("--executor ray needs Ray: pip install 'lth_sparse[ray]' (or pip install ray)") from error
        self.address = address
        self.retries = _check_count("retries", retries, 0)
        self.threads = resolve_threads(threads, 1)
        self.num_cpus = self.threads if num_cpus is None else num_cpus
        self.num_gpus = num_gpus
        self.connect_timeout = connect_timeout

    def _connect(self) -> None:
        import ray

        if ray.is_initialized():
            return
        address = self.address
        if address not in (None, "auto", "local"):
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise UserError(f"--ray-address must be auto or HOST:PORT, got {address!r}")
            import socket

            try:
                socket.create_connection((host, int(port)), timeout=self.connect_timeout).close()
            except OSError as error:
                raise ConnectionError(
                    f"no Ray cluster answers at {address} ({error}); start one with "
                    "'ray start --head' or check the address"
                ) from error
        try:
            # Ray's address=None would join a cluster it finds on this machine (RAY_ADDRESS, or the last one
            # started); "local" always starts a new one, as documented for None and "local" here.
            ray.init(
                address="local" if address in (None, "local") else address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        except ConnectionError as error:
            raise ConnectionError(f"could not connect to a Ray cluster at {address!r}: {error}") from error

    def run(
        self, units: Sequence, run_dir, *, log: Callable[[str], None] = print, progress: bool | None = None
    ) -> None:
        import ray

        self._connect()
        remote = ray.remote(_run_reported).options(
            max_retries=self.retries, num_cpus=self.num_cpus, num_gpus=self.num_gpus
        )
        run_dir = str(Path(run_dir).resolve())  # a worker's working directory is not the driver's on another node
        refs = {remote.remote(unit, run_dir, self.threads): unit for unit in units}
        failures: dict[str, str] = {}
        with _unit_bar(len(units), progress, "units (ray)") as bar:
            waiting = list(refs)
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                for ref in ready:
                    try:
                        status, payload = ray.get(ref)
                    except Exception as error:  # the task's worker died more often than max_retries
                        status, payload = "error", f"{type(error).__name__}: {error}"
                    if status == "error":
                        failures[refs[ref].name] = payload
                        log(f"{refs[ref].name}: failed (its traceback follows at the end)")
                    bar.update(1)
        if failures:
            raise UnitsFailed(failures)


def _run_reported(unit, run_dir: str, threads: int) -> tuple[str, str | None]:
    """``("done", None)`` once ``unit`` has run in ``run_dir`` (:func:`run_unit`), or ``("error", its traceback)``
    where it raised: what a worker on a cluster sends back to the process that waits for it."""
    try:
        run_unit(unit, run_dir, threads=threads, progress=False)
        return "done", None
    except Exception:  # noqa: BLE001 - reported to the driver with its traceback
        return "error", traceback.format_exc()


SLURM_MEMORY = re.compile(r"[1-9][0-9]*[KMGT]?")
"""A ``--mem`` of sbatch: a positive integer with an optional unit (K, M, G, T; megabytes without one)."""

SLURM_POLL_SECONDS = 1.0
"""How often :class:`SlurmExecutor` looks for its jobs' results (files in its folder; ``sacct`` is asked by
submitit's own schedule: at 2, 4, 8, ... s after a submission, then every 10 minutes at most)."""

SLURM_STATE_LIMIT_SECONDS = 600.0
"""How long a job may stay unknown to SLURM's accounting (``sacct``) before it is given up: a job that no
``sacct`` answer lists could be waited for forever (a cancelled job would never be seen to end)."""

SLURM_DRAIN_SECONDS = 600.0
"""How long a cancelled or killed job is waited for to leave the queue before its unit is resubmitted (the others
followed meanwhile): submitit ignores SIGTERM, so a cancelled job's process lives on until SLURM kills it
(``KillWait`` seconds later), and two jobs of one unit must not write its folder at once; a job still listed
after this long fails its unit instead of being doubled."""


class SlurmExecutor:
    """Each stage a SLURM job array through submitit: a task per unit (or stack of units), at most
    ``array_parallelism`` running at once, each with ``cpus_per_task`` CPUs (default: ``threads``; the
    threads default to the CPUs asked for, else 1: this node's cores say nothing of the cluster's),
    ``gpus_per_task`` GPUs, ``mem`` memory (sbatch's ``--mem``: ``4G``, ``500M``; default: the partition's),
    a time limit of ``time_limit`` minutes, on ``partition`` (default: the cluster's); ``options`` are more sbatch
    options (``{"account": "lab", "qos": "low"}``).

    A unit that raises is reported with its traceback once the others have finished (not retried: it would
    recur). A job that ends without a result (cancelled with ``scancel``, its node lost, killed for its memory)
    is resubmitted, up to ``retries`` times, once it has left the queue; a job that reaches its time limit or is
    preempted is requeued by submitit (up to ``retries`` times for time limits): either way the unit resumes
    from what it had finished (its ``done.json`` files). Options the cluster refuses are a :class:`UserError`
    with sbatch's message, on one line. ``folder``: submitit's scripts, pickles and logs (default:
    ``RUN/slurm``). The run directory and ``folder`` must be on a file system every node sees; the jobs run
    this process's Python, with its environment.
    """

    name = "slurm"

    def __init__(
        self,
        threads: int | None = None,
        retries: int = 2,
        *,
        partition: str | None = None,
        cpus_per_task: int | None = None,
        gpus_per_task: int = 0,
        mem: str | None = None,
        time_limit: int = 60,
        array_parallelism: int | None = None,
        folder: str | os.PathLike | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        try:
            import submitit  # noqa: F401
        except ImportError as error:
            raise UserError(
                "--executor slurm needs submitit: pip install 'lth_sparse[slurm]' (or pip install submitit)"
            ) from error
        missing = [command for command in ("sbatch", "srun", "sacct", "squeue") if shutil.which(command) is None]
        if missing:
            raise UserError(f"--executor slurm: no SLURM here ({', '.join(missing)} not found on PATH)")
        self.retries = _check_count("retries", retries, 0)
        # Sized by what the jobs ask for, never by this (login) node's cores: the threads are the CPUs a task
        # asks for, or the CPUs those asked for (1 where neither is given).
        if cpus_per_task is not None:
            cpus_per_task = _check_count("--slurm-cpus-per-task", cpus_per_task, 1)
        self.threads = _check_count("--threads", threads, 1) if threads is not None else (cpus_per_task or 1)
        self.cpus_per_task = self.threads if cpus_per_task is None else cpus_per_task
        self.gpus_per_task = _check_count("--slurm-gpus-per-task", gpus_per_task, 0)
        self.time_limit = _check_count("--slurm-time", time_limit, 1)
        self.array_parallelism = (
            None if array_parallelism is None else _check_count("--slurm-array-parallelism", array_parallelism, 1)
        )
        if mem is not None and not SLURM_MEMORY.fullmatch(str(mem)):
            raise UserError(f"--slurm-mem must be a size such as 4G or 500M, got {mem!r}")
        if partition is not None and not partition.strip():
            raise UserError("--slurm-partition must not be empty")
        self.partition, self.mem, self.folder = partition, mem, folder
        self.options = dict(options or {})

    def parameters(self) -> dict:
        """The parameters of submitit's ``SlurmExecutor`` (sbatch's options) every job of this executor gets."""
        parameters = {"job_name": "lth-sparse", "time": self.time_limit, "cpus_per_task": self.cpus_per_task}
        if self.gpus_per_task:
            parameters["gpus_per_task"] = self.gpus_per_task
        if self.mem is not None:
            parameters["mem"] = self.mem
        if self.partition is not None:
            parameters["partition"] = self.partition
        if self.array_parallelism is not None:
            parameters["array_parallelism"] = self.array_parallelism
        if self.options:
            parameters["additional_parameters"] = dict(self.options)
        return parameters

    def run(
        self, units: Sequence, run_dir, *, log: Callable[[str], None] = print, progress: bool | None = None
    ) -> None:
        import submitit
        from submitit.core.utils import FailedJobError, UncompletedJobError

        run_dir = Path(run_dir).resolve()  # the jobs' working directory is not this process's
        folder = Path(self.folder).resolve() if self.folder is not None else run_dir / "slurm"
        slurm = submitit.SlurmExecutor(folder=folder, max_num_timeout=self.retries)
        slurm.update_parameters(**self.parameters())
        attempts = [0] * len(units)
        jobs: dict[int, object] = {}  # unit index -> its job, while it runs
        draining: dict[int, tuple[str, float]] = {}  # unit index -> its ended job's id and when it must be gone
        unknown_since: dict[int, float] = {}
        failures: dict[str, str] = {}

        def submit(indices: list[int]) -> None:
            errors = io.StringIO()
            try:
                with contextlib.redirect_stderr(errors):  # submitit echoes sbatch's complaint: it is our message
                    new = slurm.map_array(
                        _SlurmUnit(), [units[i] for i in indices], [str(run_dir)] * len(indices),
                        [self.threads] * len(indices),
                    )  # fmt: skip
            except FailedJobError as error:
                raise UserError(f"SLURM refused the job: {sbatch_message(str(error))}") from None
            jobs.update(zip(indices, new))
            first = new[0].job_id.split("_")[0]
            log(f"{len(indices)} unit(s) submitted to SLURM as job {first}" + (" (an array)" if len(new) > 1 else ""))

        with _unit_bar(len(units), progress, "units (slurm)") as bar:
            try:
                submit(list(range(len(units))))
                while jobs or draining:
                    time.sleep(SLURM_POLL_SECONDS)
                    again: list[int] = []
                    for index, (job_id, deadline) in list(draining.items()):
                        if not in_queue(job_id):
                            del draining[index]
                            again.append(index)
                        elif time.monotonic() > deadline:
                            del draining[index]
                            failures[units[index].name] = (
                                f"its SLURM job {job_id} ended without a result but was still in the queue "
                                f"{SLURM_DRAIN_SECONDS:.0f} s later: not resubmitted (two jobs would write one "
                                "unit's folder)"
                            )
                            bar.update(1)
                    for index, job in list(jobs.items()):
                        name = units[index].name
                        if not job.done():
                            if job.state != "UNKNOWN":
                                unknown_since.pop(index, None)
                            elif time.monotonic() - unknown_since.setdefault(index, time.monotonic()) > (
                                SLURM_STATE_LIMIT_SECONDS
                            ):
                                del jobs[index]
                                job.cancel(check=False)
                                failures[name] = (
                                    f"SLURM's accounting (sacct) reported no state for its job {job.job_id} in "
                                    f"{SLURM_STATE_LIMIT_SECONDS:.0f} s: the job cannot be followed"
                                )
                                bar.update(1)
                            continue
                        del jobs[index]
                        try:
                            status, payload = job.result()
                        except FailedJobError as error:  # raised in the job outside the unit: it would recur
                            status, payload = "error", str(error)
                        except UncompletedJobError:  # no result: cancelled, killed, its node lost, out of time
                            attempts[index] += 1
                            state = str(job.state).split()[0] if job.state else "UNKNOWN"
                            why = f"its SLURM job {job.job_id} ended without a result (state {job.state})"
                            if state == "TIMEOUT":  # submitit requeued it `retries` times already: not again
                                failures[name] = (
                                    f"its SLURM job {job.job_id} reached its time limit (--slurm-time "
                                    f"{self.time_limit} minutes) and was requeued {self.retries} times: give it "
                                    "more time"
                                )
                                bar.update(1)
                            elif attempts[index] > self.retries:
                                failures[name] = f"{why}; tried {attempts[index]} times"
                                bar.update(1)
                            else:  # resubmitted once SLURM no longer lists it (a cancelled job dies late)
                                log(f"{name}: {why}; resubmitting ({attempts[index]}/{self.retries})")
                                draining[index] = (job.job_id, time.monotonic() + SLURM_DRAIN_SECONDS)
                            continue
                        if status == "error":
                            failures[name] = payload
                            log(f"{name}: failed (its traceback follows at the end)")
                        bar.update(1)
                    if again:
                        submit(again)
            finally:
                for job in jobs.values():  # left by an error or an interrupt: no job goes on alone
                    job.cancel(check=False)
        if failures:
            raise UnitsFailed(failures)


class _SlurmUnit:
    """The function a SLURM job runs: :func:`_run_reported`. Its ``checkpoint`` makes submitit requeue a job
    that reaches its time limit or is preempted, which then resumes its unit (``done.json`` decides)."""

    def __call__(self, unit, run_dir: str, threads: int) -> tuple[str, str | None]:
        return _run_reported(unit, run_dir, threads)

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def sbatch_message(text: str) -> str:
    """sbatch's complaint on one line: its lines without their ``sbatch: error:`` prefix, joined by ``; ``."""
    lines = [re.sub(r"^\s*(sbatch:\s*)?(error:\s*)?", "", line).strip() for line in text.splitlines()]
    return "; ".join(line for line in lines if line) or "no message"


SLURM_LIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING",
     "STAGE_OUT", "STOPPED", "REQUEUE_HOLD", "REQUEUE_FED"}
)  # fmt: skip
"""The states of a job that may still run (squeue also lists an ended job, CANCELLED or FAILED, for a while)."""


def in_queue(job_id: str) -> bool:
    """Whether SLURM's queue lists the job ``job_id`` in a state in which it may still run."""
    listed = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    if listed.returncode != 0:  # an ended job's id is no longer valid to squeue
        return False
    return any(state.strip() in SLURM_LIVE_STATES for state in listed.stdout.splitlines())


def make_executor(
    name: str = "local",
    *,
    workers: int = 2,
    threads: int | None = None,
    retries: int = 2,
    ray_address: str | None = "auto",
    num_cpus: float | None = None,
    num_gpus: float = 0,
    slurm: dict | None = None,
):
    """The executor named ``name`` (one of :data:`EXECUTORS`), with its options checked; ``slurm``: the keyword
    options of :class:`SlurmExecutor` (``partition``, ``cpus_per_task``, ``mem``, ``time_limit``, ...)."""
    if name == "local":
        return LocalExecutor(threads)
    if name == "process":
        return ProcessExecutor(workers, threads, retries)
    if name == "ray":
        return RayExecutor(ray_address, threads, retries, num_cpus, num_gpus)
    if name == "slurm":
        return SlurmExecutor(threads, retries, **(slurm or {}))
    raise UserError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
