"""The ``lth-sparse`` command: parses arguments into a pipeline's config and runs it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path

from lth_sparse.errors import UserError, judging_input


class CliError(UserError):
    """Bad input on the command line: printed as ``lth-sparse COMMAND: error: MESSAGE``, exit status 2."""


def _load_config_file(path: str) -> dict:
    """The options in a ``--config`` file: JSON if its name ends in ``.json``, YAML otherwise.

    YAML is a superset of JSON, so a JSON file under any other name reads too. A run's own
    ``config.json`` works as well (its ``config`` entry is used).
    """
    from lth_sparse.config import ConfigError, read_file

    try:
        data = read_file(path)
    except ConfigError as error:
        raise CliError(f"--config {error}") from error
    if isinstance(data, dict) and "config" in data and isinstance(data["config"], dict):
        data = data["config"]  # a run's own config.json
    if not isinstance(data, dict):
        raise CliError(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _number(text: str):
    """A float option's value: ``5`` stays the int 5 (as a config file gives it), ``0.5`` is a float."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _flag_type(scalar: type, optional: bool, choices):
    """argparse's ``type`` for one value: parsed, ``none`` for an optional option, checked against ``choices``."""

    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        if scalar is int:
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        elif scalar is float:
            value = _number(text)
        else:
            value = text
        if choices is not None and value not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(map(str, choices))}, got {text!r}")
        return value

    parse.__name__ = scalar.__name__  # argparse names the type in its errors
    return parse


