"""The ``lth-sparse`` command: parses arguments into a pipeline's config and runs it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path


class CliError(Exception):
    """Bad input on the command line: printed as ``lth-sparse COMMAND: error: MESSAGE``, exit status 2."""


def _load_config_file(path: str) -> dict:
    """The options in a ``--config`` file: JSON if its name ends in ``.json``, YAML otherwise.

    YAML is a superset of JSON, so a JSON file under any other name reads too. A run's own
    ``config.json`` works as well (its ``config`` entry is used).
    """
    file = Path(path)
    if not file.exists():
        raise CliError(f"--config {path}: no such file")
    if file.is_dir():
        raise CliError(f"--config {path}: is a directory, expected a JSON or YAML file")
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise CliError(f"--config {path}: cannot read it ({error})") from error
    if file.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise CliError(f"--config {path}: not valid JSON ({error})") from error
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            detail = " ".join(str(error).split())
            raise CliError(f"--config {path}: not valid YAML ({detail})") from error
    if isinstance(data, dict) and "config" in data and isinstance(data["config"], dict):
        data = data["config"]  # a run's own config.json
    if not isinstance(data, dict):
        raise CliError(f"--config {path}: expected a mapping of option names to values, "
                       f"got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _check_types(options: dict, config_class, source: str) -> None:
    """Refuse values of the wrong type (from a config file) before they reach the dataclass."""
    defaults = config_class()
    for name, value in options.items():
        default = getattr(defaults, name)
        if value is None or default is None:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, tuple):
            ok = isinstance(value, (list, tuple, dict))
        else:
            ok = True
        if not ok:
            raise CliError(f"{source}: {name} must be {type(default).__name__}, got {value!r}")


def _model_options(pairs: list[str] | None) -> tuple:
    out = []
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CliError(f"--model-option expects KEY=VALUE, got {pair!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.append((key, parsed))
    return tuple(out)


_TRAIN_HELP = {
    "epochs": "training epochs (per round)",
    "batch_size": "mini-batch size",
    "optimizer": "optimizer",
    "lr": "learning rate",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum (SGD)",
    "weight_decay": "weight decay (decoupled for adamw)",
    "betas": "Adam/AdamW betas",
    "schedule": "learning-rate schedule, stepped per iteration",
    "milestones": "epochs where the step schedule multiplies the learning rate by --gamma",
    "gamma": "step-schedule decay factor",
    "warmup_epochs": "linear learning-rate warm-up, in epochs",
    "eval_every": "iterations between validation passes (0: once per epoch)",
}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field of TrainConfig (shared by every pipeline); absent flags keep the config's value."""
    from lth_sparse.train.loop import OPTIMIZERS, SCHEDULES, TrainConfig

    defaults = TrainConfig()
    group = parser.add_argument_group("training")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f"{f.metadata.get('help') or _TRAIN_HELP.get(f.name, f.name)} (default {default})"
        if isinstance(default, bool):
            group.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
        elif isinstance(default, tuple):
            group.add_argument(flag, type=float, nargs="*", default=argparse.SUPPRESS, help=help_text)
        else:
            choices = f.metadata.get("choices") or {"optimizer": OPTIMIZERS, "schedule": SCHEDULES}.get(f.name)
            group.add_argument(flag, type=type(default), choices=choices, default=argparse.SUPPRESS, help=help_text)


