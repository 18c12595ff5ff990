"""Run directories: config with its hash, atomic writes, resume, one driver at a time.

A pipeline writes everything under its run directory. ``config.json`` holds the
full config and its hash; a re-run with the same config resumes (finished steps
are skipped), a different config is refused with a message saying what differs
(or, where no step has finished, replaces the unfinished run). Every file is
written through :mod:`lth_sparse.atomic`: to a temporary name, flushed to disk, then
renamed, so a crash leaves either the old file or the new one, never half of one.
A process that runs (or summarises) a run directory holds its :class:`RunLock`, so
that no two processes run one unit at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from lth_sparse.atomic import (  # noqa: F401
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    json_default,
    read_json,
    strict_json_value,
)
from lth_sparse.errors import UserError
from lth_sparse.integrity import (
    DONE,
    Damage,
    Damaged,
    finished_steps,
    inspect_step,
    read_done,
    unparsable,
    with_record,
)

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

HASH_SCHEMA = 2
"""The version of the config-hash rule (``config.json`` records it). 1: every identity field; 2: only the
identity fields that differ from their defaults (OpenLTH's rule), so a new option, at its default, leaves
every existing hash as it was. A changed default leaves the hash of a run made under the old one as it was, so
:class:`RunDir` compares the saved values too: such a run is refused unless given the values it was made with;
and an option added with a default other than what the code did before says so with ``absent``
(:func:`lth_sparse.config.option`)."""


def config_identity(config) -> dict:
    """The fields of a config dataclass that define the experiment (those not marked ``identity=False``)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata.get("identity", True)}


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=json_default).encode()).hexdigest()[:16]


def config_hash(config) -> str:
    """16 hex digits naming the experiment: the SHA-256 of the schema and the identity fields that differ
    from their defaults (as sorted JSON). Fields with ``identity=False`` never count."""
    changed = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.metadata.get("identity", True) and getattr(config, f.name) != _default(f)
    }
    return _digest({"schema": HASH_SCHEMA, "fields": changed})


class ConfigMismatch(UserError):
    """A run directory holds a run of another kind or config."""


class RunBusy(UserError):
    """A run directory another process is running (it holds the directory's :class:`RunLock`)."""


LOCK_FILE = "lock"
"""The file in a run directory that :class:`RunLock` locks; it holds the process id of the last holder."""


class RunLock:
    """The lock of the run directory ``path``: held by the one process that runs it (or writes its summary).

    :meth:`acquire` takes an exclusive ``flock`` of ``path/lock`` (created, with the directory, where missing)
    and writes the process id into it, or, where another process holds it, raises :class:`RunBusy` at once,
    naming the directory and that process's id. The operating system releases the lock when its holder dies,
    however it dies, so a killed run never leaves a stale lock: the file stays, and the next run takes it. A
    second ``RunLock`` of the same directory is refused in the same process too. Not inherited by child
    processes (the descriptor is not inheritable). Where the platform has no ``flock`` (Windows) it locks
    nothing.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None or fcntl is None:
            return self
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunBusy(
                f"{self.path} is in use by another process (pid {holder}), which runs or summarises it: one "
                "process at a time; wait for it to end (or stop it) and try again (a run resumes)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # written in place: replacing the file would leave the lock on a name no one else opens
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock back (closing its descriptor); the file stays."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the last descriptor of the open file releases its flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    """The process id the holder of the lock wrote into its file (it writes it right after taking the lock,
    so it is waited for a little), or ``"unknown"``."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return text
        time.sleep(0.01)
    return "unknown"


class Steps:
    """A directory of resumable steps: each in its own sub-folder, finished when its ``done.json`` exists.

    The run store's one rule, shared by a run directory and by each unit's directory: a
    step with ``done.json`` (written last, atomically) is never run again. Its ``done.json``
    records the size and SHA-256 of each file the step wrote (:mod:`lth_sparse.integrity`), which
    :func:`check_run` checks; :meth:`result` gives the step's result without that record.
    """

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def step_dir(self, name: str) -> Path:
        d = self.path / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def is_done(self, name: str) -> bool:
        """A step is done when its ``done.json`` exists (written last, atomically)."""
        return (self.path / name / "done.json").exists()

    def mark_done(self, name: str, result: dict) -> None:
        """Finish step ``name``: its ``done.json`` holds ``result`` and the record of the step's files."""
        atomic_write_json(self.path / name / DONE, with_record(result, self.path / name))

    def result(self, name: str) -> dict:
        """The result step ``name`` finished with (a damaged ``done.json`` is a
        :class:`~lth_sparse.integrity.Damaged` naming it)."""
        return read_done(self.path / name / DONE)

    def undo(self, name: str) -> None:
        """Mark step ``name`` unfinished (its ``done.json`` removed): it runs again, rewriting its files."""
        (self.path / name / DONE).unlink(missing_ok=True)


