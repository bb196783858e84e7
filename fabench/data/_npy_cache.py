"""A split converted once to plain ``.npy`` files, read back as a memory map.

A split that is streamed (see :mod:`fabench.data._placement`) must be readable image by image
without decompressing anything. The first time it is needed, its source files are read one at
a time and appended to ``<split>-images.npy`` (uint8 ``[N, C, H, W]``) and
``<split>-labels.npy`` (int64 ``[N]``); peak memory is one source file, not the split.

Where: ``$FABENCH_CACHE_DIR/<dataset>/`` when that variable is set, else ``.fabench-cache/``
in the folder the source files were found in. A folder that cannot be written is a one-line
error naming the variable.

Trust: the files are written under temporary names and renamed when complete, and
``<split>.json`` (the stamp: the sources' names, sizes and modification times, and the files'
shapes and sizes) is written last. A split without a stamp matching its sources today is
converted again, so neither an interrupted conversion nor changed sources are ever read. A
stamped file of the wrong size (truncated, or replaced) is a one-line error. One process
converts at a time (an ``flock`` on ``<split>.lock``); others wait and then read its files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fabench.data._placement import gb, map_npy, note
from fabench.errors import FabenchError

CACHE_VARIABLE = "FABENCH_CACHE_DIR"
CACHE_FOLDER = ".fabench-cache"
FORMAT = 1
#: flock errors of file systems without working locks (NFS without a lock daemon, Lustre)
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP}

Reader = Callable[[Path], tuple[np.ndarray, np.ndarray]]


def cache_folder(source_root: Path, dataset: str) -> Path:
    """Where ``dataset``'s converted splits live (see the module docstring)."""
    chosen = os.environ.get(CACHE_VARIABLE, "").strip()
    return Path(chosen).expanduser() / dataset if chosen else source_root / CACHE_FOLDER


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _unwritable(folder: Path, err: OSError) -> FabenchError:
    return FabenchError(f"cannot write the data cache in {folder} ({_one_line(err)}); set "
                        f"{CACHE_VARIABLE} to a writable folder with room for it")


def _sources_key(sources: list[Path]) -> list[list]:
    """Name (with its folder's), size and modification time of each source file: what the
    stamp must match. No absolute path, so a moved data folder keeps its cache."""
    key = []
    for path in sources:
        stat = path.stat()
        key.append([f"{path.parent.name}/{path.name}", stat.st_size, stat.st_mtime_ns])
    return key


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path``; without working locks, go on unlocked."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            note(f"waiting for another process converting into {path.parent}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                raise
        yield


