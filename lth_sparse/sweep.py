"""Sweeps: one pipeline over the Cartesian product of option values, every unit through one executor.

A grid file (YAML, or JSON when its name ends in ``.json``) names the pipeline, the
options every point shares and the options that vary::

    pipeline: imp                 # any pipeline (lth_sparse.pipelines.<name>)
    fixed:                        # options of every grid point (optional)
      dataset: digits
      model: mlp
      model_options: {width: 16}
      rounds: 3
    grid:                         # option -> the values it takes; the points are their product
      fraction: [0.2, 0.5]
      seed: [0, 1]

Every name is an option of the pipeline's config dataclass, checked (name and type)
by :func:`lth_sparse.config.config_from_options` before anything runs. Each grid point
is a run directory of its own under the sweep's, named by its values (``fraction=0.2,seed=1``:
options sorted by name, so the name does not depend on their order in the file), which
resumes, and refuses another config, exactly as a run of that pipeline does. The units of
every point go to the executor together, stage by stage (one ``executor.run`` per stage),
so a process pool or a Ray cluster runs points in parallel (the pipelines' one driver,
:func:`lth_sparse.pipelines.base.drive`, does it, as for a single run). Then each point is
summarised where a unit under it changed (``summary.json``; its plots only when asked) and the
sweep's table written: ``sweep.csv`` and ``sweep.json``,
one row per grid point and round (IMP), rewind point (instability) or, for the other pipelines, one row
per point, holding the point's grid values and the summary's numbers: each point's ``summary``
table (:func:`lth_sparse.rundata.summary_rows`; ``load_run(POINT)`` reads its other tables).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lth_sparse.atomic import atomic_write_bytes, atomic_write_json
from lth_sparse.config import ConfigError, config_from_options
from lth_sparse.errors import UserError
from lth_sparse.rundata import summary_rows
from lth_sparse.runs import config_hash

__all__ = [
    "GridError",
    "GridPoint",
    "Sweep",
    "load_sweep",
    "point_name",
    "run_sweep",
    "summary_rows",
    "sweep_from_mapping",
]

SECTIONS = ("pipeline", "fixed", "grid")
# Where the units run, one value for the whole sweep (the executor's): not an option a grid may vary.
NOT_IN_GRID = ("threads",)
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,-]")  # what a point's directory name may hold; the rest becomes "_"
_MAX_NAME = 120


class GridError(UserError):
    """A grid file that cannot describe a sweep: not a mapping, an unknown pipeline or option, an empty grid."""


@dataclass(frozen=True)
class GridPoint:
    """One point of a sweep: its directory name, its grid values (as the file wrote them) and its config."""

    name: str
    values: dict[str, Any]
    config: Any


@dataclass(frozen=True)
class Sweep:
    """A checked grid: the pipeline's name, the fixed options and the grid as written, and every point."""

    pipeline: str
    fixed: dict[str, Any]
    grid: dict[str, list]
    points: tuple[GridPoint, ...]

    def record(self) -> dict:
        return {"pipeline": self.pipeline, "fixed": self.fixed, "grid": self.grid}


def _pipeline(kind, source: str):
    """The registered pipeline ``kind``, or a :class:`GridError` naming the known ones."""
    from lth_sparse.pipelines.base import KINDS, pipeline_for

    if not isinstance(kind, str) or kind not in KINDS:
        raise GridError(f"{source}: unknown pipeline {kind!r}; known: {', '.join(sorted(KINDS))}")
    return pipeline_for(kind)