def _parsed(parse):
    def convert(text: str):
        try:
            return parse(text)
        except (TypeError, ValueError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = "value"
    return convert


def _pair(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_config_arguments(parser: argparse.ArgumentParser, config_class, groups: dict[str, type] | None = None) -> None:
    """One documented flag per field of ``config_class`` (declared with :func:`lth_sparse.config.option`).

    Flags that are absent leave no value (a ``--config`` file or the dataclass default then
    applies). bool fields get ``--name`` / ``--no-name``; tuples take several values; a field of
    (name, value) pairs takes ``--flag KEY=VALUE``, repeatable; an optional field takes ``none``.
    ``groups`` puts the fields of other dataclasses (e.g. ``{"training": TrainConfig}``) under
    their own heading in ``--help``.
    """
    from lth_sparse.config import field_kind

    grouped = {title: parser.add_argument_group(title) for title in groups or {}}
    owner = {f.name: title for title, cls in (groups or {}).items() for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(config_class):
        target = grouped.get(owner.get(f.name), parser)
        kind, scalar, optional = field_kind(config_class, f)
        flag = "--" + f.metadata.get("flag", f.name.replace("_", "-"))
        default = f.default  # the field's own (a config may need options without defaults, e.g. its tasks)
        choices = f.metadata.get("choices")
        if "default_text" in f.metadata:
            shown = f.metadata["default_text"]
        elif default is None or default == ():
            shown = "none"
        elif kind == "list":
            shown = " ".join(map(str, default))
        else:
            shown = default
        help_text = f"{f.metadata.get('help', f.name)} (default: {shown})".replace("%", "%%")  # argparse formats it
        common = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        metavar = f.metadata.get("metavar") or ("{" + ",".join(map(str, choices)) + "}" if choices else None)
        if "parse" in f.metadata:
            target.add_argument(flag, type=_parsed(f.metadata["parse"]), metavar=metavar, **common)
        elif kind == "pairs":
            target.add_argument(flag, action="append", type=_pair, metavar=metavar or "KEY=VALUE", **common)
        elif kind == "list":
            target.add_argument(flag, nargs="*", type=_flag_type(scalar, False, choices), metavar=metavar, **common)
        elif scalar is bool:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        else:
            target.add_argument(flag, type=_flag_type(scalar, optional, choices), metavar=metavar, **common)


def config_from_args(config_class, args: argparse.Namespace):
    """The config from ``--config FILE`` (if given) overridden by the flags given, checked by name and type."""
    from lth_sparse.config import config_from_options

    options = _load_config_file(args.config) if getattr(args, "config", None) else {}
    source = f"--config {args.config}" if options else "options"
    with judging_input():  # the file's names and types checked, its values coerced (the flags may add to them)
        from_file = config_from_options(config_class, options, source, check=False)
    merged = {f.name: from_file[f.name] for f in dataclasses.fields(config_class) if f.name in from_file}
    merged.update({f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if hasattr(args, f.name)})
    with judging_input():  # a ConfigError, the dataclass's own checks, a source run that cannot be read
        return config_from_options(config_class, merged, "options")


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the units run: the options every pipeline's subcommand shares (not part of the config)."""
    from lth_sparse.executors import EXECUTORS

    group = parser.add_argument_group("executor (where the units run; a unit's files are the same with any)")
    group.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: in this process, in order; process: a pool of --workers local processes; ray: "
        "Ray tasks on a cluster (pip install 'lth_sparse[ray]'); slurm: a SLURM job array per stage, a task "
        "per unit (pip install 'lth_sparse[slurm]') (default: local)",
    )
    group.add_argument("--workers", type=int, default=2, help="worker processes of --executor process (default: 2)")
    group.add_argument(
        "--retries",
        type=int,
        default=2,
        help="times a unit whose worker died (process, ray) or whose SLURM job ended without a result (cancelled, "
        "its node lost) is run again; also the times a SLURM job at its time limit is requeued (default: 2)",
    )
    group.add_argument(
        "--ray-address",
        default="auto",
        help="the Ray cluster: auto (one started with 'ray start --head', or RAY_ADDRESS), HOST:PORT, "
        "or local (a cluster started for this run) (default: auto)",
    )
    group.add_argument(
        "--ray-num-cpus", type=float, default=None, help="CPUs Ray reserves per unit (default: its thread count)"
    )
    group.add_argument("--ray-num-gpus", type=float, default=0, help="GPUs Ray reserves per unit (default: 0)")
    group.add_argument("--slurm-partition", metavar="NAME", help="the SLURM partition (default: the cluster's)")
    group.add_argument(
        "--slurm-cpus-per-task",
        type=int,
        metavar="N",
        help="CPUs of each SLURM task (default: --threads, else 1); without --threads, each unit uses this many "
        "threads",
    )
    group.add_argument(
        "--slurm-gpus-per-task", type=int, default=0, metavar="N", help="GPUs of each SLURM task (default: 0)"
    )
    group.add_argument(
        "--slurm-mem", metavar="SIZE", help="memory of each SLURM task: 4G, 500M, ... (default: the partition's)"
    )
    group.add_argument(
        "--slurm-time",
        type=int,
        default=60,
        metavar="MINUTES",
        help="time limit of each SLURM task; one that reaches it is requeued and resumes (default: 60)",
    )
    group.add_argument(
        "--slurm-array-parallelism",
        type=int,
        metavar="N",
        help="tasks of a stage's job array running at once (default: no limit but the cluster's)",
    )
    group.add_argument(
        "--slurm-folder",
        metavar="DIR",
        help="submitit's job scripts and logs, on a file system the nodes see (default: RUN/slurm)",
    )
    group.add_argument(
        "--slurm-option",
        type=_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another sbatch option, repeatable: --slurm-option account=lab --slurm-option qos=low",
    )


def executor_from_args(args, threads: int | None):
    """The executor the options ask for, checked (Ray, submitit or SLURM missing, a bad count: a :class:`UserError`);
    ``threads`` above the cores this process may use is said once, as a warning: the threads would wait for each
    other's cores (not for ``--executor slurm``, whose units run on the cluster's nodes)."""
    from lth_sparse.executors import make_executor, usable_cores

    cores = usable_cores()
    if isinstance(threads, int) and threads > cores and args.executor != "slurm" and os.environ.get("RANK", "0") == "0":
        print(
            f"lth-sparse {args.command}: warning: --threads {threads} is more than the {cores} usable cores here: "
            "the threads beyond them wait for a core (slower, not faster)",
            file=sys.stderr,
        )
    return make_executor(
        args.executor,
        workers=args.workers,
        threads=threads,
        retries=args.retries,
        ray_address=args.ray_address,
        num_cpus=args.ray_num_cpus,
        num_gpus=args.ray_num_gpus,
        slurm=_slurm_options(args) if args.executor == "slurm" else None,
    )


def _slurm_options(args) -> dict:
    """The ``--slurm-*`` options as the keyword options of :class:`lth_sparse.executors.SlurmExecutor`."""
    return {
        "partition": args.slurm_partition,
        "cpus_per_task": args.slurm_cpus_per_task,
        "gpus_per_task": args.slurm_gpus_per_task,
        "mem": args.slurm_mem,
        "time_limit": args.slurm_time,
        "array_parallelism": args.slurm_array_parallelism,
        "folder": args.slurm_folder,
        "options": dict(args.slurm_option),
    }


def _add_pipeline(sub, pipeline) -> None:
    """The subcommand of a pipeline, its texts from the :class:`~lth_sparse.pipelines.base.Pipeline`: a flag per
    field of its config (``--config FILE`` supplies any), the executor options, ``--out``, ``--no-plots`` and
    ``--progress``."""
    from lth_sparse.train import TrainConfig

    out = pipeline.default_out
    p = sub.add_parser(pipeline.kind, help=pipeline.help, description=pipeline.description, epilog=pipeline.epilog)
    p.add_argument(
        "--config",
        metavar="FILE",
        help="file of options, keyed by their names (rounds: 10, model_options: {width: 512}); JSON if "
        "its name ends in .json, YAML otherwise; a run's config.json works too. Flags given here "
        "override it; an unknown key is an error",
    )
    p.add_argument(
        "--out",
        default=out,
        help=f"run directory (default: {out}); the same command resumes the run there, another config "
        "is refused once a unit of it has finished",
    )
    add_config_arguments(p, pipeline.config_class, groups={"training": TrainConfig})
    add_executor_arguments(p)
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: when stderr is a terminal)",
    )
    p.set_defaults(func=lambda args: _run_pipeline_command(pipeline, args))


