"""One grid cell, run in whatever process runs it (the grid's own, a worker, a SLURM array task).

:func:`run_cell` calls :func:`fabench.train.run` with the diagnostics hooks of the cell's config,
turns an exception into a recorded ``failed`` outcome (crash isolation), and leaves alone a cell
that another process is training right now (``busy``) or finished meanwhile (``skipped``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fabench.tasks._spec import Cell
from fabench.train.schema import DONE_STATUSES


@dataclass
class CellOutcome:
    """What became of one cell in this invocation."""

    cell: Cell
    status: str
    error: str = ""
    top1: float | None = None
    seconds: float = 0.0


def run_dir(cell: Cell) -> Path:
    """The folder fabench.train uses for this cell's run."""
    return Path(cell.config.results_dir) / cell.config.task / cell.run_id


def _row_of(cell: Cell) -> dict | None:
    """The cell's current row: its run folder's record, else its runs.csv row (an earlier release's run)."""
    from fabench.train.run_index import read_run_record
    from fabench.train.runs_csv import read_runs

    results_dir = Path(cell.config.results_dir)
    record = read_run_record(results_dir, cell.config.task, cell.run_id)
    if record is not None or not (results_dir / "runs.csv").is_file():
        return record
    return next((r for r in read_runs(results_dir, refresh_records=False).rows if r["run_id"] == cell.run_id), None)


def record_failure(cell: Cell, error: str) -> None:
    """Write a ``failed`` row for a cell whose run raised before train recorded it, or whose process died.

    Uses fabench.train's own locked writer; never replaces a ``finished`` row (a worker that
    died after recording its result).
    """
    from fabench.train import schema
    from fabench.train.runs_csv import upsert_run_row

    row = _row_of(cell)
    if row is not None and row["status"] in DONE_STATUSES:
        return
    results_dir = Path(cell.config.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    config = {**cell.config.to_dict(), "run_id": cell.run_id}
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    metrics = {"status": "failed", "epochs_done": (row or {}).get("epochs_done", "")}
    upsert_run_row(results_dir, schema.make_row(config, metrics, {"error": error[:500], "finished_at": now}))


def busy_elsewhere(cell: Cell) -> bool:
    """True if another process holds this run's folder lock (another grid is training it)."""
    return run_dir_busy(run_dir(cell))


def run_dir_busy(folder: Path) -> bool:
    """True if a process holds the lock of the run folder ``folder`` (it is training that run)."""
    from fabench.train.records import RUN_LOCK, file_lock

    lock = folder / RUN_LOCK
    if not lock.is_file():
        return False
    with file_lock(lock, blocking=False, remove=True) as mine:
        return not mine


def _top1(row: dict) -> float | None:
    """The row's final top-1 accuracy as a float, or None if empty."""
    with contextlib.suppress(TypeError, ValueError):
        return float(row.get("final_top1"))
    return None


def run_cell(cell: Cell, *, force: bool, on_event: Callable[[dict], None] | None) -> CellOutcome:
    """Run one cell through fabench.train.run; an exception becomes a recorded ``failed`` outcome.

    fabench.train records failures that happen while training; one raised before (bad data
    folder, a model that does not fit in memory) leaves runs.csv untouched, so the grid writes
    the row. A cell another process is training right now is left alone (status ``busy``).
    """
    from fabench.diagnostics import run_hooks
    from fabench.train import run

    started = time.monotonic()
    if busy_elsewhere(cell):
        return CellOutcome(cell, "busy", "being trained by another process; skipped", None, 0.0)
    before = _row_of(cell)
    try:
        result = run(cell.config, force=force, on_event=on_event, hooks=run_hooks(cell.config))
    except KeyboardInterrupt:
        return CellOutcome(cell, "interrupted", "interrupted", None, time.monotonic() - started)
    except Exception as err:  # crash isolation: the grid records the error and goes on
        error = f"{type(err).__name__}: {err}".strip()
        if busy_elsewhere(cell):
            return CellOutcome(cell, "busy", "being trained by another process; skipped", None, 0.0)
        if _row_of(cell) == before:
            record_failure(cell, error)
        return CellOutcome(cell, "failed", error, None, time.monotonic() - started)
    row = result.row or {}
    if result.skipped:  # another grid on this folder finished it since this grid looked
        return CellOutcome(cell, "skipped", f"already {result.status} (by another process)", _top1(row), 0.0)
    return CellOutcome(cell, result.status, str(row.get("error", "") or ""), _top1(row), time.monotonic() - started)