def _value_text(value) -> str:
    """A grid value as a point's directory name writes it (before unsafe characters are replaced)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float: 0.2, 1e-05
    if isinstance(value, Mapping):
        return "+".join(f"{k}={_value_text(v)}" for k, v in sorted(value.items(), key=lambda kv: str(kv[0])))
    if isinstance(value, (list, tuple)):
        return "+".join(_value_text(v) for v in value)
    return str(value)


def point_name(values: Mapping[str, Any]) -> str:
    """The directory name of a grid point: ``name=value`` joined by ``,``, options sorted by name.

    Characters other than letters, digits and ``. _ + = , -`` become ``_``; a name longer than
    120 characters is cut and ends with a hash of the values, so that it stays unique and stable.
    """
    name = _UNSAFE.sub("_", ",".join(f"{k}={_value_text(values[k])}" for k in sorted(values)))
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]
        name = f"{name[: _MAX_NAME - 13]}~{digest}"
    return name


def sweep_from_mapping(data, source: str = "grid") -> Sweep:
    """The sweep a grid file's content describes, every point's config built and checked.

    Raises :class:`GridError` naming ``source`` and what is wrong: content that is not a mapping, an
    unknown section or pipeline, an option the pipeline's config does not have (named, in ``fixed`` or
    ``grid``), an option in both, an empty grid, an option with no values (or not a list of them), two
    values that give one directory name, or a point whose config is refused (its name and the reason).
    """
    if not isinstance(data, Mapping):
        raise GridError(f"{source}: expected a mapping with 'pipeline', 'fixed' and 'grid', got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in SECTIONS)
    if unknown:
        raise GridError(f"{source}: unknown entries {unknown}; a grid file has {', '.join(SECTIONS)}")
    if "pipeline" not in data:
        raise GridError(f"{source}: no 'pipeline' (e.g. pipeline: imp)")
    pipeline = _pipeline(data["pipeline"], source)
    fixed = data.get("fixed") or {}
    grid = data.get("grid")
    if not isinstance(fixed, Mapping):
        raise GridError(f"{source}: fixed must be a mapping of option names to values, got {type(fixed).__name__}")
    if not isinstance(grid, Mapping) or not grid:
        raise GridError(f"{source}: grid must be a non-empty mapping of option names to lists of values, got {grid!r}")
    fixed = {str(k).replace("-", "_"): v for k, v in fixed.items()}
    grid = {str(k).replace("-", "_"): v for k, v in grid.items()}
    fields = {f.name for f in dataclasses.fields(pipeline.config_class)}
    for section, options in (("fixed", fixed), ("grid", grid)):
        unknown = sorted(set(options) - fields)
        if unknown:
            raise GridError(
                f"{source}: {section}: unknown options {unknown} for pipeline {pipeline.kind!r}; "
                f"valid: {sorted(fields)}"
            )
    both = sorted(set(fixed) & set(grid))
    if both:
        raise GridError(f"{source}: {both} in both fixed and grid; give each option in one of them")
    for name, values in grid.items():
        if name in NOT_IN_GRID:
            raise GridError(
                f"{source}: grid: {name} is where the units run, one value for the whole sweep; "
                "give it under fixed (or --threads)"
            )
        if not isinstance(values, list) or not values:
            raise GridError(f"{source}: grid: {name} must be a non-empty list of values, got {values!r}")
    names = sorted(grid)
    points, seen = [], {}
    for combination in itertools.product(*(grid[n] for n in names)):
        values = dict(zip(names, combination))
        name = point_name(values)
        if name in seen:
            raise GridError(
                f"{source}: grid values {seen[name]} and {values} give the same point ({name}); list each value once"
            )
        seen[name] = values
        try:
            config = config_from_options(pipeline.config_class, {**fixed, **values}, f"{source}: point {name}")
        except ConfigError as error:
            raise GridError(str(error)) from error
        except (TypeError, ValueError) as error:  # the config dataclass's own checks
            raise GridError(f"{source}: point {name}: {error}") from error
        points.append(GridPoint(name, values, config))
    return Sweep(pipeline.kind, fixed, grid, tuple(points))


def load_sweep(path: str | Path) -> Sweep:
    """The sweep described by the grid file at ``path`` (JSON if its name ends in ``.json``, else YAML)."""
    from lth_sparse.config import ConfigError, read_file

    try:
        data = read_file(path)
    except ConfigError as error:
        raise GridError(str(error)) from error
    return sweep_from_mapping(data, str(path))


def run_sweep(
    sweep: Sweep,
    out_dir,
    *,
    executor=None,
    log: Callable[[str], None] = print,
    progress: bool | None = None,
    plots: bool = False,
) -> dict:
    """Run (or resume) every point of ``sweep`` under ``out_dir``; returns the table also written to
    ``out_dir/sweep.json`` (``pipeline``, ``fixed``, ``grid``, ``points``: name, values and config
    hash of each, and ``rows``) and ``out_dir/sweep.csv`` (the rows).

    Every point is checked (its inputs by the pipeline, its run directory against the config there:
    :class:`~lth_sparse.runs.ConfigMismatch` for a point whose config changed) before anything is
    written; each point's lock is held while the sweep runs it, and a point another process holds is
    refused (:class:`~lth_sparse.runs.RunBusy`) before any unit runs. Then the pipelines' driver
    (:func:`lth_sparse.pipelines.base.drive`) runs the units of every point through ``executor``
    (default: in process, in order), one call per stage; units that
    fail are reported together (:class:`~lth_sparse.executors.UnitsFailed`) once the rest of their
    stage has finished, and later stages do not start. Each point's summary is rebuilt only where a
    unit under it changed; its plots are drawn only with ``plots``. A finished sweep re-run does no work
    but read the points' summaries.
    """
    from lth_sparse.executors import LocalExecutor
    from lth_sparse.pipelines.base import drive, open_run, pipeline_for, refuse_under_torchrun

    refuse_under_torchrun()
    pipeline = pipeline_for(sweep.pipeline)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GridError(f"{out} is a file, not a sweep directory; choose another --out")
    if (out / "config.json").exists():
        raise GridError(f"{out} is a run directory, not a sweep's; choose another --out")
    has_threads = any(f.name == "threads" for f in dataclasses.fields(pipeline.config_class))
    if executor is None:
        executor = LocalExecutor(sweep.points[0].config.threads if has_threads else None)
    configs = [
        dataclasses.replace(point.config, threads=executor.threads) if has_threads else point.config
        for point in sweep.points
    ]

    def open_plans() -> list:
        plans = [
            open_run(pipeline, config, out / point.name, prefix=point.name)  # every point checked first
            for point, config in zip(sweep.points, configs)
        ]
        counts = [pipeline.units_done(plan.run.path, plan.config) for plan in plans]
        finished, units = sum(done for done, _ in counts), sum(planned for _, planned in counts)
        log(
            f"sweep of {pipeline.kind} over {len(sweep.points)} points "
            f"({' x '.join(f'{len(v)} {k}' for k, v in sorted(sweep.grid.items()))}) in {out}: {units} units"
            + (f", {finished} already done" if finished else "")
            + f", through the {executor.name} executor"
        )
        return plans

    started = time.time()
    summaries = drive(
        pipeline, configs, open_plans, out, executor=executor, log=_quiet_claims(log), progress=progress, plots=plots
    )
    points, rows = [], []
    for point, config, summary in zip(sweep.points, configs, summaries):
        points.append({"name": point.name, "values": point.values, "hash": config_hash(config)})
        rows += [{"point": point.name, **point.values, **figures} for figures in summary_rows(summary)]
    table = {**sweep.record(), "points": points, "rows": rows}
    atomic_write_json(out / "sweep.json", table)
    _write_csv(out / "sweep.csv", rows)
    log(f"done in {time.time() - started:.0f} s: {out / 'sweep.csv'}, {out / 'sweep.json'}")
    return table


def _quiet_claims(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` without each point's "found a finished run" line (the sweep's first line counts its units)."""

    def filtered(line: str) -> None:
        if not line.startswith("found a finished run in "):
            log(line)

    return filtered


def _csv_cell(value) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    atomic_write_bytes(path, text.getvalue().encode())