def _run_pipeline_command(pipeline, args) -> int:
    config = config_from_args(pipeline.config_class, args)
    _check_out(args.out, "--out", "directory")
    executor = executor_from_args(args, config.threads)
    pipeline.run(config, args.out, progress=args.progress, plots=not args.no_plots, executor=executor)
    return 0


def _check_out(path, option: str, kind: str) -> None:
    """Refuse, before anything is computed or written, an output ``path`` (given by ``option``) where a ``kind``
    (``"directory"`` or ``"file"``) cannot be written: an existing one of the other kind, a parent that is a file,
    or a directory this process may not write in (a :class:`CliError` naming ``option``, the path and what is
    wrong). ``None`` (not given) passes."""
    if path is None:
        return
    out = Path(path).expanduser()
    try:
        if out.exists() and out.is_dir() != (kind == "directory"):
            raise CliError(f"{option} {path}: is a {'directory' if out.is_dir() else 'file'}, expected a {kind}")
        # the path itself where it is a directory, else the first of its parents that exists
        where = out if out.is_dir() else next(p for p in out.absolute().parents if p.exists())
    except OSError as error:  # a parent this process may not look into
        raise CliError(f"{option} {path}: {error.strerror or error}") from None
    if not where.is_dir():
        raise CliError(f"{option} {path}: {where} is a file, not a directory: the {kind} cannot be made under it")
    if not os.access(where, os.W_OK | os.X_OK):
        raise CliError(f"{option} {path}: {where} is not writable here")


