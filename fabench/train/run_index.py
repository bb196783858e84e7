"""Run records and ``results/runs.csv``, the index merged from them.

Each run folder holds its own record, ``record.csv``: the runs.csv header and the run's one
row, written atomically (a new file moved into place). The record is the truth; runs.csv is
an index of the records, merged so that tables read one file. No lock is needed for
correctness, which matters on cluster file systems where ``flock`` is missing or node-local:

- A writer writes its record, then merges it into the index (under the results folder's lock
  when the file system has one). Two writers without a lock may each rewrite the index from
  the same old copy, so one index can lack the other's row; never a record.
- Beside the index, ``.runs.csv.state.json`` names the index file it describes (by inode) and
  the record files (inode, size, modification time) that index holds. It is written before
  the new index is moved into place, so it either describes the current index exactly or
  names another inode and is ignored.
- A reader (:func:`refresh_index`) stats every record and merges those the state does not
  vouch for: new or rewritten records, or all of them when the index is missing, was replaced
  by a concurrent writer, or the state is gone. A stale or lost index heals on the next read.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from fabench.errors import FabenchError
from fabench.train import schema
from fabench.train.records import RECORD, TASK_NAME, atomic_write, atomic_write_bytes, file_lock
from fabench.train.schema import COLUMNS

RUNS_CSV = "runs.csv"
INDEX_STATE = f".{RUNS_CSV}.state.json"
INDEX_LOCK = f".{RUNS_CSV}.lock"
_RUN_ID_AT = COLUMNS.index("run_id")
_TASK_AT = COLUMNS.index("task")
#: How often a writer checks that runs.csv holds its record, merging it again if not.
MERGE_ATTEMPTS = 5


def _csv_bytes(records: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(records)
    # surrogateescape: bytes that are not UTF-8 are carried over as they are, never lost or fatal
    return buffer.getvalue().encode("utf-8", errors="surrogateescape")


def read_index(path: Path) -> tuple[list[list[str]], int | None]:
    """Records of an existing runs.csv (header excluded, each as written) and the file's inode.

    A foreign header is an error, never silently merged; the rows of an older schema's header
    come back upgraded (:func:`fabench.train.schema.upgrade_record`), so the next write upgrades
    the file in place. Records are kept as lists of fields so that a malformed one (which
    readers report) is carried over untouched, not repaired or lost.
    """
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            inode = os.fstat(handle.fileno()).st_ino
            records = list(csv.reader(handle))
    except FileNotFoundError:
        return [], None
    if records and not schema.known_header(records[0]):
        raise FabenchError(
            f"{path} has columns that differ from this fabench's runs.csv schema; "
            "move it aside (or use another --results-dir) and rerun"
        )
    return [schema.upgrade_record(tuple(records[0]), record) for record in records[1:]], inode


def row_fields(row: dict) -> list[str]:
    """A runs.csv row (from :func:`fabench.train.schema.make_row`) as the text of its fields."""
    return ["" if row[column] is None else str(row[column]) for column in COLUMNS]


# --- one run's record ----------------------------------------------------------------------------


def record_path(results_dir: Path, task: str, run_id: str) -> Path:
    """Where the record of run ``run_id`` of ``task`` lives; one line if either is not a folder name."""
    for what, name in (("task", task), ("run_id", run_id)):
        if not TASK_NAME.fullmatch(name):
            raise FabenchError(f"runs.csv row has {what} {name[:60]!r}, which is not a folder name")
    return Path(results_dir) / task / run_id / RECORD


def _signature(info: os.stat_result) -> list[int]:
    """What changes whenever a record is rewritten (atomic writes always make a new inode)."""
    return [info.st_ino, info.st_size, info.st_mtime_ns]


def write_record(results_dir: Path, fields: list[str]) -> tuple[str, list[int]]:
    """Write a run's record atomically in its folder; return its key (``task/run_id``) and signature."""
    path = record_path(results_dir, fields[_TASK_AT], fields[_RUN_ID_AT])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _csv_bytes([list(COLUMNS), fields]))
    return f"{fields[_TASK_AT]}/{fields[_RUN_ID_AT]}", _signature(os.stat(path))


def read_record(path: Path) -> list[str] | None:
    """The fields of a record file (upgraded to this schema), or None if it is not one."""
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            records = list(csv.reader(handle))
    except (OSError, csv.Error):
        return None
    if len(records) != 2 or not schema.known_header(records[0]) or len(records[1]) != len(records[0]):
        return None
    return schema.upgrade_record(tuple(records[0]), records[1])


def read_run_record(results_dir: Path, task: str, run_id: str) -> dict | None:
    """The row recorded in one run's folder, or None if it has no (readable) record."""
    try:
        fields = read_record(record_path(results_dir, task, run_id))
    except FabenchError:
        return None
    return dict(zip(COLUMNS, fields, strict=True)) if fields else None


