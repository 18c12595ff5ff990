"""What a finished step recorded of its files, and the check of it: a damaged file is named, never used.

Every step of a run directory (a unit, or a step inside one: a folder finished by its ``done.json``)
records in its ``done.json``, under :data:`INTEGRITY_KEY`, the size and SHA-256 of each file it
wrote (:func:`with_record`): every file below its folder except ``done.json`` itself, its
``unit.log`` (which gets its closing line after ``done.json``), the run's ``lock``, half-written
temporary files, and the folders of the steps inside it (each records its own). The readers strip
that key (:func:`read_done`), so a step's result is what its function returned.

:func:`check_step` compares a step's files with its record: a file missing, of another size, or of
the same size and another content (overwritten, bit rot) is a :class:`Damage`. A step finished
before steps recorded their files has no record: its files are verified by parsing them (JSON and
JSONL line by line, a safetensors file's header against its length, a torch file's zip archive by
its checksums). :func:`verified` checks one file before it is read, by the record of the step it
belongs to, and raises :class:`Damaged` (a :class:`~lth_sparse.errors.UserError` naming the file and
what is wrong) rather than let a damaged file be used; :func:`load_torch` reads a torch file so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lth_sparse.errors import UserError

__all__ = [
    "DONE",
    "INTEGRITY_KEY",
    "Damage",
    "Damaged",
    "check_step",
    "finished_steps",
    "inspect_step",
    "load_torch",
    "read_done",
    "record",
    "sha256_of",
    "step_files",
    "unparsable",
    "verified",
    "with_record",
]

DONE = "done.json"
"""The file that finishes a step: written last, atomically."""

INTEGRITY_KEY = "integrity"
"""The key of a step's ``done.json`` that holds the record of its files: ``{"algorithm": "sha256", "files":
{path relative to the step's folder: {"size": bytes, "sha256": hex digest}}}``."""

NOT_RECORDED = ("done.json", "unit.log", "lock")
"""The files of a step's folder that its record leaves out: the record's own file, the unit's log (its closing
line comes after ``done.json``) and the run's lock."""

_CHUNK = 1 << 20


class Damaged(UserError):
    """A file of a run that is damaged (missing, cut short, overwritten, unreadable): the message names the
    file and what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class Damage:
    """One damaged file: its path and what is wrong with it (``"12 bytes where 5,678 were recorded"``)."""

    path: Path
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of the file at ``path``, as a hex digest."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _is_step(directory: Path) -> bool:
    """Whether ``directory`` is a step's folder: finished (its ``done.json``) or a unit's (its ``unit.log``)."""
    return (directory / DONE).exists() or (directory / "unit.log").exists()


def _temporary(name: str) -> bool:
    """A half-written file of :func:`lth_sparse.atomic.atomic_write` (``.NAME.PID.THREAD.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def step_files(directory: str | os.PathLike) -> list[Path]:
    """The files of the step in ``directory`` that its record holds, as paths relative to it (sorted): every
    file below it but those of :data:`NOT_RECORDED` in it, temporary files, and the folders of other steps."""
    directory = Path(directory)
    found: list[Path] = []

    def walk(folder: Path) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    if not _is_step(path):
                        walk(path)
                elif entry.is_file() and not _temporary(entry.name):
                    if folder == directory and entry.name in NOT_RECORDED:
                        continue
                    found.append(path.relative_to(directory))

    if directory.is_dir():
        walk(directory)
    return sorted(found, key=lambda p: p.as_posix())


def record(directory: str | os.PathLike) -> dict:
    """The record of the files of the step in ``directory`` (see :data:`INTEGRITY_KEY`)."""
    directory = Path(directory)
    files = {}
    for relative in step_files(directory):
        path = directory / relative
        files[relative.as_posix()] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    return {"algorithm": "sha256", "files": files}


def with_record(result: dict, directory: str | os.PathLike) -> dict:
    """``result`` (a step's ``done.json``) with the record of the files in ``directory`` under
    :data:`INTEGRITY_KEY`, its last key."""
    if INTEGRITY_KEY in result:
        raise ValueError(f"a step's result may not hold the key {INTEGRITY_KEY!r}: its done.json records files there")
    return {**result, INTEGRITY_KEY: record(directory)}


def _parse_done(path: Path) -> tuple[dict | None, str | None]:
    """(the whole ``done.json`` at ``path``, record included, ``None``) or, where it is not a JSON object,
    (``None``, what is wrong with it)."""
    try:
        done = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return None, f"not valid JSON ({error})"
    if not isinstance(done, dict):
        return None, f"holds a JSON {type(done).__name__}, not a step's result"
    return done, None


def _read_done_file(path: Path) -> dict:
    """The whole ``done.json`` at ``path``, record included; :class:`Damaged` where it is not a JSON object."""
    done, what = _parse_done(path)
    if what is not None:
        raise Damaged(f"{path}: damaged, {what}")
    return done


def read_done(path: str | os.PathLike) -> dict:
    """A step's result from its ``done.json`` at ``path``, without the record of its files; a file that is not
    a JSON object (cut short, overwritten) is :class:`Damaged`, named."""
    done = _read_done_file(Path(path))
    done.pop(INTEGRITY_KEY, None)
    return done


def _mismatch(path: Path, entry: dict) -> str | None:
    """What differs between the file at ``path`` and its ``entry`` in a record, or ``None``."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"missing ({_bytes(entry['size'])} recorded)"
    if size != entry["size"]:
        return f"{_bytes(size)} where {_bytes(entry['size'])} were recorded"
    if sha256_of(path) != entry["sha256"]:
        return "its content differs from the SHA-256 recorded (same size: overwritten or corrupted)"
    return None


def _bytes(n: int) -> str:
    return f"{n:,} byte{'s' if n != 1 else ''}"


def check_step(directory: str | os.PathLike) -> list[Damage]:
    """The damaged files of the finished step in ``directory``: its ``done.json`` when that is not a JSON object
    (then nothing else can be checked), else every file its record lists that is missing or differs, or, for a
    step finished before steps recorded their files, every file of :func:`step_files` that does not parse."""
    return inspect_step(directory)[0]


def inspect_step(directory: str | os.PathLike) -> tuple[list[Damage], dict | None]:
    """(:func:`check_step` of the finished step in ``directory``, the record of its files: ``None`` where its
    ``done.json`` holds none or does not parse), from one reading of its ``done.json``."""
    directory = Path(directory)
    done, what = _parse_done(directory / DONE)
    if what is not None:
        return [Damage(directory / DONE, what)], None
    recorded = done.get(INTEGRITY_KEY)
    if recorded is None:
        damages = [Damage(directory / p, what) for p in step_files(directory) if (what := unparsable(directory / p))]
        return damages, None
    damages = []
    for relative, entry in recorded["files"].items():
        what = _mismatch(directory / relative, entry)
        if what is not None:
            damages.append(Damage(directory / relative, what))
    return damages, recorded


def unparsable(path: str | os.PathLike) -> str | None:
    """Why the file at ``path`` does not parse as its kind (by its suffix: ``.json``, ``.jsonl``,
    ``.safetensors``, ``.pt``), or ``None`` (it parses, or is of another kind): how a file that no record
    lists is verified."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            json.loads(path.read_bytes())
        elif path.suffix == ".jsonl":
            for n, line in enumerate(path.read_bytes().splitlines(), 1):
                if line.strip():
                    try:
                        json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError) as error:
                        return f"line {n} is not valid JSON ({error})"
        elif path.suffix == ".safetensors":
            return _safetensors_damage(path)
        elif path.suffix == ".pt":
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                return f"its entry {bad} fails its checksum"
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return f"not valid JSON ({error})"
    except zipfile.BadZipFile as error:
        return f"not a torch file ({error})"
    except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError) as error:
        return f"unreadable ({error})"
    return None