def _add_sweep(sub) -> None:
    """``lth-sparse sweep GRID --out DIR``: any pipeline over a grid of option values (:mod:`lth_sparse.sweep`)."""
    p = sub.add_parser(
        "sweep",
        help="run a pipeline over a grid of option values",
        description="Run a pipeline over the Cartesian product of the option values listed in GRID: one run "
        "directory per grid point under --out, named by its values (fraction=0.2,seed=1), every unit "
        "of every point through one executor (so --executor process or ray runs points in parallel), "
        "then DIR/sweep.csv and DIR/sweep.json: one row per grid point and round, the point's values "
        "and its summary's figures. Re-running the same command resumes; a finished sweep re-run does "
        "no work; a point whose config changed is refused, as a run is.",
        epilog="GRID (YAML, or JSON if its name ends in .json):  pipeline: imp  /  fixed: {dataset: digits, "
        "rounds: 3}  /  grid: {fraction: [0.2, 0.5], seed: [0, 1]}. Every name is an option of the "
        "pipeline (see 'lth-sparse imp --help'); an unknown one is an error. Bad input ends with one "
        "'lth-sparse sweep: error: ...' line and exit status 2, before anything is written.",
    )
    p.add_argument("grid", metavar="GRID", help="the grid file: pipeline, fixed options and grid of values")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="the sweep directory: one run directory per grid point, sweep.csv, sweep.json",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads per unit (default: threads under fixed in GRID, else OMP_NUM_THREADS if set, "
        "else the idle cores shared among the workers)",
    )
    add_executor_arguments(p)
    p.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="draw each point's PNG figures (default: no; 'lth-sparse plot DIR/POINT' draws one later)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: when stderr is a terminal)",
    )
    p.set_defaults(func=_run_sweep)


def _run_sweep(args) -> int:
    from lth_sparse.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.grid)
    _check_out(args.out, "--out", "directory")
    threads = args.threads
    if threads is None:
        threads = getattr(sweep.points[0].config, "threads", None)
    run_sweep(sweep, args.out, executor=executor_from_args(args, threads), progress=args.progress, plots=args.plots)
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare-masks",
        help="the Jaccard distance between IMP runs' masks, round by round",
        description="Compare the masks of IMP runs (other pruning methods, rewinding vs fine-tuning, seeds, tasks) "
        "round by round, seed by seed (the seeds both runs have), as Paganini & Forde (2020) do: the "
        "Jaccard distance in total and per layer, beside that of independent masks of the same "
        "densities. Every pair of RUNs, or each against --reference. Prints a table; with --out, "
        "writes compare.json and plots.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="IMP run directories")
    p.add_argument("--reference", metavar="RUN", help="compare every RUN with this one (default: every pair)")
    p.add_argument("--out", metavar="DIR", help="write DIR/compare.json and DIR/plots/*.png")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.set_defaults(func=_judging_input(_run_compare))


def _run_compare(args) -> int:
    from lth_sparse.compare import compare_runs

    _check_out(args.out, "--out", "directory")
    result = compare_runs(args.runs, args.reference, args.out, plots=not args.no_plots)
    for pair in result["pairs"]:
        print(f"{pair['a']} vs {pair['b']} (seeds {', '.join(map(str, pair['seeds']))}):")
        print(f"{'round':>5}  {'remaining a':>11}  {'remaining b':>11}  {'jaccard':>8}  {'independent':>11}")
        for r in pair["rounds"]:
            print(
                f"{r['round']:>5}  {100 * r['density_a']:>10.2f}%  {100 * r['density_b']:>10.2f}%  "
                f"{r['jaccard']:>8.4f}  {r['independent_jaccard']:>11.4f}"
            )
    if args.out:
        print(f"written: {Path(args.out) / 'compare.json'}")
    return 0


