"""Runs as data: any pipeline's run directory read back as tidy tables.

:func:`load_run` reads a run directory (``config.json``, the units' ``done.json`` and ``metrics.jsonl``,
``summary.json``) without writing anything, and returns a :class:`RunData`: the run's kind, hash and options,
its summary, its units (which are done, which are missing), and its tables, each a list of flat rows (dicts of
numbers, strings, booleans and ``None``; nested values stay in the files):

- ``units``: one row per unit: ``unit`` (its directory in the run), ``done``, and the numbers of its
  ``done.json``;
- ``records``: one row per record a unit's ``done.json`` lists (an IMP seed's ``rounds``, a consensus run's
  ``over_rounds``): ``unit``, ``records`` (the list's name), ``index``, and the record's numbers;
- ``metrics``: one row per evaluation a training logged (each line of a ``metrics.jsonl``): ``unit``, ``step``
  (the training's folder in the run) and the line's numbers;
- ``results``: the pipeline's own numbers, one row per seed and what it varies, read from the units' files
  (:data:`RESULTS`): IMP one row per seed and round (``density``, ``test_accuracy``, the controls'
  ``reinit_test_accuracy`` and ``random_mask_test_accuracy``, ...); consensus one per retraining (seed, ticket,
  target); transfer one per training (seed, source, target, round, ticket); instability one per pair of
  copies (seed, rewind point, kind) with its barriers; plant one per (task, depth, pruner, density, seed);
- ``summary``: the numbers of ``summary.json``, one row per entry of its ``rounds`` where it has them, else one:
  what a sweep's ``sweep.csv`` holds for each of its points (:func:`summary_rows`).

The figures of a summary are a group-by away from ``results``: IMP's mean and std over seeds per round is
``run.to_pandas("results").groupby("round")["test_accuracy"].agg(["mean", "std"])``. ``rows(table)`` needs
nothing but the standard library; ``to_pandas(table)`` needs pandas.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lth_sparse.atomic import read_json
from lth_sparse.errors import UserError
from lth_sparse.integrity import DONE, finished_steps, read_done

__all__ = ["RESULTS", "TABLES", "PartialRun", "RunData", "load_run", "summary_rows"]

TABLES = ("units", "records", "metrics", "results", "summary")
"""The tables of a run (:meth:`RunData.rows`)."""

RESULTS: dict[str, str] = {
    "consensus": r"seed_(?P<seed>\d+)/retrain/[^/]+/task_\d+",
    "transfer": r"seed_\d+/source_\d+/target_\d+/round_\d+/[^/]+",
    "instability": r"seed_\d+/(?:.+/)?pair[^/]*",
    "plant": r".+",
}
"""The units whose ``done.json`` are the ``results`` rows of each pipeline but IMP (whose rows are its seeds'
rounds), as a pattern of the unit's directory; a named group is a column of the row where the ``done.json``
has no field of that name (a consensus retraining's seed)."""

METRICS_FILE = "metrics.jsonl"


class PartialRun(UserWarning):
    """A run directory some of whose planned units are not done (a killed or still running run)."""


ROW_LISTS = {"rounds": {}, "points": {"point": "rewind_point"}}
"""The lists of a summary whose entries are its table's rows (IMP's ``rounds``, instability's rewind ``points``),
with the columns their labels are renamed to (a sweep's table has a ``point`` column of its own)."""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summary_rows(summary: dict) -> list[dict]:
    """The numbers of a pipeline's summary as table rows: one per entry of its ``rounds`` (IMP: ``round``,
    ``density``, ``test_accuracy``, ``test_accuracy_std``, ...) or of its rewind ``points`` (instability: the
    point's label as ``rewind_point``, ``iteration``, and each figure's mean over the seeds and pairs with its
    ``NAME_std``, ``NAME_min`` and ``NAME_max``, as IMP's rounds have them) where it has them, else one of its
    top-level numbers. Other nested values (``layer_sparsity``, ``per_seed``, the curves) are left to
    ``summary.json``."""
    listed = [
        name
        for name in ROW_LISTS
        if isinstance(summary.get(name), list) and all(isinstance(e, dict) for e in summary[name])
    ]
    if not listed:
        return [{k: v for k, v in summary.items() if _is_number(v)}]
    entries, labels = summary[listed[0]], ROW_LISTS[listed[0]]
    rows = []
    for entry in entries:
        row = {}
        for key, value in entry.items():
            if key in labels:
                row[labels[key]] = value
            elif _is_number(value):
                row[key] = value
            elif isinstance(value, dict) and _is_number(value.get("mean")):  # a figure over seeds
                row[key] = value["mean"]
                row.update(
                    {f"{key}_{stat}": value[stat] for stat in ("std", "min", "max") if _is_number(value.get(stat))}
                )
        rows.append(row)
    return rows


def _flat(entry: dict) -> dict:
    """The fields of ``entry`` that a table's cell holds: numbers, strings, booleans and ``None``."""
    return {k: v for k, v in entry.items() if v is None or isinstance(v, (bool, int, float, str))}


def _row(own: dict, fields: dict) -> dict:
    """A row: the table's ``own`` columns, then ``fields``; a field named like an own column is kept as
    ``result_NAME`` (an instability search's ``unit``)."""
    return {**own, **{(f"result_{k}" if k in own else k): v for k, v in _flat(fields).items()}}


@dataclass(frozen=True)
class RunData:
    """A run directory read back: ``kind``, ``hash``, ``config`` (the options as ``config.json`` holds them;
    ``options``: the pipeline's config dataclass built from them, which its plan takes), ``summary``
    (``summary.json``, ``None`` where the run was never summarised), ``units`` (the directories of its planned
    units, in the order of their paths), ``done`` (those finished) and ``missing`` (those not).

    ``planned`` is ``False`` where the run's plan could not be made from its config (a transfer whose source
    runs have moved: its plan reads them); ``units`` are then the finished steps found (every directory with a
    ``done.json``) and ``missing`` is ``None``: not known.
    """

    path: Path
    kind: str
    hash: str | None
    config: dict
    summary: dict | None
    units: tuple[str, ...]
    done: tuple[str, ...]
    missing: tuple[str, ...] | None
    planned: bool
    options: Any

    @property
    def partial(self) -> bool:
        """Whether some planned unit is not done."""
        return bool(self.missing)

    def rows(self, table: str = "results") -> list[dict]:
        """The rows of ``table`` (one of :data:`TABLES`), read from the run's files now."""
        if table not in TABLES:
            raise UserError(f"unknown table {table!r} of a run; the tables: {', '.join(TABLES)}")
        return getattr(self, f"_{table}")()

    def to_pandas(self, table: str = "results"):
        """``rows(table)`` as a pandas DataFrame (one column per field; a field a row lacks is NaN)."""
        try:
            import pandas
        except ImportError:
            raise ImportError(
                f"RunData.to_pandas needs pandas: pip install pandas (or use .rows({table!r}): a list of dicts)"
            ) from None
        return pandas.DataFrame(self.rows(table))

    def _result(self, unit: str) -> dict:
        return read_done(self.path / unit / DONE)

    def _units(self) -> list[dict]:
        finished = set(self.done)
        return [_row({"unit": u, "done": u in finished}, self._result(u) if u in finished else {}) for u in self.units]

    def _records(self) -> list[dict]:
        rows = []
        for unit in self.done:
            for key, value in self._result(unit).items():
                if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                    rows += [_row({"unit": unit, "records": key, "index": i}, v) for i, v in enumerate(value)]
        return rows

    def _metrics(self) -> list[dict]:
        rows = []
        for path in sorted(self.path.rglob(METRICS_FILE), key=lambda p: PurePosixPath(p.relative_to(self.path))):
            step = path.parent.relative_to(self.path).as_posix()
            holders = [u for u in self.units if PurePosixPath(u) in (PurePosixPath(step), *PurePosixPath(step).parents)]
            unit = max(holders, key=lambda u: len(PurePosixPath(u).parts)) if holders else None
            with open(path) as f:
                for line in f:
                    if line.strip():
                        rows.append(_row({"unit": unit, "step": step}, json.loads(line)))
        return rows

    def _results(self) -> list[dict]:
        if self.kind == "imp":
            return _imp_results(self)
        pattern = re.compile(RESULTS[self.kind])
        rows = []
        for unit in self.done:
            found = pattern.fullmatch(unit)
            if found is None:
                continue
            result = self._result(unit)
            coordinates = {k: int(v) if v.isdigit() else v for k, v in found.groupdict().items() if k not in result}
            rows.append({**coordinates, **_flat(result)})
        return rows

    def _summary(self) -> list[dict]:
        return summary_rows(self.summary) if self.summary is not None else []


def _imp_results(run: RunData) -> list[dict]:
    """One row per seed and finished round of an IMP run: the round's result (its ``done.json``, or the seed
    unit's where it is done) with its controls' and its sparse training's figures, as the summary's ``per_seed``
    holds them."""
    from lth_sparse.pipelines.base import pipeline_for
    from lth_sparse.runs import Steps

    imp, steps, config = pipeline_for("imp"), Steps(run.path), run.options
    return [
        {"seed": seed, **_flat(imp.with_controls(steps, seed, result, config))}
        for seed in config.seed_list()
        for result in imp.finished_rounds(steps, seed, config)
    ]


def _not_a_run(path: Path) -> UserError:
    """What is wrong with ``path`` as a run directory, naming what it holds."""
    if not path.exists():
        return UserError(f"{path}: no such run directory")
    if not path.is_dir():
        return UserError(f"{path} is a file, not a run directory")
    if (path / "sweep.json").exists():
        points = sorted(p.name for p in path.iterdir() if (p / "config.json").exists())
        return UserError(
            f"{path} is a sweep's directory, not a run's: its {len(points)} points are runs "
            f"(load_run({str(path / points[0]) if points else 'SWEEP/POINT'!r})), its table sweep.csv"
        )
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    shown = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
    return UserError(f"{path} is not a run directory (no config.json); it holds {shown or 'nothing'}")


def load_run(path, *, warn: bool = True) -> RunData:
    """The run in directory ``path``, of any pipeline, read back (nothing is written).

    A directory without ``config.json`` is not a run: a :class:`~lth_sparse.errors.UserError` names what it
    holds (a sweep's directory is said to be one, naming its points). So is a ``config.json`` that does not
    parse or names no known pipeline, or one this version cannot read. A run some of whose planned units are
    not done loads (``partial``, and ``missing`` names them) and, with ``warn``, says so in a
    :class:`PartialRun` warning.
    """
    from lth_sparse.pipelines.base import KINDS, pipeline_for

    path = Path(path)
    if not (path / "config.json").is_file():
        raise _not_a_run(path)
    try:
        saved = read_json(path / "config.json")
    except (OSError, ValueError) as error:
        raise UserError(f"{path / 'config.json'} is not a run's config ({error})") from error
    kind = saved.get("kind") if isinstance(saved, dict) else None
    if kind not in KINDS or not isinstance(saved.get("config"), dict):
        raise UserError(
            f"{path / 'config.json'} is not a run's config: its kind is {kind!r}, not one of {', '.join(KINDS)}"
        )
    pipeline = pipeline_for(kind)
    try:
        _, options = pipeline.saved_config(path)
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path / 'config.json'}: a {kind} config this version cannot read ({error})") from error
    try:
        planned = sorted(
            {u.directory for stage in pipeline.plan(options) for u in stage}, key=lambda d: PurePosixPath(d)
        )
    except (OSError, ValueError, KeyError):  # the plan reads runs outside this one that are not there
        planned = None
    if planned is not None:
        units = tuple(planned)
        done = tuple(u for u in units if (path / u / DONE).exists())
        missing = tuple(u for u in units if u not in set(done))
    else:
        done = tuple(folder.relative_to(path).as_posix() for folder in finished_steps(path))
        units, missing = done, None
    try:
        summary = read_json(path / "summary.json") if (path / "summary.json").exists() else None
    except (OSError, ValueError) as error:
        raise UserError(
            f"{path / 'summary.json'} does not parse ({error}); lth-sparse plot {path} rebuilds it"
        ) from error
    run = RunData(
        path, kind, saved.get("hash"), saved["config"], summary, units, done, missing, planned is not None, options
    )
    if warn and run.partial:
        shown = ", ".join(run.missing[:5]) + (f" and {len(run.missing) - 5} more" if len(run.missing) > 5 else "")
        warnings.warn(
            f"{path} is a partial {kind} run: {len(run.missing)} of {len(units)} units not done ({shown})",
            PartialRun,
            stacklevel=2,
        )
    return run
