"""Closed sets as typer choices: ``--help`` lists them and the parser refuses anything else."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any


def choice_type(name: str, choices: Sequence[str]) -> type[enum.Enum]:
    """An Enum whose members are ``choices`` (each member's value is the choice itself)."""
    return enum.Enum(name, [(choice, choice) for choice in choices])


def plain(value: Any) -> Any:
    """A parsed option's value with choices back as their strings (lists item by item)."""
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value.value if isinstance(value, enum.Enum) else value
