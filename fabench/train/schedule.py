"""``--diagnostics off|epoch|N``: when a run calls its probe hooks (fabench.diagnostics).

``epoch`` probes at step 0 and after every epoch; ``N`` (a positive integer) does that and
also probes after every N-th optimizer step; ``off`` never probes.
"""

from __future__ import annotations

from dataclasses import dataclass

from fabench.errors import FabenchError


@dataclass(frozen=True)
class DiagnosticsSchedule:
    """Whether a run probes, and every how many optimizer steps (None: only at epoch ends)."""

    enabled: bool
    every_steps: int | None = None


def parse_diagnostics(value: str | int) -> DiagnosticsSchedule:
    """Read a ``--diagnostics`` value; anything but off, epoch or a positive integer is an error."""
    text = str(value).strip().lower()
    if text == "off":
        return DiagnosticsSchedule(False)
    if text == "epoch":
        return DiagnosticsSchedule(True)
    if text.isdigit() and int(text) >= 1:
        return DiagnosticsSchedule(True, int(text))
    raise FabenchError(f"--diagnostics must be off, epoch or a positive number of steps (e.g. 50), got '{value}'", setting="diagnostics")