def scan_records(results_dir: Path) -> dict[str, tuple[Path, list[int]]]:
    """Every record file under ``results_dir/<task>/<run_id>/``: key -> (path, signature)."""
    found: dict[str, tuple[Path, list[int]]] = {}
    try:
        tasks = sorted(os.scandir(results_dir), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return found
    for task in tasks:
        if not TASK_NAME.fullmatch(task.name) or not task.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(OSError):
            for run in sorted(os.scandir(task.path), key=lambda e: e.name):
                if not TASK_NAME.fullmatch(run.name):
                    continue
                path = Path(run.path) / RECORD
                try:
                    info = os.stat(path, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if stat.S_ISREG(info.st_mode):
                    found[f"{task.name}/{run.name}"] = (path, _signature(info))
    return found


# --- the index -----------------------------------------------------------------------------------


def _load_state(results_dir: Path) -> tuple[int | None, dict[str, list[int]]]:
    """The index inode the state describes and the record signatures that index holds."""
    try:
        state = json.loads((results_dir / INDEX_STATE).read_text())
        return int(state["index_inode"]), {str(k): list(v) for k, v in dict(state["records"]).items()}
    except (OSError, ValueError, TypeError, KeyError):
        return None, {}


def _write_state(results_dir: Path, index_inode: int, records: dict[str, list[int]]) -> None:
    text = json.dumps({"index_inode": index_inode, "records": records}, sort_keys=True)
    atomic_write_bytes(results_dir / INDEX_STATE, text.encode())


def merge_records(results_dir: Path, updates: dict[str, tuple[list[str], list[int]]]) -> None:
    """Put records (key -> (fields, signature)) into runs.csv, replacing rows of the same run_id."""
    with file_lock(results_dir / INDEX_LOCK):
        _write_merged(results_dir, updates, read_index(results_dir / RUNS_CSV))


def _write_merged(results_dir: Path, updates: dict[str, tuple[list[str], list[int]]],
                  index: tuple[list[list[str]], int | None]) -> None:
    """Write runs.csv as ``index`` (its records and inode, as read) with ``updates`` merged in."""
    state_inode, held = _load_state(results_dir)
    kept, inode = index
    held = dict(held) if inode is not None and inode == state_inode else {}
    ids = {fields[_RUN_ID_AT] for fields, _ in updates.values()}
    kept = [r for r in kept if len(r) <= _RUN_ID_AT or r[_RUN_ID_AT] not in ids]
    held.update({key: signature for key, (_, signature) in updates.items() if signature})
    rows = [list(COLUMNS), *kept, *(fields for fields, _ in updates.values())]
    atomic_write(results_dir / RUNS_CSV, lambda handle: handle.write(_csv_bytes(rows)),
                 before_replace=lambda tmp: _write_state(results_dir, os.stat(tmp).st_ino, held))


def record_run(results_dir: Path, row: dict) -> None:
    """Write one run's record in its folder, then merge it into runs.csv (replacing its old row).

    A row whose task or run_id is not a folder name (no run of fabench has one) has no run
    folder: it goes into runs.csv only.
    """
    results_dir = Path(results_dir)
    fields = row_fields(row)
    with file_lock(results_dir / INDEX_LOCK):
        index = read_index(results_dir / RUNS_CSV)  # a foreign runs.csv is refused before anything is written
        if not (TASK_NAME.fullmatch(fields[_TASK_AT]) and TASK_NAME.fullmatch(fields[_RUN_ID_AT])):
            _write_merged(results_dir, {f"{fields[_TASK_AT]}/{fields[_RUN_ID_AT]}": (fields, [])}, index)
            return
        key, signature = write_record(results_dir, fields)
        _write_merged(results_dir, {key: (fields, signature)}, index)
    _confirm_merged(results_dir, record_path(results_dir, fields[_TASK_AT], fields[_RUN_ID_AT]), key)


def _confirm_merged(results_dir: Path, path: Path, key: str) -> None:
    """Merge the run's record again while runs.csv lacks it (a concurrent merge without a working
    lock wrote an index from an older copy). Readers heal whatever is still missing afterwards."""
    for attempt in range(MERGE_ATTEMPTS):
        with file_lock(results_dir / INDEX_LOCK):
            index = read_index(results_dir / RUNS_CSV)
            fields, info = read_record(path), os.stat(path)
            if fields is None or fields in index[0]:
                return
            _write_merged(results_dir, {key: (fields, _signature(info))}, index)
        time.sleep(random.uniform(0.0, 0.01 * (attempt + 1)))  # out of step with the other writers


@dataclass
class Refresh:
    """What :func:`refresh_index` found: the records it merged (key -> fields) and bad record files."""

    merged: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    written: bool = False


def _pending(results_dir: Path, found: dict[str, tuple[Path, list[int]]], full: bool) -> dict:
    """The records the index is not known to hold: all of them when ``full`` or the state is stale."""
    state_inode, held = _load_state(results_dir)
    try:
        inode = os.stat(results_dir / RUNS_CSV).st_ino
    except FileNotFoundError:
        inode = None
    if full or inode is None or inode != state_inode:
        held = {}
    return {key: entry for key, entry in found.items() if held.get(key) != entry[1]}


def refresh_index(results_dir: Path, *, full: bool = False, best_effort: bool = True) -> Refresh:
    """Merge into runs.csv every record it is not known to hold (every record when ``full``).

    With ``best_effort`` a results folder that cannot be written leaves the index as it is, and
    the caller overlays :attr:`Refresh.merged` on what it reads; otherwise the error is raised.
    """
    results_dir = Path(results_dir)
    refresh = Refresh()
    updates = {}
    for key, (path, signature) in _pending(results_dir, scan_records(results_dir), full).items():
        fields = read_record(path)
        if fields is None:
            refresh.problems.append(f"{path}: not a run record (runs.csv header and one row); skipped")
        elif f"{fields[_TASK_AT]}/{fields[_RUN_ID_AT]}" != key:
            refresh.problems.append(f"{path}: records run {fields[_TASK_AT]}/{fields[_RUN_ID_AT]}, "
                                    "not the run of its folder; skipped")
        else:
            updates[key] = (fields, signature)
            refresh.merged[key] = fields
    if updates:
        with contextlib.suppress(*((OSError,) if best_effort else ())):
            merge_records(results_dir, updates)
            refresh.written = True
    return refresh