def _safetensors_damage(path: Path) -> str | None:
    """What is wrong with a safetensors file's layout (its header's length, its JSON, its data's extent against
    the file's length), or ``None``."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{_bytes(size)}: too short for a safetensors file"
        (header_length,) = struct.unpack("<Q", head)
        if 8 + header_length > size:
            return f"{_bytes(size)}: cut short (its header alone claims {_bytes(header_length)})"
        try:
            header = json.loads(f.read(header_length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return f"its safetensors header is not valid JSON ({error})"
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    expected = 8 + header_length + max(ends, default=0)
    if expected != size:
        return f"{_bytes(size)} where its header describes {_bytes(expected)}"
    return None


def _owning_step(path: Path) -> Path | None:
    """The folder of the finished step that ``path`` belongs to: the nearest folder above it with a
    ``done.json`` (none above a run's root, the folder with its ``config.json``)."""
    for folder in path.parents:
        if (folder / DONE).exists():
            return folder
        if (folder / "config.json").exists():
            return None
    return None


def verified(path: str | os.PathLike) -> Path:
    """``path``, once checked against the record of the finished step it belongs to (a file of no finished step
    is not checked; one of a step finished before records were kept is checked by parsing it); a damaged file is
    :class:`Damaged`, named, with what is wrong."""
    path = Path(path)
    step = _owning_step(path.absolute())
    if step is None:
        return path
    done = _read_done_file(step / DONE)
    recorded = done.get(INTEGRITY_KEY)
    if recorded is None:
        what = unparsable(path) if path.exists() else None
    else:
        entry = recorded["files"].get(path.absolute().relative_to(step).as_posix())
        what = None if entry is None else _mismatch(path, entry)
    if what is not None:
        raise Damaged(f"{path}: damaged, {what}; re-running the command that wrote it repairs it")
    return path


def load_torch(path: str | os.PathLike, **kwargs: Any) -> Any:
    """``torch.load(path, **kwargs)`` of a :func:`verified` file; a file torch cannot read is :class:`Damaged`."""
    import torch

    path = verified(path)
    try:
        return torch.load(path, **kwargs)
    except OSError:
        raise
    except Exception as error:  # torch's unpickler fails on garbage in many ways (struct, pickle, zip, runtime errors)
        raise Damaged(f"{path}: damaged, torch cannot read it ({str(error).splitlines()[0]})") from error


def finished_steps(root: str | os.PathLike) -> Iterator[Path]:
    """The folders of every finished step below ``root`` (those with a ``done.json``), in sorted order."""
    root = Path(root)
    yield from sorted((p.parent for p in root.rglob(DONE)), key=lambda p: p.as_posix())
