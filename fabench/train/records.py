"""A run's records on disk: atomic files, locks and the manifest (``runs.csv`` has its own
module, :mod:`fabench.train.runs_csv`).

Every file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a reader (or a killed process) never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from fabench.errors import FabenchError

MANIFEST = "manifest.json"
CURVES = "curves.csv"
CHECKPOINT = "last.pt"
RUN_LOCK = ".lock"


def _file_mode() -> int:
    """Mode of a new file under the current umask (what ``open`` would create)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file, then move it onto ``path`` in one step.

    ``path`` holds either its old or its new content at every moment, even if the process
    is killed while writing.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600 files; results are meant to be shared
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def write_manifest(run_dir: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write_bytes(run_dir / MANIFEST, text.encode())


def read_manifest(run_dir: Path) -> dict | None:
    """The run's manifest, or None when there is none (or it cannot be parsed)."""
    try:
        return json.loads((run_dir / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def _same_file(handle, path: Path) -> bool:
    """True while ``path`` still names the file ``handle`` has open (not removed or replaced)."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True, remove: bool = False) -> Iterator[bool]:
    """Hold an exclusive ``fcntl`` lock on ``path`` (created if needed); yields False if busy.

    ``remove``: delete the file when done, so no empty lock files stay behind. That is safe
    because a lock is only taken on the file ``path`` still names: a process that locked a file
    another one removed meanwhile starts again on the new file.
    """
    while True:
        handle = open(path, "a")  # noqa: SIM115 (closed below, on every path)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            yield False
            return
        if _same_file(handle, path):
            break
        handle.close()
    try:
        yield True
    finally:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its closest existing ancestor (where it would be created)."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def check_output_file(path: Path, option: str) -> None:
    """Fail early, with one line, if a file cannot be written at ``path`` (given by ``option``)."""
    if path.is_dir():
        raise FabenchError(f"{option} {path} is a folder; give a file path inside it")
    probe = nearest_existing(path.parent)
    if not probe.is_dir():
        raise FabenchError(f"{option} {path} cannot be created: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise FabenchError(f"{option} {path} cannot be written: {probe} is not writable")
