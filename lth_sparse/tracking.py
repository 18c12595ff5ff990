"""Experiment trackers: a run's curves, figures, identity and config in TensorBoard, Weights & Biases or MLflow.

``--tracker tensorboard,wandb,mlflow`` (any of them; the config's ``tracker`` field, which is not part of a
run's identity: it changes neither the run's hash nor how its trainings stack) sends a run to those trackers
as it runs, under any executor:

- **one tracker run per unit**, opened where the unit runs (:func:`lth_sparse.units.run_unit`, in the
  driver's process or a process/Ray worker: the unit carries its :class:`TrackingSpec`), named after the unit
  and grouped by the run's hash. Its identity (the pipeline, the run's hash, the unit's directory and name,
  the plain values among its arguments: seed, round, task, ticket kind, copy, ...) goes in as tags (W&B: its
  config and group; TensorBoard: its hyperparameters); its training curves are the validation records its
  trainings write to their ``metrics.jsonl`` (:class:`~lth_sparse.train.loop.ValidationRecords`: training
  loss, validation loss and accuracy, learning rate, epoch, at the iterations the loop validates), each
  under the key ``FOLDER/NAME`` (``round_01/val_loss``: the training's folder in the unit; ``train/...``
  for one in the unit's own folder), with the iteration as the step; when it finishes, the numbers of its
  ``done.json`` as its final figures (``final/...``). Nothing is computed or read back for the trackers:
  they get the records the loop already wrote. Trainings that keep no ``metrics.jsonl`` (a pruning
  method's inner trainings, a linear probe) are not tracked.
- **one tracker run for the run itself**, opened by the driver (:func:`lth_sparse.pipelines.base.drive`)
  before the units: the run's ``config.json`` as its hyperparameters, and once the summary is built, the
  summary's figures (``summary/...``) and its plots. Under MLflow the units' runs are its children.

Where they write: TensorBoard event files in ``TRACKER_DIR/tensorboard/KIND-HASH/UNIT_DIR/`` (the run's own
in ``.../KIND-HASH/_run/``), W&B runs in ``TRACKER_DIR/wandb/`` (project ``--tracker-project``, group
``KIND-HASH``, job type ``unit`` or ``run``), MLflow runs in experiment ``--tracker-project`` of
``--mlflow-uri`` (default: ``$MLFLOW_TRACKING_URI``, else the SQLite store ``TRACKER_DIR/mlflow.db`` with its
artifacts beside it). ``TRACKER_DIR`` is ``--tracker-dir``, by default ``RUN/tracking``.

W&B logs online where it has credentials (``WANDB_API_KEY``, or ``wandb login``'s netrc entry) and reaches its
server; else it logs offline, said once, and ``wandb sync`` uploads the runs later. ``WANDB_MODE=offline``
(or ``--wandb-mode offline``) logs offline without asking.

The packages are optional extras, imported only when chosen: a tracker whose package is missing is refused
before anything is written, in one line naming the pip command. A unit run again after a kill opens a new
tracker run (the killed attempt's stays, marked failed where the tracker knows it). Under torchrun rank 0
alone tracks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import itertools
import math
import netrc
import os
import socket
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lth_sparse.errors import UserError

__all__ = [
    "TRACKERS",
    "WANDB_MODES",
    "RunTracking",
    "TrackerFailed",
    "TrackingSpec",
    "UnitTracking",
    "check_trackers",
    "figures",
    "parse_trackers",
    "record_validation",
    "resolve_wandb_mode",
    "track_units",
]

TRACKERS = ("tensorboard", "wandb", "mlflow")
"""The experiment trackers ``--tracker`` takes."""

WANDB_MODES = ("online", "offline")

_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""The module each tracker imports (and the extra of lth_sparse that installs it, of the same name)."""

_RUN = "_run"
"""The TensorBoard folder of the run's own tracker run, beside its units' folders."""

_MLFLOW_BATCH = 1000  # MLflow takes at most 1000 metrics (and 100 params) in one log_batch call
_MLFLOW_PARAMS = 100
_MLFLOW_PARAM_LENGTH = 6000


class TrackerFailed(RuntimeWarning):
    """A tracker that failed while a unit ran (opening, logging or closing its run): the training goes on
    without it."""


