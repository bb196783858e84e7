"""A run's records on disk: atomic files, locks and the manifest (the run's record and
``runs.csv`` have their own modules, :mod:`fabench.train.run_index` and :mod:`fabench.train.runs_csv`).

Every file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a reader (or a killed process) never sees half a file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from fabench.errors import FabenchError

MANIFEST = "manifest.json"
CURVES = "curves.csv"
CHECKPOINT = "last.pt"
RUN_LOCK = ".lock"
#: The run's own runs.csv row, with its header (:mod:`fabench.train.run_index`).
RECORD = "record.csv"
#: Files fabench writes in a run folder; none may be a symbolic link.
RUN_FILES = (MANIFEST, CURVES, CHECKPOINT, RUN_LOCK, RECORD)
#: A run id: the first 12 hex digits of the hash of its identity (``RunConfig.run_id``).
RUN_ID = re.compile(r"[0-9a-f]{12}")
#: A task name: it names a folder under the results folder, so no separators and no leading dot.
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: The manifest fields fabench reads back, with the type each must have, and those it cannot do without.
MANIFEST_TYPES = {"run_id": str, "status": str, "config": dict, "timings": dict, "data": dict, "progress": dict,
                  "resumed_at": list, "evaluations": list, "checkpoint_sha256": list}
MANIFEST_REQUIRED = ("run_id", "status", "config", "timings")
#: Errors of a write that the user fixes on the file system (permissions, a read-only or immutable file).
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
#: Errors of ``flock`` on a file system that has no working locks (NFS without a lock daemon:
#: ENOLCK; Lustre mounted without ``flock``: ENOSYS or EOPNOTSUPP).
NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)


def _file_mode() -> int:
    """Mode of a new file under the current umask (what ``open`` would create)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def atomic_write(path: Path, write: Callable[[BinaryIO], object],
                 before_replace: Callable[[Path], object] | None = None) -> None:
    """Call ``write(file)`` on a temporary file, then move it onto ``path`` in one step.

    ``path`` holds either its old or its new content at every moment, even if the process
    is killed while writing. ``before_replace(tmp)`` is called on the complete temporary file
    just before the move (e.g. to record its checksum). The file gets the mode ``open`` would
    give it under the umask, whatever ``path`` is (a symbolic link there is replaced, not followed).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600 files; results are meant to be shared
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace(Path(tmp))
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
    """The run's manifest, or None when there is none (or it is not a JSON object)."""
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: bad JSON or not UTF-8
        return None
    return manifest if isinstance(manifest, dict) else None


def manifest_problem(manifest: object) -> str | None:
    """Why ``manifest`` is not a manifest fabench wrote (missing or mistyped fields, a bad run id), or None."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    missing = [name for name in MANIFEST_REQUIRED if name not in manifest]
    if missing:
        return f"no {', '.join(missing)}"
    for name, kind in MANIFEST_TYPES.items():
        if name in manifest and not isinstance(manifest[name], kind):
            return f"{name} is not a JSON {'object' if kind is dict else 'array' if kind is list else 'string'}"
    if not RUN_ID.fullmatch(manifest["run_id"]):
        return f"run_id {manifest['run_id'][:40]!r} is not 12 hex digits"
    return None


def load_manifest(run_dir: Path) -> dict | None:
    """The run's manifest, None if it has none; one line (FabenchError) if it is damaged or foreign.

    Every value fabench reads back from a manifest (the run id above all, which goes into
    curves.csv and runs.csv) is checked here, so a tampered run folder is refused, not trusted.
    """
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError as err:
        raise FabenchError(f"{path} is damaged ({err.__class__.__name__}); move the run folder aside "
                           "or rerun with --force") from None
    problem = manifest_problem(manifest)
    if problem:
        raise FabenchError(f"{path} is not a fabench manifest ({problem}); move the run folder aside "
                           "or rerun with --force")
    return manifest


def refuse_links(run_dir: Path) -> None:
    """Refuse, in one line, a run folder where a file fabench writes is a symbolic link.

    Writing through such a link would change a file outside the run folder (a run folder
    received from someone else may hold one).
    """
    for name in RUN_FILES:
        if (run_dir / name).is_symlink():
            raise FabenchError(f"{run_dir / name} is a symbolic link; fabench writes only real files in a run "
                               "folder (remove the link)")


def open_no_follow(path: Path, flags: int, mode: str) -> object:
    """``open(path, mode)`` with ``flags`` for ``os.open``, refusing a symbolic link at ``path`` in one line."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise FabenchError(f"{path} is a symbolic link; fabench writes only real files in a run folder "
                               "(remove the link)") from None
        raise
    return os.fdopen(fd, mode, newline="" if "b" not in mode else None)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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

    On a file system without working locks (:data:`NO_LOCKS`) it yields True holding nothing:
    every caller stays correct without the lock (runs.csv is an index rebuilt from the run
    folders' records); the lock only saves work.
    """
    while True:
        handle = open_no_follow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            yield False
            return
        except OSError as err:
            handle.close()
            if err.errno not in NO_LOCKS:
                raise
            handle = None
        if handle is None:
            yield True
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


def check_writable_file(path: Path, what: str) -> None:
    """Fail early, with one line, if existing file ``path`` cannot be opened for writing.

    A read-only or immutable ``runs.csv`` would otherwise fail only after training, leaving a
    finished run without its row.
    """
    if not path.exists():
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC))
    except OSError as err:
        raise FabenchError(f"{what} {path} cannot be written ({err.strerror}); make it writable or choose "
                           "another --results-dir") from None


def check_writable_folder(path: Path, what: str) -> None:
    """Fail early, with one line, if no file can be created in ``path`` (or where it would be created)."""
    probe = nearest_existing(path)
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise FabenchError(f"{what} {path} cannot be written: {probe} refuses new files ({err.strerror}); "
                           "make it writable or choose another --results-dir") from None


def mount_point(path: Path) -> Path:
    """The mount point of the file system that holds ``path`` (or would hold it)."""
    probe = nearest_existing(Path(os.path.abspath(path)))
    device = probe.stat().st_dev
    while probe.parent != probe and probe.parent.stat().st_dev == device:
        probe = probe.parent
    return probe


@contextlib.contextmanager
def disk_errors(where: Path) -> Iterator[None]:
    """Turn a full disk anywhere, or a refused write under ``where``, into one line (FabenchError)."""
    try:
        yield
    except OSError as err:
        if err.errno in _NO_SPACE:
            raise FabenchError(f"no space left on device {mount_point(where)} (writing under {where}); "
                               "free some space there and rerun") from None
        named = [Path(os.path.abspath(n)) for n in (err.filename, err.filename2) if isinstance(n, str)]
        inside = Path(os.path.abspath(where))
        if err.errno in _NOT_WRITABLE and any(inside == n or inside in n.parents for n in named):
            raise FabenchError(f"{named[-1]} cannot be written ({err.strerror}); make it writable or choose "
                               "another folder") from None
        raise
