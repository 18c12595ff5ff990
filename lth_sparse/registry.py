"""``Registry``: named constructors of one kind (data sets, models, pipelines), filled by a decorator.

A registry is a ``dict`` from name to entry, so it reads as one (``name in registry``, ``registry[name]``,
``sorted(registry)``) and a test can add an entry for its duration (``monkeypatch.setitem``). Entries are
added with :meth:`Registry.register`, which refuses a name already taken, and looked up with
:meth:`Registry.lookup`, whose error names the unknown name and lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """Entries by name, of one ``kind`` (``"dataset"``, ``"model"``), the word the errors use.

    ``key``: how a name becomes its key, applied on registering and on looking up (e.g. ``str.lower``, so
    that a lookup ignores case); default: the name itself.
    """

    def __init__(self, kind: str, key: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self.kind = kind
        self._key = key

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated entry under ``name`` and return it unchanged.

        Raises ValueError (``{kind} {name!r} is already registered``) when the name is taken.
        """
        key = self._key_of(name)

        def decorate(entry: T) -> T:
            if key in self:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[key] = entry
            return entry

        return decorate

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self)

    def lookup(self, name: str, hint: str = "") -> T:
        """The entry registered under ``name``. Raises ValueError when there is none:
        ``unknown {kind} {name!r}; available: {the sorted names}{hint}``, the name as given."""
        key = self._key_of(name)
        if key not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}{hint}")
        return self[key]

    def _key_of(self, name: str) -> str:
        return name if self._key is None else self._key(name)
