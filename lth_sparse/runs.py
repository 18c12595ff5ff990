"""Run directories: config with its hash, atomic writes, resume.

A pipeline writes everything under its run directory. ``config.json`` holds the
full config and its hash; a re-run with the same config resumes (finished steps
are skipped), a different config is refused with a message saying what differs.
Every file is written to a temporary name and renamed, so a crash leaves either
the old file or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def _json_default(obj):
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def config_identity(config) -> dict:
    """The fields of a config dataclass that define the experiment (those not marked ``identity=False``)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.metadata.get("identity", True)}


def config_hash(config) -> str:
    canonical = json.dumps(config_identity(config), sort_keys=True, default=_json_default)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class ConfigMismatch(RuntimeError):
    """A run directory holds a run of another config."""


class RunDir:
    """The directory of one pipeline run."""

    def __init__(self, path: str | os.PathLike, config, kind: str) -> None:
        self.path = Path(path)
        self.kind = kind
        self.config = config
        self.hash = config_hash(config)
        self._claim()

    def _claim(self) -> None:
        config_file = self.path / "config.json"
        record = {"kind": self.kind, "hash": self.hash,
                  "config": {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}}
        if config_file.exists():
            saved = read_json(config_file)
            if saved.get("kind") != self.kind:
                raise ConfigMismatch(f"{self.path} holds a {saved.get('kind')!r} run, not {self.kind!r}; "
                                     "choose another --out")
            if saved.get("hash") != self.hash:
                identity = config_identity(self.config)
                old = saved.get("config", {})
                diffs = [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in
                         json.loads(json.dumps(identity, default=_json_default)).items() if old.get(k) != v]
                raise ConfigMismatch(
                    f"{self.path} holds a run with another config ({'; '.join(diffs) or 'hash differs'}). "
                    "Use another --out, or the same options to resume it.")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(config_file, record)

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
        atomic_write_json(self.path / name / "done.json", result)

    def result(self, name: str) -> dict:
        return read_json(self.path / name / "done.json")