def parse_trackers(value) -> tuple[str, ...]:
    """``--tracker``: a comma-separated list (or a config file's list) of :data:`TRACKERS`, each once, in the
    order given; ``none`` or nothing: none. An unknown name is a ValueError naming the known ones."""
    items = value.replace(",", " ").split() if isinstance(value, str) else [str(v) for v in value]
    if items == ["none"]:
        return ()
    unknown = [name for name in items if name not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracker {unknown[0]!r}; known: {', '.join(TRACKERS)} (or none)")
    return tuple(dict.fromkeys(items))


def check_trackers(trackers: Sequence[str]) -> None:
    """Import the package of each tracker in ``trackers``; a missing one is a :class:`~lth_sparse.errors.UserError`
    of one line naming the pip command that installs it."""
    for name in trackers:
        try:
            importlib.import_module(_PACKAGES[name])
        except ImportError:
            raise UserError(
                f"--tracker {name} needs the {_PACKAGES[name]} package, which is not installed: "
                f"pip install 'lth_sparse[{name}]'"
            ) from None


@dataclasses.dataclass(frozen=True)
class TrackingSpec:
    """Where and how one run is tracked: what every unit of it carries to where it runs (picklable).

    ``trackers``: those chosen (:data:`TRACKERS`); ``directory``: the tracker directory (absolute);
    ``project``: the W&B project and the MLflow experiment; ``pipeline``, ``run_hash`` and ``run_dir``
    (absolute): the run's; ``wandb_mode``: ``online`` or ``offline``, as resolved once by the driver
    (:func:`resolve_wandb_mode`); ``mlflow_uri``: the MLflow tracking URI; ``mlflow_parent``: the id of the
    run's own MLflow run, whose children the units' runs are."""

    trackers: tuple[str, ...]
    directory: str
    project: str
    pipeline: str
    run_hash: str
    run_dir: str
    wandb_entity: str | None = None
    wandb_mode: str = "offline"
    mlflow_uri: str = ""
    mlflow_parent: str | None = None

    @property
    def group(self) -> str:
        """The name that groups the run's tracker runs: ``KIND-HASH``."""
        return f"{self.pipeline}-{self.run_hash}"

    @classmethod
    def of_run(cls, config, pipeline: str, run_hash: str, run_dir, wandb_mode: str) -> TrackingSpec:
        """The spec of the run of ``config`` (whose tracker options it reads) in ``run_dir``."""
        run_dir = Path(run_dir).resolve()
        directory = Path(config.tracker_dir).resolve() if config.tracker_dir else run_dir / "tracking"
        uri = config.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{directory / 'mlflow.db'}"
        return cls(
            trackers=tuple(config.tracker),
            directory=str(directory),
            project=config.tracker_project,
            pipeline=pipeline,
            run_hash=run_hash,
            run_dir=str(run_dir),
            wandb_entity=config.wandb_entity,
            wandb_mode=wandb_mode,
            mlflow_uri=uri,
        )

    def where(self) -> list[str]:
        """Lines that say where the run's trackers wrote and how to look at it."""
        lines = []
        if "tensorboard" in self.trackers:
            lines.append(f"tensorboard: tensorboard --logdir {Path(self.directory) / 'tensorboard'}")
        if "wandb" in self.trackers:
            if self.wandb_mode == "offline":
                lines.append(f"wandb: offline runs in {Path(self.directory) / 'wandb'} (upload: wandb sync DIR)")
            else:
                lines.append(f"wandb: project {self.project}, group {self.group}")
        if "mlflow" in self.trackers:
            lines.append(f"mlflow: mlflow ui --backend-store-uri {self.mlflow_uri} (experiment {self.project})")
        return lines


def resolve_wandb_mode(requested: str, log: Callable[[str], None]) -> str:
    """The mode W&B logs in: ``offline`` where asked (``requested``, or the ``WANDB_MODE`` environment
    variable), else ``online`` where there are credentials (``WANDB_API_KEY``, or a netrc entry for the W&B
    host, as ``wandb login`` writes) and the host answers; else ``offline``, with one ``warning:`` line in
    ``log`` saying why and that ``wandb sync`` uploads the runs later. ``WANDB_MODE=disabled`` (W&B's own switch)
    is ``disabled``: W&B's no-op runs, nothing written."""
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return "disabled"
    if requested == "offline" or os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun"):
        return "offline"
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = urlparse(url).hostname or url
    later = "logging offline (wandb sync uploads the runs later)"
    if not os.environ.get("WANDB_API_KEY") and not _netrc_password(host):
        log(f"warning: W&B has no credentials (WANDB_API_KEY, or wandb login): {later}")
        return "offline"
    try:
        with socket.create_connection((host, urlparse(url).port or 443), timeout=5):
            pass
    except OSError as error:
        log(f"warning: W&B's server {host} cannot be reached ({error}): {later}")
        return "offline"
    return "online"


def _netrc_password(host: str) -> str | None:
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def figures(value: Any, prefix: str = "") -> dict[str, float]:
    """The numbers of ``value`` (a JSON-like summary or result) at any depth, by their path joined with ``/``
    (a list's items by their index): what a tracker logs of a summary or a ``done.json``. Booleans, ``None``
    and NaN are left out."""
    out: dict[str, float] = {}
    if isinstance(value, Mapping):
        for key, item in value.items():
            out.update(figures(item, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            out.update(figures(item, f"{prefix}/{i}" if prefix else str(i)))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        out[prefix] = value
    return out


def _plain(value: Any) -> str | int | float | bool:
    """A hyperparameter's value as every tracker takes it: a plain number, string or bool; else its text."""
    if isinstance(value, (str, int, float, bool)):
        return value
    return "none" if value is None else str(list(value) if isinstance(value, tuple) else value)


class _TensorBoard:
    """A tracker run in TensorBoard: an event file in ``log_dir``, written by torch's ``SummaryWriter``."""

    tracker = "tensorboard"

    def __init__(self, log_dir: Path, hyperparameters: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(log_dir))
        # the HParams dashboard's records of this run, without the extra run add_hparams would make
        for summary in hparams({k: _plain(v) for k, v in hyperparameters.items()}, {}):
            self.writer.file_writer.add_summary(summary)

    def curve(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def final(self, values: Mapping[str, float]) -> None:
        self.curve(values, 0)

    def plot(self, name: str, path: Path) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        png = path.read_bytes()
        width, height = struct.unpack(">II", png[16:24])  # the PNG's IHDR: its size, without decoding it
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=name, image=image)]))

    def finish(self, failed: bool) -> None:
        self.writer.close()