def _add_imp(sub) -> None:
    from lth_sparse.pipelines.imp import PRUNERS, RETRAIN_MODES, ImpConfig
    from lth_sparse.prune import SCOPES, STRUCTURED_NORMS

    d = ImpConfig()
    p = sub.add_parser(
        "imp", help="find lottery tickets by iterative magnitude pruning with rewinding",
        description="Iterative magnitude pruning with rewinding (IMP/LTR). Round 0 trains the dense network; each "
                    "further round prunes FRACTION of the remaining weights and retrains. Results go to --out: "
                    "config.json, round_NN/ (masks, metrics, weights), summary.json and plots/. Re-running the same "
                    "command resumes after the last finished round.",
    )
    S = argparse.SUPPRESS  # defaults come from the config file, then ImpConfig
    p.add_argument("--config", metavar="FILE",
                   help="file of options, keyed by their names (rounds: 10, model_options: {width: 512}); JSON if "
                        "its name ends in .json, YAML otherwise; a run's config.json works too. Flags given here "
                        "override it; an unknown key is an error")
    p.add_argument("--out", default="runs/imp",
                   help="run directory (default runs/imp); the same command resumes the run there, another config "
                        "is refused once a round of it has finished")
    p.add_argument("--dataset", default=S, help=f"dataset name (default {d.dataset})")
    p.add_argument("--data-dir", default=S, help="where datasets are looked for / downloaded")
    p.add_argument("--model", default=S, help=f"model name (default {d.model})")
    p.add_argument("--model-option", action="append", default=S, metavar="KEY=VALUE",
                   help="model option, e.g. depth=3 or width=512 for mlp (repeatable)")
    p.add_argument("--rounds", type=int, default=S, help=f"pruning rounds after the dense one (default {d.rounds})")
    p.add_argument("--fraction", type=float, default=S,
                   help=f"fraction of the remaining weights pruned per round (default {d.fraction})")
    p.add_argument("--rewind", default=S,
                   help=f"rewind point: init, epoch:N or iter:N (late resetting) (default {d.rewind})")
    p.add_argument("--retrain", choices=RETRAIN_MODES, default=S,
                   help=f"rewind the weights, fine-tune them, or rewind only the learning rate (default {d.retrain})")
    p.add_argument("--scope", choices=SCOPES, default=S, help=f"compare scores across all layers or per layer "
                                                               f"(default {d.scope})")
    p.add_argument("--importance", choices=PRUNERS, default=S,
                   help=f"score: magnitude, layer-normalised l1/l2/softmax/minmax, lamp, or random (default {d.importance})")
    p.add_argument("--structured", choices=STRUCTURED_NORMS, default=S,
                   help="prune whole neurons/channels by this norm instead of single weights")
    p.add_argument("--spare-output", action="store_true", default=S, help="never prune the output layer")
    p.add_argument("--controls", action="store_true", default=S,
                   help="also train the random-reinit and random-mask controls each round")
    p.add_argument("--seed", type=int, default=S, help=f"seed of init, split and data order (default {d.seed})")
    add_train_arguments(p)
    p.add_argument("--train-size", type=int, default=S, help="train on a seeded subset of N examples (quick runs)")
    p.add_argument("--val-fraction", type=float, default=S, help=f"validation split (default {d.val_fraction})")
    p.add_argument("--device", default=S, help=f"cpu, cuda, cuda:1, ... (default {d.device})")
    p.add_argument("--threads", type=int, default=S,
                   help="CPU threads for torch (default: OMP_NUM_THREADS if set, else the usable cores not already "
                        "busy with other work, measured at start); recorded in config.json. Several jobs on one "
                        "machine: give each --threads so that they sum to the cores")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: when stderr is a terminal)")
    p.set_defaults(func=_run_imp)


def _run_imp(args) -> int:
    from lth_sparse.pipelines import imp

    options = _load_config_file(args.config) if args.config else {}
    valid = {f.name for f in dataclasses.fields(imp.ImpConfig)}
    unknown = set(options) - valid
    if unknown:
        raise CliError(f"--config {args.config}: unknown options {sorted(unknown)}; valid: {sorted(valid)}")
    _check_types({k: v for k, v in options.items() if k != "model_options"}, imp.ImpConfig, f"--config {args.config}")
    for name in valid:
        cli_name = "model_option" if name == "model_options" else name
        if hasattr(args, cli_name):
            options[name] = getattr(args, cli_name)
    if "model_options" in options:
        raw = options["model_options"]
        if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            options["model_options"] = _model_options(raw)
        elif isinstance(raw, dict):
            options["model_options"] = tuple(raw.items())
        else:
            try:
                options["model_options"] = tuple((k, v) for k, v in raw)
            except (TypeError, ValueError) as error:
                raise CliError(f"model_options must be a mapping or KEY=VALUE strings, got {raw!r}") from error
    for name in ("milestones", "betas"):
        if name in options:
            options[name] = tuple(options[name])
    config = imp.ImpConfig(**options)
    imp.run(config, args.out, progress=args.progress, plots=not args.no_plots)
    return 0


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="redraw the figures of a run from its summary.json",
                       description="Redraw RUN/plots/*.png from RUN/summary.json, without re-running anything.")
    p.add_argument("run", help="a run directory")
    p.set_defaults(func=_run_plot)


def _run_plot(args) -> int:
    from lth_sparse.plots import plot_imp
    from lth_sparse.runs import read_json

    summary_path = Path(args.run) / "summary.json"
    if not summary_path.exists():
        raise CliError(f"no summary.json in {args.run}")
    summary = read_json(summary_path)
    kind = summary.get("kind")
    if kind != "imp":
        raise CliError(f"no figures for runs of kind {kind!r}")
    for path in plot_imp(summary, Path(args.run) / "plots"):
        print(path)
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="what was built and which backend is active",
                       description="Print lth_sparse.backend_info() as JSON.")
    p.set_defaults(func=lambda args: print(json.dumps(__import__("lth_sparse").backend_info(), indent=2)) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lth-sparse",
        description="Lottery-ticket research: IMP with rewinding and the analyses that build on it. "
                    "Each subcommand writes a run directory that a re-run resumes.",
        epilog="Bad input ends with one 'lth-sparse COMMAND: error: ...' line and exit status 2 "
               "(LTH_SPARSE_DEBUG=1 shows the traceback instead).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_imp(sub)
    _add_plot(sub)
    _add_info(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input or an unusable environment, not a bug: printed without a traceback."""
    from lth_sparse.data import DownloadError
    from lth_sparse.runs import ConfigMismatch

    return CliError, ConfigMismatch, DownloadError, ValueError, KeyError, OSError


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input, with one ``error:`` line)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as error:
        if os.environ.get("LTH_SPARSE_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in message:
            message = f"{error.filename}: {message}"
        print(f"lth-sparse {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
