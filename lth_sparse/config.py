"""Config dataclasses: their documented fields, and the one way from a file and flags to a config.

Every pipeline describes its experiment by a frozen dataclass whose fields are
declared with :func:`option` (a default and a help text, optionally choices, whether it
is part of the run's identity: a run's hash counts only the identity fields that differ from
their defaults, so a field added later, at its default, leaves existing runs' hashes alone;
see :data:`lth_sparse.runs.HASH_SCHEMA`). The command line is
generated from those fields (:func:`lth_sparse.cli.add_config_arguments`): each
becomes a documented flag, ``--config FILE`` supplies any of them by name, and
flags override the file. :func:`config_from_options` turns such a mapping (from a
file, from flags, or both merged) into the dataclass, with errors that name the
option: unknown names, values of the wrong type.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from lth_sparse.errors import UserError

__all__ = [
    "ConfigError",
    "config_from_options",
    "data_dir_option",
    "device_option",
    "field_kind",
    "option",
    "read_file",
    "split_items",
    "threads_option",
]


class ConfigError(UserError):
    """An option that the config does not have, or a value of the wrong type for it."""


def option(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    identity: bool = True,
    metavar: str | None = None,
    flag: str | None = None,
    default_text: str | None = None,
    parse: Callable[[Any], Any] | None = None,
    absent: Any = dataclasses.MISSING,
) -> Any:
    """A config field with its documentation.

    Args:
        default: the value when neither a file nor a flag gives one (immutable: a tuple, not a list).
        help: what the option means, for ``--help`` and the docs.
        choices: the allowed values, where they are a fixed set.
        identity: ``False`` for options that do not change the experiment's results
            (device, data folder, how many rounds to run so far): left out of the run's hash.
        metavar, flag: how the flag is shown / named (default ``--field-name``).
        default_text: how ``--help`` describes the default, where the value alone would not say it.
        parse: turns a value as written (a flag's string, a file's value) into the field's value
            (raising ValueError with the reason); e.g. ``--seeds 3`` -> ``(0, 1, 2)``.
        absent: what a run's saved ``config.json`` written before this field existed means by leaving it out,
            where that is not ``default``: the behaviour of the code then (e.g. ``planting="exact"`` for plant
            runs made before ``--planting`` existed, whose default is ``reference``). Such a run then reads back
            as what it was made with, and resuming it with the new default is refused, as another config.
    """
    if isinstance(default, (list, dict, set)):
        raise TypeError(f"option defaults must be immutable, got {type(default).__name__}")
    metadata: dict[str, Any] = {"help": help, "identity": identity}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if metavar is not None:
        metadata["metavar"] = metavar
    if flag is not None:
        metadata["flag"] = flag
    if default_text is not None:
        metadata["default_text"] = default_text
    if parse is not None:
        metadata["parse"] = parse
    if absent is not dataclasses.MISSING:
        metadata["absent"] = absent
    return dataclasses.field(default=default, metadata=metadata)


def split_items(value: Any) -> list[str]:
    """The items of a list option as written: a string split at commas and whitespace (``"a,b c"``), or each
    element of a list (a config file's) as a string; for the options' ``parse`` functions."""
    return value.replace(",", " ").split() if isinstance(value, str) else [str(v) for v in value]


def device_option() -> Any:
    """The ``device`` field every pipeline's config has (not part of a run's identity)."""
    return option("cpu", "cpu, cuda, cuda:1, ...", identity=False)


def data_dir_option() -> Any:
    """The ``data_dir`` field every pipeline's config has (not part of a run's identity)."""
    return option(
        None,
        "where datasets are looked for and downloaded",
        identity=False,
        metavar="DIR",
        default_text="$LTH_SPARSE_DATA, else ~/.cache/lth_sparse/data",
    )


def threads_option(help: str = "CPU threads for torch per unit") -> Any:
    """The ``threads`` field every pipeline's config has (not part of a run's identity)."""
    return option(
        None,
        help,
        identity=False,
        metavar="N",
        default_text="OMP_NUM_THREADS if set, else the usable cores not already busy",
    )


def field_kind(cls, f: dataclasses.Field) -> tuple[str, type | None, bool]:
    """(kind, scalar type, optional) of a config field, from its annotation.

    kind is ``"scalar"`` (bool, int, float or str), ``"list"`` (a tuple of scalars, e.g.
    ``tuple[float, ...]``), or ``"pairs"`` (a tuple of (name, value) pairs, e.g. model options).
    """
    hint = typing.get_type_hints(cls)[f.name]
    optional = False
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        non_none = [a for a in args if a is not type(None)]
        optional = len(non_none) < len(args)
        hint = non_none[0]
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is tuple:
        inner = [a for a in args if a is not Ellipsis]
        if inner and typing.get_origin(inner[0]) is tuple:
            return "pairs", None, optional
        return "list", inner[0] if inner else float, optional
    if hint in (bool, int, float, str):
        return "scalar", hint, optional
    raise TypeError(f"{cls.__name__}.{f.name}: unsupported option type {hint!r}")


def _coerce(cls, f: dataclasses.Field, value: Any, source: str) -> Any:
    kind, scalar, optional = field_kind(cls, f)
    name = f.name
    if "parse" in f.metadata and value is not None and not (kind == "list" and isinstance(value, tuple)):
        try:
            value = f.metadata["parse"](value)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{source}: {name}: {error}") from error
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: {name} may not be empty")
    if kind == "pairs":
        if isinstance(value, Mapping):
            return tuple(value.items())
        try:
            pairs = tuple((str(k), v) for k, v in value)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{source}: {name} must be a mapping of names to values, got {value!r}") from error
        return pairs
    if kind == "list":
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_scalar(scalar, v, name, source) for v in value)
    return _scalar(scalar, value, name, source, choices=f.metadata.get("choices"))


def _scalar(kind: type, value: Any, name: str, source: str, choices=None) -> Any:
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)  # an int stays an int (its hash)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{source}: {name} must be {kind.__name__}, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{source}: {name} must be one of {list(choices)}, got {value!r}")
    return value


def config_from_options(
    cls, options: Mapping[str, Any], source: str = "options", *, check: bool = True, presets: bool = True
):
    """``cls(**options)`` after checking every name and type (``source`` names where they came from).

    A config class with ``PRESETS`` (name -> options) and a ``preset`` field takes the named
    preset's options under those given (so a flag or a file still overrides a preset's value);
    one with a classmethod ``inherited_options(options) -> dict`` takes those under both (a
    transfer inherits its source run's training recipe: source < preset < file < flags);
    ``presets=False`` for a run's saved ``config.json``, which holds what the preset gave when it
    ran (a field added since takes its default, not what the preset gives today, or its ``absent`` value
    where it has one: see :func:`option`).
    Names may use ``-`` or ``_``. A tuple field takes a list (or one value); a field of
    (name, value) pairs takes a mapping. Raises :class:`ConfigError` naming the unknown
    options and the valid ones, or the option whose value has the wrong type; the
    dataclass's own checks raise ``ValueError`` as before. ``check=False`` returns the coerced
    options (a dict, with a preset's filled in) without building the config.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    normalised = {str(k).replace("-", "_"): v for k, v in options.items()}
    unknown = sorted(set(normalised) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown options {unknown}; valid: {sorted(fields)}")
    if not presets:  # a saved config: a field it predates means what the code did then
        absent = {name: f.metadata["absent"] for name, f in fields.items() if "absent" in f.metadata}
        normalised = {**{k: v for k, v in absent.items() if k not in normalised}, **normalised}
    known = getattr(cls, "PRESETS", None)
    if presets and known and normalised.get("preset") is not None:  # a preset's values, under the options given
        if normalised["preset"] not in known:
            raise ConfigError(f"{source}: unknown preset {normalised['preset']!r}; presets: {sorted(known)}")
        normalised = {**known[normalised["preset"]], **normalised}
    inherit = getattr(cls, "inherited_options", None)
    if presets and inherit is not None:  # e.g. a transfer's training defaults: its source run's, under the rest
        normalised = {**inherit(normalised), **normalised}
    values = {name: _coerce(cls, fields[name], value, source) for name, value in normalised.items()}
    return cls(**values) if check else values


def read_file(path) -> Any:
    """The data in a JSON or YAML file (an options file, a sweep's grid): JSON if the name ends in ``.json``,
    YAML otherwise (YAML is a superset of JSON, so a JSON file under any other name reads too). Raises
    :class:`ConfigError` starting with the path: missing, a directory, unreadable, or not valid JSON/YAML."""
    from pathlib import Path

    file = Path(path)
    if not file.exists():
        raise ConfigError(f"{path}: no such file")
    if file.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a JSON or YAML file")
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read it ({error})") from error
    if file.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON ({error})") from error
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from error
