"""One registry type for everything eaq looks up by name: models, methods, observers,
strategies and energy profiles.

Examples:
    >>> colours = Registry("colour")
    >>> colours.add("red", 1)
    1
    >>> colours.get("red"), colours.names()
    (1, ['red'])
    >>> colours.get("blue")
    Traceback (most recent call last):
    ...
    eaq.errors.EaqError: unknown colour 'blue'; valid: red
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from eaq.errors import EaqError, choices_hint

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, in registration order.

    Args:
        kind: what an entry is, for messages ("model", "method", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, *, overwrite: bool = False) -> T:
        """Register ``entry`` under ``name``; a second registration of a name is a bug unless
        ``overwrite``. Returns ``entry``."""
        if name in self._entries and not overwrite and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry named ``name``; :class:`EaqError` listing the valid names otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise EaqError(f"unknown {self.kind} {name!r}; {choices_hint(self.names())}") from None

    def names(self, *, sort: bool = False) -> list[str]:
        return sorted(self._entries) if sort else list(self._entries)

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
