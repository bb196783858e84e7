"""A tiny named registry, the shape timm uses for models, reused for rules, archs and datasets."""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fabench.errors import unknown_choice

T = TypeVar("T")


def natural_key(name: str) -> list:
    """Sort key that orders ``resnet20`` before ``resnet110``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class Registry(Generic[T]):
    """Names mapped to entries, with fnmatch listing and closest-match errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            warnings.warn(f"{self.kind} '{name}' registered twice; the later one wins", stacklevel=2)
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        return lambda entry: self.register(name, entry)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise unknown_choice(self.kind, name, self._entries)
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries, key=natural_key))

    def names(self, pattern: str = "*") -> list[str]:
        return [n for n in self if fnmatch.fnmatchcase(n, pattern)]
