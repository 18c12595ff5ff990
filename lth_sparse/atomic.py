"""Atomic files: a crash leaves the old file or the new one, never part of one.

The one writer of the package's files (run directories, masks, the data cache, checkpoints,
the benchmarks' JSON); it sits below every other module, so that any of them can write safely.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from lth_sparse.integrity import Damaged, verified

__all__ = [
    "atomic_save_safetensors",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "json_default",
    "read_json",
    "read_safetensors",
    "strict_json_value",
]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write a file so that a crash leaves the old file or the new one, never part of one.

    ``write(tmp)`` writes the content to ``tmp``, a unique name beside ``path``; it is
    flushed to disk (fsync), renamed over ``path``, and the rename itself made durable
    (fsync of the directory, where the platform allows). On an error the temporary file
    is removed and the error raised. The file gets the mode the process's umask gives a new file,
    whatever ``write`` created it with. The one atomic writer of the package: every
    ``atomic_*`` function here, ``Masks.save``, the data cache and the benchmarks' JSON go
    through it. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            # the mode the user's umask gives any new file: some writers (safetensors) create theirs 0600, which
            # a colleague or a worker under another user on a shared file system could not read
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    """This process's umask: from ``/proc/self/status`` where Linux reports it, else by setting it and setting it
    back (a window in which another thread's new file would get no mask, so only where it cannot be read)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows, where a directory cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (RFC 8259, which any reader accepts), indented by 2, keys in their order,
    atomically: a float that is not finite (NaN, the infinities: a figure with nothing to measure, such as the
    validation accuracy without a validation set) is written ``null`` (see :func:`strict_json_value`). A value
    JSON cannot hold is a TypeError, and the old file is kept. Returns ``path``."""
    text = json.dumps(strict_json_value(obj), indent=2, sort_keys=False, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def strict_json_value(obj: Any) -> Any:
    """``obj`` as strict JSON holds it: every float that is not finite, at any depth, becomes ``None``; tuples
    and sets become lists, paths strings and tensors lists (:func:`json_default`); every other value, and the
    order of every mapping's keys, stay as they are: where no float is NaN or infinite, the text written is
    ``json.dumps``'s own."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, dict):
        return {key: strict_json_value(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_value(value) for value in obj]
    return strict_json_value(json_default(obj))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], format: str, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` (moved to the CPU, made contiguous) to ``path`` in safetensors (no pickle), atomically,
    with the metadata ``{"format": format, **metadata}``: ``format`` names what the file holds and its version
    (``"lth_sparse.masks/1"``), and :func:`read_safetensors` refuses a file of another. Returns ``path``."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    header = {"format": format, **(metadata or {})}
    return atomic_write(path, lambda tmp: save_file(tensors, os.fspath(tmp), metadata=header))


def read_safetensors(
    path: str | os.PathLike,
    format: str,
    what: str,
    *,
    device: str | torch.device = "cpu",
    names: Iterable[str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of a file written by :func:`atomic_save_safetensors` with ``format``.

    ``names``: the tensors to read (default every one, in the file's order); ``device``: where they are
    loaded. ``what`` names the file's content in the errors (``"masks file"``). Raises FileNotFoundError
    (``no {what} at {path}``) when there is no file, and ValueError naming the file and the format tag it
    holds when that tag is not ``format``. A file of a run's finished step is checked first
    (:func:`~lth_sparse.integrity.verified`); a damaged or unreadable one is a
    :class:`~lth_sparse.integrity.Damaged` naming it.
    """
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {what} at {path}")
    verified(path)
    try:
        with safe_open(path, framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != format:
                raise ValueError(f"{path} is not an lth_sparse {what} (format {metadata.get('format')!r})")
            return {name: f.get_tensor(name) for name in (f.keys() if names is None else names)}, metadata
    except SafetensorError as error:
        raise Damaged(f"{path}: not a readable {what}, damaged or of another kind ({error})") from error


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; a file that is not valid JSON (cut short by a crash, say) is a ``ValueError``
    naming it."""
    data = Path(path).read_bytes()
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:  # cut short, or a byte that is not UTF-8
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def json_default(obj):
    """What JSON writes for the values it has no type for: tuples and sets as lists, paths as strings, tensors as
    (nested) lists; anything else is a TypeError."""
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
