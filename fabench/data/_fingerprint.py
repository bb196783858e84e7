"""Fingerprints of dataset files, for run ids (:func:`fabench.data.dataset_identity`).

A run's id must change when its data does. Files fabench reads whole (``.npz``, torchvision's
MNIST files) are hashed by content, so a copy of the same data keeps its id; a folder tree of
images (ImageNet's 1.28 M JPEGs) is fingerprinted by each file's name, size and modification
time, as hashing it would take longer than a short run.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from pathlib import Path

_BLOCK = 1 << 20


def _hash_stream(handle, digest) -> str:
    for block in iter(lambda: handle.read(_BLOCK), b""):
        digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _cached_digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as handle:
        return _hash_stream(handle, hashlib.sha256())


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (cached per path, size and modification time)."""
    stat = path.stat()
    return _cached_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _cached_gunzip_digest(path: str, size: int, mtime_ns: int, md5: str) -> str | None:
    with open(path, "rb") as handle:
        if _hash_stream(handle, hashlib.md5(usedforsecurity=False)) != md5:
            return None
    with gzip.open(path, "rb") as handle:
        return _hash_stream(handle, hashlib.sha256())


def gunzip_digest(path: Path, md5: str) -> str | None:
    """sha256 of a ``.gz`` file's decompressed bytes if the file's md5 is ``md5``, else None."""
    try:
        stat = path.stat()
        return _cached_gunzip_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns, md5)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None


def content_fingerprint(files: list[Path], base: Path) -> str:
    """One sha256 over the names (relative to ``base``) and contents of ``files``."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path.relative_to(base).as_posix()}\0{file_digest(path)}\n".encode())
    return f"sha256:{digest.hexdigest()}"


@functools.lru_cache(maxsize=8)
def tree_fingerprint(root: str, skip: frozenset[str] = frozenset()) -> str:
    """One sha256 over the relative name, size and modification time of every file under ``root``,
    leaving out the folders in ``skip`` (given by name or by real path: a cache written beside the
    data must not change the data's fingerprint).

    Cached per process: a run's id must not change while it runs.
    """
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        if skip:
            dirs[:] = [name for name in dirs
                       if name not in skip and os.path.realpath(os.path.join(folder, name)) not in skip]
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            stat = os.stat(path)
            digest.update(f"{os.path.relpath(path, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return f"files:{digest.hexdigest()}"