class SplitCache:
    """One split's converted files in ``folder``, named ``<split>-images.npy`` and so on."""

    def __init__(self, folder: Path, split: str, label: str) -> None:
        self.folder = folder
        self.label = label
        self.images = folder / f"{split}-images.npy"
        self.labels = folder / f"{split}-labels.npy"
        self.stamp = folder / f"{split}.json"
        self.lock = folder / f"{split}.lock"
        self.temporary = [path.with_name(path.name + ".tmp") for path in (self.images, self.labels, self.stamp)]

    def _read_stamp(self) -> dict | None:
        try:
            return json.loads(self.stamp.read_text())
        except (OSError, ValueError):
            return None

    def valid(self, key: list[list]) -> dict | None:
        """The stamp, if it says the files were made from exactly these sources."""
        stamp = self._read_stamp()
        if stamp and stamp.get("format") == FORMAT and stamp.get("sources") == key:
            return stamp
        return None

    def _clear(self) -> None:
        """Remove the stamp first (so nothing half done is trusted), then the files and temps."""
        for path in (self.stamp, self.images, self.labels, *self.temporary):
            path.unlink(missing_ok=True)

    def convert(self, sources: list[Path], counts: list[int], shape: tuple[int, ...], read: Reader,
                key: list[list]) -> None:
        """Write the split from ``sources`` (``counts`` images each), one source at a time."""
        total = sum(counts)
        nbytes = total * int(np.prod(shape))
        self._clear()
        free = shutil.disk_usage(self.folder).free
        if nbytes + total * 8 > free:
            raise FabenchError(f"the {self.label} needs {gb(nbytes)} in {self.folder}, which has {gb(free)} "
                               f"free; set {CACHE_VARIABLE} to a folder with room for it")
        files = f"{len(sources)} file{'s' if len(sources) > 1 else ''}"
        note(f"converting the {self.label} ({files}) once to {self.images} ({gb(nbytes)})")
        began = time.monotonic()
        labels = np.empty(total, dtype=np.int64)
        images_tmp, labels_tmp, stamp_tmp = self.temporary
        with open(images_tmp, "wb") as handle:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": (total, *shape)}
            np.lib.format.write_array_header_1_0(handle, header)
            start = 0
            for path, count in zip(sources, counts, strict=True):
                data, y = read(path)
                if len(y) != count or data.shape[1:] != shape:
                    raise FabenchError(f"{path}: changed while it was converted; run again")
                handle.write(np.ascontiguousarray(data).data)
                labels[start:start + count] = y
                start += count
            handle.flush()
            os.fsync(handle.fileno())
        with open(labels_tmp, "wb") as handle:
            np.save(handle, labels)
        os.replace(images_tmp, self.images)
        os.replace(labels_tmp, self.labels)
        stamp = {"format": FORMAT, "sources": key, "shape": [total, *shape],
                 "images_bytes": self.images.stat().st_size, "labels_bytes": self.labels.stat().st_size}
        stamp_tmp.write_text(json.dumps(stamp, indent=1))
        os.replace(stamp_tmp, self.stamp)
        seconds = time.monotonic() - began
        note(f"converted the {self.label} in {seconds:.0f} s ({nbytes / 1e6 / max(seconds, 1e-9):.0f} MB/s)")

    def open(self, stamp: dict) -> tuple[Tensor, Tensor]:
        """The stamped files: images memory-mapped, labels in memory; a damaged file is an error."""
        for path, recorded in ((self.images, stamp["images_bytes"]), (self.labels, stamp["labels_bytes"])):
            size = path.stat().st_size if path.exists() else 0
            if size != recorded:
                raise FabenchError(f"cache file {path} is {size} bytes, {recorded} when it was written "
                                   f"(truncated or replaced); delete {self.stamp} to convert the split again")
        try:
            images = map_npy(self.images)
            labels = torch.from_numpy(np.load(self.labels, allow_pickle=False))
        except (OSError, ValueError) as err:
            raise FabenchError(f"cannot read the cache in {self.folder} ({_one_line(err)}); delete {self.stamp} "
                               "to convert the split again") from None
        if list(images.shape) != stamp["shape"] or images.dtype != torch.uint8 or labels.shape != images.shape[:1]:
            raise FabenchError(f"cache file {self.images} holds {images.dtype} {tuple(images.shape)}, not "
                               f"{stamp['shape']}; delete {self.stamp} to convert the split again")
        return images, labels


def _convert_locked(cache: SplitCache, sources: list[Path], counts: list[int], shape: tuple[int, ...],
                   read: Reader, key: list[list]) -> dict:
    """Convert under the split's lock, unless another process did meanwhile; the new stamp."""
    with _locked(cache.lock):
        stamp = cache.valid(key)
        if stamp is not None:
            return stamp
        try:
            cache.convert(sources, counts, shape, read, key)
            if _sources_key(sources) != key:
                raise FabenchError(f"the {cache.label}'s source files changed while they were converted; "
                                   "run again")
        except BaseException:
            cache._clear()
            raise
        return cache.valid(key)


def cached_split(folder: Path, split: str, label: str, sources: list[Path], counts: list[int],
                 shape: tuple[int, ...], read: Reader) -> tuple[Tensor, Tensor]:
    """``split``'s images (memory-mapped) and labels, converting ``sources`` first unless a
    stamp matches them (a stamped cache is read without writing anything, so it may be
    read-only). ``label`` names the split in messages."""
    cache = SplitCache(folder, split, label)
    key = _sources_key(sources)
    stamp = cache.valid(key)
    if stamp is None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            stamp = _convert_locked(cache, sources, counts, shape, read, key)
        except OSError as err:
            raise _unwritable(folder, err) from None
    return cache.open(stamp)
