"""``results/runs.csv``: its writer and its reader, side by side.

Writer (:func:`upsert_run_row`): the run's record goes into its own folder, then into the
index runs.csv, one row per run_id (:mod:`fabench.train.run_index`). Concurrent runs of a grid,
on one machine or many, never lose, duplicate or tear a record, with or without a working
``flock``. Records that do not parse are carried over as they were (bytes that are not UTF-8
included), never repaired or lost.

Reader (:func:`read_runs`): first merges into the index the records it does not hold yet (a
lost or stale index heals here), then returns the rows checked against the schema
(:mod:`fabench.train.schema`); malformed, foreign or non-UTF-8 rows are reported with their line
and skipped, and the latest row of each run_id is kept. ``fabench table``, ``plot`` and the
grid read through it.
"""

from __future__ import annotations

import csv
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fabench._paths import display_path
from fabench.errors import FabenchError
from fabench.train import schema
from fabench.train.records import nearest_existing
from fabench.train.run_index import RUNS_CSV, Refresh, read_index, record_run, refresh_index

__all__ = ["RUNS_CSV", "RunsTable", "check_results_dir", "read_records", "read_runs", "upsert_run_row"]


def read_records(path: Path) -> list[list[str]]:
    """Records of an existing runs.csv, header excluded, each as written (older schemas upgraded)."""
    return read_index(path)[0]


def upsert_run_row(results_dir: Path, row: dict) -> None:
    """Record ``row`` in its run folder and in ``results_dir/runs.csv``, replacing the run's older row."""
    record_run(Path(results_dir), row)


def check_results_dir(results_dir: Path) -> None:
    """Fail early, with one line, if results cannot be written to ``results_dir``."""
    probe = nearest_existing(results_dir)
    if not probe.is_dir():
        raise FabenchError(f"results folder {results_dir} cannot be created: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise FabenchError(f"results folder {results_dir} is not writable ({err.strerror}); choose another --results-dir") from None
    read_records(results_dir / RUNS_CSV)


# --- reading, checked ---------------------------------------------------------------------------

#: Columns that must hold numbers when not empty.
NUMERIC_COLUMNS = (
    *schema.NUMERIC_CONFIG_COLUMNS, "epochs_done", "final_top1", "final_top5", "best_top1", "best_top5",
    "best_epoch", "best_val_top1", "best_val_epoch", "test_top1_at_best_val", "final_test_loss",
    "first_train_loss", "final_train_loss", "train_time_s", "images_per_s", "num_params",
)
#: Characters that stand for bytes that were not UTF-8 (Python's surrogateescape).
_NOT_UTF8 = re.compile("[\udc80-\udcff]")
#: Control characters (NUL included) that no value fabench writes holds; tab and line ends may
#: appear in an error message.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: Columns a finished (or unstable) row cannot leave empty.
FINISHED_REQUIRED = ("final_top1",)


@dataclass
class RunsTable:
    """The valid rows of a runs.csv (one per run_id, the latest) and the problems found."""

    path: Path
    rows: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def frame(self):
        """The rows as a pandas DataFrame with numeric columns converted."""
        import pandas as pd

        frame = pd.DataFrame(self.rows, columns=list(schema.COLUMNS))
        for column in NUMERIC_COLUMNS:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
        return frame


def _text_problem(record: list[str]) -> str | None:
    """Why a record's bytes are not text fabench wrote (not UTF-8, or a NUL or other control
    character), or None; such a row would show as a table block of its own."""
    if any(_NOT_UTF8.search(field) for field in record):
        return "is not UTF-8 text"
    for field_text in record:
        found = _CONTROL.search(field_text)
        if found:
            return f"holds control character U+{ord(found.group()):04X}"
    return None


def _row_problem(record: list[str]) -> str | None:
    """Why a record is not a valid runs.csv row of this schema, or None if it is."""
    if len(record) != len(schema.COLUMNS):
        return f"has {len(record)} fields, expected {len(schema.COLUMNS)}"
    row = dict(zip(schema.COLUMNS, record, strict=True))
    if row["schema_version"] != str(schema.SCHEMA_VERSION):
        return f"schema_version '{row['schema_version']}' is not {schema.SCHEMA_VERSION}"
    if not row["run_id"]:
        return "has no run_id"
    if row["status"] not in schema.STATUSES:
        return f"unknown status '{row['status']}' (expected one of {', '.join(schema.STATUSES)})"
    for column in NUMERIC_COLUMNS:
        text = row[column]
        if text == "":
            continue
        try:
            number = float(text)
        except ValueError:
            return f"column {column} should be a number, got '{text}'"
        if math.isinf(number):
            return f"column {column} is infinite"
    if row["status"] in schema.DONE_STATUSES:
        for column in FINISHED_REQUIRED:
            if row[column] == "":
                return f"is finished but has no {column}"
    return None


def read_runs(path: Path | str, *, refresh_records: bool = True) -> RunsTable:
    """Read and check a runs.csv; raise FabenchError if it is missing or of another schema.

    The index is first brought up to date with the run folders' records (rebuilt if it is
    lost); ``refresh_records=False`` reads the index file as it is.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RUNS_CSV
    refresh = None if refresh_records else Refresh()
    if not path.is_file() and refresh is None:  # a lost index is rebuilt from the run folders' records
        refresh = refresh_index(path.parent)
        if not path.is_file() and not refresh.merged:
            raise FabenchError(f"no results at {display_path(path)}; run `fabench grid TASK` or `fabench run` first, or pass --results-dir DIR")
    table = RunsTable(path)
    latest: dict[str, dict] = {}
    if path.is_file():
        _read_index_rows(path, table, latest)
    refresh = refresh or refresh_index(path.parent)  # after the header check: a foreign index is refused first
    table.problems += refresh.problems
    for key, record in refresh.merged.items():  # what the index missed, even where it cannot be written
        problem = _text_problem(record) or _row_problem(record)
        if problem:
            table.problems.append(f"{display_path(path.parent / key)}/record.csv: row {problem}; skipped")
        else:
            latest[record[schema.COLUMNS.index("run_id")]] = dict(zip(schema.COLUMNS, record, strict=True))
    table.rows = list(latest.values())
    return table


def _read_index_rows(path: Path, table: RunsTable, latest: dict[str, dict]) -> None:
    """Read the index's valid rows into ``latest`` (by run_id) and its bad ones into ``table.problems``."""
    # surrogateescape: a byte that is not UTF-8 spoils only its own row, reported below
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
        except csv.Error as err:
            raise FabenchError(f"{display_path(path)}:1: unreadable CSV header ({err})") from None
        if header is None:
            raise FabenchError(f"{display_path(path)} is empty; expected the runs.csv header")
        if not schema.known_header(header):
            raise FabenchError(
                f"{display_path(path)}:1: header does not match runs.csv schema version {schema.SCHEMA_VERSION} "
                "(written by another fabench version, or not a fabench runs.csv)"
            )
        line = reader.line_num
        while True:
            start = line + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                table.problems.append(f"{display_path(path)}:{start}: unreadable CSV ({err}); skipped")
                line = reader.line_num
                continue
            line = reader.line_num
            if not record:
                continue
            record = schema.upgrade_record(tuple(header), record)
            problem = _text_problem(record) or _row_problem(record)
            if problem:
                table.problems.append(f"{display_path(path)}:{start}: row {problem}; skipped")
                continue
            row = dict(zip(schema.COLUMNS, record, strict=True))
            latest[row["run_id"]] = row