class _Wandb:
    """A tracker run in Weights & Biases (several may be open at once in one process: a stack's units, and the
    driver's run beside a unit's under the local executor)."""

    tracker = "wandb"
    open_runs = 0  # in this process
    lock = threading.Lock()

    def __init__(self, spec: TrackingSpec, name: str, job_type: str, config: Mapping[str, Any]) -> None:
        import wandb

        Path(spec.directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=spec.project,
            entity=spec.wandb_entity,
            dir=spec.directory,
            mode=spec.wandb_mode,
            name=name,
            group=spec.group,
            job_type=job_type,
            tags=[spec.pipeline],
            config=dict(config),
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
        with _Wandb.lock:
            _Wandb.open_runs += 1
        self.defined: set[str] = set()

    def curve(self, values: Mapping[str, float], step: int, folder: str) -> None:
        # each training's curves against its own iteration: W&B's run-wide step only grows
        if folder not in self.defined:
            self.run.define_metric(f"{folder}/*", step_metric=f"{folder}/iteration")
            self.defined.add(folder)
        self.run.log({**values, f"{folder}/iteration": step})

    def final(self, values: Mapping[str, float]) -> None:
        self.run.summary.update(dict(values))

    def plot(self, name: str, path: Path) -> None:
        import wandb

        self.run.log({name: wandb.Image(str(path))})

    def finish(self, failed: bool) -> None:
        import wandb

        try:
            self.run.finish(exit_code=1 if failed else 0)
        finally:
            with _Wandb.lock:
                _Wandb.open_runs -= 1
                last = _Wandb.open_runs == 0
        if last:
            # finish() returns before W&B's service has written the run's files, and a worker process may end
            # without the atexit hook that waits for it: the last run of the process waits here
            wandb.teardown()


_MLFLOW_EXPERIMENTS = threading.Lock()


class _Mlflow:
    """A tracker run in MLflow, through ``MlflowClient`` (no global active run: a stack's units log side by
    side)."""

    tracker = "mlflow"

    def __init__(self, spec: TrackingSpec, name: str, tags: Mapping[str, Any], parent: str | None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=spec.mlflow_uri)
        with _MLFLOW_EXPERIMENTS:
            experiment = self.client.get_experiment_by_name(spec.project)
            if experiment is None:  # the driver creates it before any unit runs: the workers find it
                artifacts = Path(spec.directory) / "mlflow-artifacts"
                location = artifacts.as_uri() if spec.mlflow_uri.startswith("sqlite:") else None
                experiment_id = self.client.create_experiment(spec.project, artifact_location=location)
            else:
                experiment_id = experiment.experiment_id
        tags = {key: str(_plain(value)) for key, value in tags.items()}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
        self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id

    def params(self, values: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(key, str(_plain(value))[:_MLFLOW_PARAM_LENGTH]) for key, value in values.items()]
        for i in range(0, len(params), _MLFLOW_PARAMS):
            self.client.log_batch(self.run_id, params=params[i : i + _MLFLOW_PARAMS])

    def curve(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = _milliseconds()
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        for i in range(0, len(metrics), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + _MLFLOW_BATCH])

    def final(self, values: Mapping[str, float]) -> None:
        self.curve(values, 0)

    def plot(self, name: str, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=str(Path(name).parent))

    def finish(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def _attempt() -> str:
    """A name for this attempt at a tracker run, unique among a unit's: when it started, and this process."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_ATTEMPTS)}"


_ATTEMPTS = itertools.count()


def _milliseconds() -> int:
    return int(time.time() * 1000)


class _TrackerRun:
    """One tracker run in each of the chosen trackers, fed alike. A tracker that fails (its server gone, its
    database locked, a full disk) never fails the training it watches: its error is warned once and the tracker
    is dropped from this run (closed as failed where it can be), the others go on."""

    def __init__(
        self,
        spec: TrackingSpec,
        name: str,
        folder: str,
        job_type: str,
        tags: Mapping[str, Any],
        hyperparameters: Mapping[str, Any] | None = None,
    ) -> None:
        self.backends: list[Any] = []
        self.spec = spec
        self.name = name
        try:
            for tracker in spec.trackers:
                try:
                    if tracker == "tensorboard":
                        # one TensorBoard run per attempt: a unit run again after a kill must not draw its
                        # resumed curves over the killed attempt's
                        log_dir = Path(spec.directory) / "tensorboard" / spec.group / folder / _attempt()
                        backend = _TensorBoard(log_dir, {**tags, **(hyperparameters or {})})
                    elif tracker == "wandb":
                        backend = _Wandb(spec, name, job_type, {**tags, **(hyperparameters or {})})
                    else:
                        backend = _Mlflow(spec, name, tags, spec.mlflow_parent if job_type == "unit" else None)
                except Exception as error:  # a tracker must not fail the training: said, left out
                    self._warn(tracker, "could not be opened", error)
                    continue
                self.backends.append(backend)
                if hyperparameters and isinstance(backend, _Mlflow):
                    self._each(lambda b: b.params(hyperparameters), only=backend)
        except BaseException:
            self.finish(failed=True)
            raise

    def _warn(self, tracker: str, what: str, error: BaseException) -> None:
        warnings.warn(
            f"{tracker} {what} for {self.name!r} ({type(error).__name__}: {error}); the training goes on without it",
            TrackerFailed,
            stacklevel=3,
        )

    def _each(self, call: Callable[[Any], None], only: Any = None) -> None:
        """``call`` on every backend (or ``only``), each failing one warned once and closed as failed."""
        for backend in [only] if only is not None else list(self.backends):
            try:
                call(backend)
            except Exception as error:
                self._warn(backend.tracker, "failed", error)
                self.backends.remove(backend)
                with contextlib.suppress(Exception):
                    backend.finish(True)

    def curve(self, folder: str, entry: Mapping[str, Any]) -> None:
        step = entry["iteration"]
        values = {
            f"{folder}/{key}": value
            for key, value in entry.items()
            if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        self._each(lambda b: b.curve(values, step, folder) if isinstance(b, _Wandb) else b.curve(values, step))

    def final(self, values: Mapping[str, float]) -> None:
        self._each(lambda b: b.final(values))

    def plot(self, name: str, path: Path) -> None:
        self._each(lambda b: b.plot(name, path))

    def finish(self, failed: bool) -> None:
        """Close every backend (each on its own: one that fails to close is warned, the others still close)."""
        backends, self.backends = self.backends, []
        for backend in backends:
            try:
                backend.finish(failed)
            except Exception as error:
                self._warn(backend.tracker, "failed to close", error)

    @property
    def mlflow_id(self) -> str | None:
        return next((b.run_id for b in self.backends if isinstance(b, _Mlflow)), None)


class UnitTracking:
    """The tracker runs of units running in this process (:func:`track_units`): each unit's curves as its
    trainings record them, and its final figures."""

    def __init__(self, runs: Sequence[tuple[Path, _TrackerRun | None]]) -> None:
        self.runs = list(runs)  # each unit's directory and run (None: the unit is not tracked)

    def record(self, metrics_path: Path, entry: Mapping[str, Any]) -> bool:
        """Log ``entry`` (a validation record) on the run of the unit whose directory holds ``metrics_path``;
        whether one does."""
        for directory, run in self.runs:
            try:
                folder = metrics_path.parent.relative_to(directory).as_posix()
            except ValueError:
                continue
            if run is not None:
                run.curve("train" if folder == "." else folder, entry)
            return True
        return False

    def finish(self, results: Sequence[Mapping[str, Any]]) -> None:
        """Log each unit's ``done.json`` (``results``, in the units' order) as its final figures and close its
        runs as finished."""
        for (_, run), result in zip(self.runs, results):
            if run is not None:
                run.final({f"final/{key}": value for key, value in figures(result).items()})
                run.finish(failed=False)
        self.runs = []

    def close_failed(self) -> None:
        """Close the runs still open (their units raised) as failed."""
        for _, run in self.runs:
            if run is not None:
                run.finish(failed=True)
        self.runs = []


_ACTIVE: ContextVar[tuple[UnitTracking, ...]] = ContextVar("lth_sparse_unit_tracking", default=())


@contextlib.contextmanager
def track_units(units: Sequence[tuple[TrackingSpec | None, Path, str, Mapping[str, Any]]]) -> Iterator[UnitTracking]:
    """The tracker runs of ``units`` (each: its spec, ``None`` where its run is not tracked; its directory;
    its name; its identity), opened for the block: the validation records that the trainings inside it write to
    a ``metrics.jsonl`` under a unit's directory are logged on that unit's run (:func:`record_validation`).
    The caller logs the units' results by :meth:`UnitTracking.finish`; runs left open when the block ends (it
    raised) are closed as failed."""
    tracking = UnitTracking([])
    try:
        for spec, directory, name, identity in units:
            directory = Path(os.path.abspath(directory))
            if spec is None or not spec.trackers:
                tracking.runs.append((directory, None))
                continue
            folder = Path(os.path.relpath(directory, spec.run_dir)).as_posix()
            tags = {"pipeline": spec.pipeline, "run_hash": spec.run_hash, "unit": name, "directory": folder}
            tags.update(identity)
            tracking.runs.append((directory, _TrackerRun(spec, name, folder, "unit", tags)))
    except BaseException:
        tracking.close_failed()
        raise
    token = _ACTIVE.set((*_ACTIVE.get(), tracking))
    try:
        yield tracking
    finally:
        _ACTIVE.reset(token)
        tracking.close_failed()


def record_validation(metrics_path: str | os.PathLike, entry: Mapping[str, Any]) -> None:
    """Hand a training's validation record ``entry`` (as written to ``metrics_path``) to the tracker run of the
    unit that holds that file, where one is open in this context (:func:`track_units`); else nothing."""
    active = _ACTIVE.get()
    if not active:
        return
    path = Path(os.path.abspath(metrics_path))
    for tracking in reversed(active):
        if tracking.record(path, entry):
            return


class RunTracking:
    """The tracker run of a run itself (the driver's): opened with the run's config as its hyperparameters; its
    :attr:`spec` (with the MLflow parent's id) is what the run's units carry."""

    def __init__(self, spec: TrackingSpec, config: Mapping[str, Any]) -> None:
        tags = {"pipeline": spec.pipeline, "run_hash": spec.run_hash, "run_dir": spec.run_dir}
        self.run = _TrackerRun(spec, spec.group, _RUN, "run", tags, hyperparameters=config)
        self.spec = dataclasses.replace(spec, mlflow_parent=self.run.mlflow_id)

    def finish(self, summary: Mapping[str, Any] | None, plots: Sequence[Path] = ()) -> None:
        """Log the run's ``summary`` figures (``summary/...``; its ``config``, logged as hyperparameters, aside) and
        ``plots`` (PNG files, as ``plots/NAME``) and close its run (``None``: the run failed)."""
        if summary is None:
            self.run.finish(failed=True)
            return
        headline = {key: value for key, value in summary.items() if key != "config"}  # the config: its params
        self.run.final({f"summary/{key}": value for key, value in figures(headline).items()})
        for path in plots:
            self.run.plot(f"plots/{path.stem}", path)
        self.run.finish(failed=False)
