"""``curves.csv``: a run's learning curves as tidy rows, one measurement per row.

Columns: ``run_id, epoch, step, split, metric, layer, value, wall_time``. ``split`` is
``train``, ``test`` or ``eval:<dataset>``; ``layer`` is empty for whole-model metrics and
names a layer for per-layer diagnostics, which other features log through :meth:`CurveWriter.log`.
``step`` counts optimizer steps since the start of the run, ``wall_time`` is a Unix time.

Rows are appended and flushed before each checkpoint; on resume, rows logged after the
checkpoint's step are dropped (:meth:`CurveWriter.truncate_after`), so a run killed between
writing curves and saving its checkpoint does not end up with duplicated rows.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from fabench.train.records import atomic_write_bytes

CURVE_COLUMNS = ("run_id", "epoch", "step", "split", "metric", "layer", "value", "wall_time")


class CurveWriter:
    """Appends tidy rows to one run's ``curves.csv``."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self._handle = None
        self._writer = None

    def _open(self) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._handle = open(self.path, "a", newline="")  # noqa: SIM115 (kept open across log calls; see close)
        self._writer = csv.writer(self._handle, lineterminator="\n")
        if new:
            self._writer.writerow(CURVE_COLUMNS)

    def log(self, epoch: int, step: int, split: str, metric: str, value: float, layer: str = "") -> None:
        """Record one measurement (``value`` is converted with ``float``)."""
        if self._writer is None:
            self._open()
        self._writer.writerow((self.run_id, epoch, step, split, metric, layer, float(value), time.time()))

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = self._writer = None

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after optimizer step ``step`` (rewrites the file atomically)."""
        self.close()
        if not self.path.exists():
            return
        with open(self.path, newline="") as handle:
            rows = [r for r in csv.reader(handle)][1:]
        kept = [r for r in rows if len(r) == len(CURVE_COLUMNS) and int(r[2]) <= step]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows([CURVE_COLUMNS, *kept])
        atomic_write_bytes(self.path, buffer.getvalue().encode())

    def __enter__(self) -> CurveWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