class RunDir(Steps):
    """The directory of one pipeline run.

    ``RunDir(path, config, kind)`` checks the directory at once: a run of another kind
    there is refused (:class:`ConfigMismatch`), and so is a run of another config that
    has a finished step (a ``done.json`` anywhere below it). A run of another config
    with no finished step has nothing to lose, so it is replaced: its steps' files are
    removed when the directory is claimed (``replacing`` says what differed).
    ``claim=False`` defers every write until :meth:`claim`, so a pipeline can check all
    of its inputs first: a command that fails on bad input leaves nothing behind.
    """

    def __init__(self, path: str | os.PathLike, config, kind: str, *, claim: bool = True) -> None:
        super().__init__(path)
        self.kind = kind
        self.config = config
        self.hash = config_hash(config)
        self.replacing: str | None = None
        self.claimed = False
        self._check()
        if claim:
            self.claim()

    def _check(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"{self.path} is a file, not a run directory; choose another --out")
        config_file = self.path / "config.json"
        if not config_file.exists():
            return
        try:
            saved = read_json(config_file)
        except (OSError, ValueError) as error:
            raise ConfigMismatch(f"{config_file} is not a run's config ({error}); choose another --out") from error
        if not isinstance(saved, dict) or saved.get("kind") != self.kind:
            kind = saved.get("kind") if isinstance(saved, dict) else None
            raise ConfigMismatch(f"{self.path} holds a {kind!r} run, not {self.kind!r}; choose another --out")
        if saved.get("schema") != HASH_SCHEMA:
            raise ConfigMismatch(
                f"{config_file} was hashed by rule {saved.get('schema')!r}, not by this version's "
                f"rule {HASH_SCHEMA} (see lth_sparse.runs.HASH_SCHEMA); choose another --out"
            )
        same_hash = saved.get("hash") == self.hash
        if same_hash and "config" not in saved:
            return  # the same experiment (a record without its values: nothing more to compare)
        # A field the saved config lacks (added since) means its `absent` value where the option has one (what
        # the code did before it existed), else its default.
        meant = {f.name: f.metadata.get("absent", _default(f)) for f in dataclasses.fields(self.config) if f.init}
        old = saved.get("config", {})
        now = json.loads(json.dumps(config_identity(self.config), default=json_default))
        then = json.loads(json.dumps({k: old.get(k, meant[k]) for k in now}, default=json_default))
        diffs = [f"{k}: {then[k]!r} there, {v!r} now" for k, v in now.items() if then[k] != v]
        if not diffs:
            # the same values of every identity field: the same experiment, hashed against defaults that have
            # moved since where the hashes differ (the hash counts the fields that differ from their defaults);
            # claiming rewrites it
            return
        what = "; ".join(diffs)
        if same_hash:  # equal hashes, other values: a default moved since the run was made
            what += " (a default has changed since this run was made: give the values it was made with to resume it)"
        if self.finished_steps():
            raise ConfigMismatch(
                f"{self.path} holds a run with another config ({what}). "
                "Use another --out, or the same options to resume it."
            )
        self.replacing = what

    def finished_steps(self) -> list[str]:
        """The steps below the run directory that have a ``done.json`` (relative paths, sorted)."""
        if not self.path.is_dir():
            return []
        return sorted(str(p.parent.relative_to(self.path)) for p in self.path.rglob("done.json"))

    def claim(self) -> None:
        """Create the directory and write ``config.json`` (replacing an unfinished run of another config)."""
        if self.claimed:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if self.replacing is not None:
            for entry in self.path.iterdir():
                if entry.name in ("config.json", LOCK_FILE):  # the lock is its claimer's, held while it claims
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        if not self.recorded():  # a resumed run of the same options leaves config.json untouched
            atomic_write_json(self.path / "config.json", self._record())
        self.claimed = True

    def _record(self) -> dict:
        return {
            "kind": self.kind,
            "hash": self.hash,
            "schema": HASH_SCHEMA,
            "config": {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)},
        }

    def recorded(self) -> bool:
        """Whether ``config.json`` holds this very config, every option (those outside the hash too) as given."""
        config_file = self.path / "config.json"
        try:
            return read_json(config_file) == json.loads(json.dumps(strict_json_value(self._record())))
        except (OSError, ValueError):
            return False


@dataclasses.dataclass
class RunCheck:
    """What :func:`check_run` found in a run directory: its finished steps, how many files their records hold
    (``files``, ``bytes``: those checked by SHA-256), the steps finished before records were kept (``unrecorded``:
    their files checked by parsing), and the damage, by the folder of each damaged step relative to the run
    (``""``: the run's own files, ``config.json`` and ``summary.json``)."""

    path: Path
    steps: int = 0
    files: int = 0
    bytes: int = 0
    unrecorded: int = 0
    damaged: dict[str, list[Damage]] = dataclasses.field(default_factory=dict)

    @property
    def intact(self) -> bool:
        return not self.damaged

    def damages(self) -> list[Damage]:
        return [d for found in self.damaged.values() for d in found]

    def raise_if_damaged(self) -> None:
        """A :class:`~lth_sparse.integrity.Damaged` naming the first damaged file and how many more there are."""
        if self.intact:
            return
        first, *more = self.damages()
        rest = f" (and {len(more)} more damaged file{'s' if len(more) != 1 else ''}: lth-sparse verify {self.path})"
        raise Damaged(f"{first}{rest if more else ''}; re-running the command that made {self.path} repairs it")


def check_run(path: str | os.PathLike) -> RunCheck:
    """Check every file of the run directory ``path`` that can be checked: ``config.json`` and ``summary.json``
    parse, and each finished step's files match its record (:func:`~lth_sparse.integrity.check_step`)."""
    path = Path(path)
    found = RunCheck(path)
    for name in ("config.json", "summary.json"):
        if (path / name).exists() and (what := unparsable(path / name)):
            found.damaged.setdefault("", []).append(Damage(path / name, what))
    for folder in finished_steps(path):
        found.steps += 1
        damages, recorded = inspect_step(folder)
        if damages:
            found.damaged[folder.relative_to(path).as_posix()] = damages
        if recorded is None:
            if not (damages and damages[0].path == folder / DONE):  # its done.json parses: an older version's step
                found.unrecorded += 1
            continue
        found.files += len(recorded["files"])
        found.bytes += sum(entry["size"] for entry in recorded["files"].values())
    return found
