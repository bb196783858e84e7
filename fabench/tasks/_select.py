"""Choosing a subset of a grid's cells with fnmatch patterns on its axes."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from fabench.tasks._spec import Cell


def _matches(value: object, patterns: Sequence[str] | None) -> bool:
    """True if no patterns are given or ``value`` matches any of them."""
    return not patterns or any(fnmatch.fnmatchcase(str(value), p) for p in patterns)


def select_cells(
    cells: Sequence[Cell],
    *,
    rule: Sequence[str] | None = None,
    arch: Sequence[str] | None = None,
    dataset: Sequence[str] | None = None,
    seed: Sequence[str] | None = None,
    variant: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[Cell]:
    """The cells whose axes match every given filter (patterns of one axis are OR-ed), in order.

    ``limit`` keeps the first N of them. Rule patterns match the whole spec, so ``'fa-usf*'``
    also selects ``fa-usf+const``.
    """
    chosen = [
        c for c in cells
        if _matches(c.rule, rule) and _matches(c.arch, arch) and _matches(c.dataset, dataset)
        and _matches(c.seed, seed) and _matches(c.variant or "", variant)
    ]
    return chosen[:limit] if limit is not None else chosen