def _add_probe(sub) -> None:
    p = sub.add_parser(
        "probe",
        help="linear probes of an IMP run's tickets frozen at their rewind weights",
        description="The SGD-noise paper's Section 5.1 (Tables 5 and 6): for each round of an IMP run, a linear "
        "classifier (5 epochs, lr 0.005, weight decay 1e-4: Appendix G) on the frozen features after "
        "each block or hidden layer of: the ticket at its rewind weights (untrained), the same weights "
        "under the mask permuted within each layer, a random dense network and the trained dense "
        "network. --data probes on another data set of the run's input shape (a new linear layer: the "
        "transfer of frozen features). Prints a table; with --out writes probes.json and a plot.",
    )
    p.add_argument("run", metavar="RUN", help="an IMP run directory")
    p.add_argument("--rounds", type=int, nargs="+", metavar="R", help="rounds to probe (default: every finished one)")
    p.add_argument("--seed", type=int, default=None, help="the run's seed (default: its first)")
    p.add_argument("--data", metavar="TASK", help="probe on this data set or derived task (default: the run's)")
    p.add_argument(
        "--probe-seed",
        type=int,
        default=0,
        help="seed of the permutation, the random network and the probe (default: 0)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--out", metavar="DIR", help="write DIR/probes.json and DIR/plots/probes.png")
    p.set_defaults(func=_judging_input(_run_probe))


def _run_probe(args) -> int:
    from lth_sparse.analysis import probe_ticket
    from lth_sparse.tickets import finished_rounds

    _check_out(args.out, "--out", "directory")
    rounds = args.rounds or finished_rounds(args.run, args.seed)
    results = []
    for r in rounds:
        result = probe_ticket(
            args.run, r, seed=args.seed, data=args.data, probe_seed=args.probe_seed, device=args.device
        )
        results.append({"round": r, **result})
        print(f"round {r} ({100 * result['sparsity']:.2f}% pruned) on {result['dataset']}: test accuracy of the probe")
        print(f"  {'layer':<14}" + "".join(f"{v:>15}" for v in result["variants"]))
        for layer in result["layers"]:
            print(
                f"  {layer:<14}"
                + "".join(f"{100 * result['probes'][v][layer]['test_accuracy']:>14.2f}%" for v in result["variants"])
            )
    if args.out:
        from lth_sparse.plots import plot_probes
        from lth_sparse.runs import atomic_write_json

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "probes.json", {"run": str(args.run), "rounds": results})
        plot_probes(results, out / "plots")
        print(f"written: {out / 'probes.json'}")
    return 0


