"""``curves.csv``: a run's learning curves as tidy rows, one measurement per row.

Columns: ``run_id, epoch, step, split, metric, layer, value, wall_time``. ``split`` is
``train``, ``test`` or ``eval:<dataset>``; ``layer`` is empty for whole-model metrics and
names a layer for per-layer diagnostics, which other features log through :meth:`CurveWriter.log`.
``step`` counts optimizer steps since the start of the run, ``wall_time`` is a Unix time.

Rows are appended and flushed before each checkpoint; on resume, rows logged after the
checkpoint's step are dropped (:meth:`CurveWriter.truncate_after`), so a run killed between
writing curves and saving its checkpoint does not end up with duplicated rows. The file is
never opened through a symbolic link (a run folder from elsewhere may hold one).
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

from fabench.train.records import atomic_write_bytes, open_no_follow

CURVE_COLUMNS = ("run_id", "epoch", "step", "split", "metric", "layer", "value", "wall_time")


class CurveWriter:
    """Appends tidy rows to one run's ``curves.csv``."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self._handle = None
        self._writer = None

    def _open(self) -> None:
        self._handle = open_no_follow(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, "a")
        self._writer = csv.writer(self._handle, lineterminator="\n")
        if os.fstat(self._handle.fileno()).st_size == 0:
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
        with open_no_follow(self.path, os.O_RDONLY, "r") as handle:
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
