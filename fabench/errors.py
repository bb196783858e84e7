"""User-facing errors: one clear line, exit code 2, never a traceback.

Library code raises :class:`FabenchError` for anything the user can fix (an unknown name, a
bad value, missing data). The CLI catches it, prints its message on one line and exits 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FabenchError(Exception):
    """An error caused by the user's input; its message says what is wrong and what is right.

    ``setting``: the run setting (a RunConfig field name) the error is about, if any, so that a
    task file's validation can point at the line that set it without reading the message.
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


def closest_first(name: str, choices: Iterable[str]) -> list[str]:
    """Return ``choices`` sorted so the ones most similar to ``name`` come first."""
    pool = sorted(set(choices))
    if not pool:
        return []
    close = difflib.get_close_matches(name, pool, n=len(pool), cutoff=0.0)
    return close + [c for c in pool if c not in close]


def unknown_choice(kind: str, name: str, choices: Iterable[str], limit: int = 12) -> FabenchError:
    """Build the error for an unknown ``kind`` called ``name``, listing valid names, closest first."""
    ordered = closest_first(name, choices)
    if not ordered:
        return FabenchError(f"unknown {kind} '{name}'; there is none to choose from")
    shown = ", ".join(ordered[:limit]) + (", ..." if len(ordered) > limit else "")
    return FabenchError(f"unknown {kind} '{name}'; valid choices (closest first): {shown}")