def _add_importance_overlap(sub) -> None:
    p = sub.add_parser(
        "importance-overlap",
        help="the connections every ticket from one initialisation keeps (Vandersmissen et al.)",
        description="The layerwise-importance paper's analyses (Section 5) over IMP runs from one initialisation that "
        "differ in --importance (magnitude, l1, l2, ...): the connections every ticket of --round keeps, "
        "per layer, as a share of all and of the unpruned weights; for each run, the std of each kept "
        "connection's trained value over the rounds and its sign flips, overlapping vs other. With "
        "--write-partial-init FILE, the partial re-initialisation test's start (the first run's "
        "initialisation on the overlap, a fresh draw elsewhere) for 'lth-sparse imp --init-file FILE'; "
        "with --survival RUN, how many overlapping connections RUN's ticket of --round keeps against the "
        "uniform expectation.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="IMP run directories of one initialisation")
    p.add_argument("--round", type=int, required=True, help="the round whose tickets are compared")
    p.add_argument("--seed", type=int, help="the seed compared (default: the first the runs share)")
    p.add_argument("--write-partial-init", metavar="FILE", help="write the partial re-initialisation's state dict")
    p.add_argument("--redraw-seed", type=int, default=1, help="seed of the redrawn weights (default: 1)")
    p.add_argument("--survival", metavar="RUN", help="an IMP run started from --write-partial-init's file")
    p.add_argument("--out", metavar="FILE", help="write the figures as JSON")
    p.set_defaults(func=_judging_input(_run_importance_overlap))


def _run_importance_overlap(args) -> int:
    import torch

    from lth_sparse.compare import connection_stability, importance_overlap, partial_reinit_state, reinit_survival
    from lth_sparse.runs import atomic_torch_save, atomic_write_json
    from lth_sparse.tickets import load_ticket

    _check_out(args.out, "--out", "file")
    _check_out(args.write_partial_init, "--write-partial-init", "file")
    out = importance_overlap(args.runs, args.round, args.seed)
    overlap = out.pop("masks")
    print(
        f"round {args.round} (seed {out['seed']}, {100 * out['density']:.2f}% remaining): {out['overlap']} "
        f"connections kept by all {len(args.runs)} tickets, {100 * out['of_all']:.2f}% of all weights, "
        f"{100 * out['of_unpruned']:.2f}% of the unpruned"
    )
    for name, layer in out["layers"].items():
        print(
            f"  {name:<24} {layer['overlap']:>9}  {100 * layer['of_all']:>7.2f}% of all  "
            f"{100 * layer['of_unpruned']:>7.2f}% of the unpruned"
        )
    out["stability"] = {}
    for run in args.runs:
        st = connection_stability(run, overlap, args.round, out["seed"])
        out["stability"][run] = st
        o, other = st["overlapping"]["total"], st["other"]["total"]
        fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        print(
            f"{run}: std over rounds {fmt(o['mean_std'])} (overlapping) vs {fmt(other['mean_std'])} (other); sign "
            f"flips {fmt(o['flip_fraction'])} vs {fmt(other['flip_fraction'])}"
        )
    if args.write_partial_init:
        atomic_torch_save(
            args.write_partial_init, partial_reinit_state(args.runs[0], overlap, args.redraw_seed, out["seed"])
        )
        print(f"written: {args.write_partial_init} (lth-sparse imp --init-file {args.write_partial_init} ...)")
    if args.survival:
        ticket = load_ticket(args.survival, args.round, out["seed"]).masks
        survival = reinit_survival(overlap.to(torch.device("cpu")), ticket)
        out["survival"] = survival
        print(
            f"{args.survival}: keeps {survival['kept']} of the {survival['overlap']} overlapping connections, "
            f"{survival['expected']:.1f} expected uniformly ({100 * survival['increase']:+.1f}%)"
        )
    if args.out:
        atomic_write_json(args.out, out)
    return 0


def _add_plot(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="rebuild a run's summary.json and figures from its units' results",
        description="Rebuild RUN/summary.json and RUN/plots/*.png from the results the run's units "
        "saved, without re-running anything (any kind of run).",
    )
    p.add_argument("run", help="a run directory")
    p.set_defaults(func=_judging_input(_run_plot))


def _run_plot(args) -> int:
    from lth_sparse.config import read_file
    from lth_sparse.pipelines.base import pipeline_for

    config_path = Path(args.run) / "config.json"
    if not config_path.exists():
        raise CliError(f"no config.json in {args.run}: not a run directory")
    saved = read_file(config_path)  # one that does not parse is named
    kind = saved.get("kind") if isinstance(saved, dict) else None
    try:
        pipeline = pipeline_for(kind)
    except (ImportError, KeyError, TypeError):
        raise CliError(f"{args.run} holds a run of kind {kind!r}, which this version does not know") from None
    pipeline.summarize_partial(Path(args.run), plots=True)  # under the run's lock; says when it is partial
    for path in sorted((Path(args.run) / "plots").glob("*.png")):
        print(path)
    return 0


def _add_verify(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="check that a run's files are whole and unchanged",
        description="Check every file of RUN against what its finished steps recorded in their done.json (size "
        "and SHA-256), and that config.json, summary.json and every done.json parse; steps finished before "
        "steps recorded their files are checked by parsing their files (JSON, JSONL, safetensors headers, "
        "torch archives' checksums). Prints one line per damaged file, then a verdict; says how many units "
        "are done. Exit status 0: intact; 1: damaged files found (re-running the command that made RUN "
        "repairs them); 2: RUN is not a run directory.",
    )
    p.add_argument("run", metavar="RUN", nargs="+", help="run directories (a sweep's points are runs too)")
    p.set_defaults(func=_judging_input(_run_verify))


def _run_verify(args) -> int:
    from lth_sparse.config import read_file
    from lth_sparse.pipelines.base import pipeline_for
    from lth_sparse.runs import check_run

    status = 0
    for run in map(Path, args.run):
        if not (run / "config.json").exists():
            raise CliError(f"no config.json in {run}: not a run directory")
        found = check_run(run)
        for damage in found.damages():
            print(f"damaged: {damage}")
        units = ""
        if all(d.path.name != "config.json" for d in found.damaged.get("", [])):  # config.json parses
            kind = read_file(run / "config.json").get("kind")
            try:
                pipeline = pipeline_for(kind)
                done, planned = pipeline.units_done(run, pipeline.saved_config(run)[1])
                units = f"{kind} run, {done} of {planned} units done; "
            except (ImportError, KeyError, TypeError, ValueError):
                units = f"a run of kind {kind!r}, which this version does not know; "
        checked = f"{found.steps} finished steps, {found.files} files ({found.bytes / 1e6:.1f} MB) checked by SHA-256"
        if found.unrecorded:
            checked += f", {found.unrecorded} steps of an older version checked by parsing their files"
        n = len(found.damages())
        verdict = "intact" if found.intact else f"{n} damaged file{'s' if n != 1 else ''}"
        print(f"{run}: {verdict} ({units}{checked})")
        status = max(status, 0 if found.intact else 1)
    return status


def _add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="what was built and which backend is active",
        description="Print lth_sparse.backend_info() as JSON.",
    )
    p.set_defaults(func=_judging_input(_run_info))


def _run_info(args) -> int:
    from lth_sparse import backend_info

    print(json.dumps(backend_info(), indent=2))  # an LTH_SPARSE_BACKEND it does not take is judged bad input
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lth-sparse",
        description="Lottery-ticket research: IMP with rewinding and the analyses that build on it. "
        "Each subcommand writes a run directory that a re-run resumes.",
        epilog="Bad input ends with one 'lth-sparse COMMAND: error: ...' line and exit status 2 "
        "(LTH_SPARSE_DEBUG=1 shows the traceback instead).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from lth_sparse.pipelines.base import KINDS, pipeline_for

    for kind in KINDS:
        _add_pipeline(sub, pipeline_for(kind))
    _add_compare(sub)
    _add_probe(sub)
    _add_importance_overlap(sub)
    _add_sweep(sub)
    _add_plot(sub)
    _add_verify(sub)
    _add_info(sub)
    return parser


def _judging_input(command):
    """``command`` reads the runs the user named: what reading them raises is the input's fault (see
    :func:`lth_sparse.errors.judging_input`)."""

    def run(args) -> int:
        with judging_input():
            return command(args)

    return run


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status: 2 for bad input (one ``error:`` line, no traceback), 1 for
    any other failure (a bug: its traceback and a request to report it)."""
    from lth_sparse.data import DownloadError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, DownloadError) as error:
        if os.environ.get("LTH_SPARSE_DEBUG"):
            raise
        if os.environ.get("RANK", "0") != "0":
            return 2  # under torchrun, every rank fails alike; rank 0 says why
        print(f"lth-sparse {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print(
            f"lth-sparse {args.command}: this is a bug in lth_sparse {_version()}, not a problem with your input: "
            "please report it with the command and the traceback above",
            file=sys.stderr,
        )
        return 1


def _version() -> str:
    from lth_sparse._version import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
