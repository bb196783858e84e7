"""Downsampled ImageNet (``imagenet16``, ``imagenet32``, ``imagenet64``) from its official files.

Source: Chrabaszcz, Loshchilov & Hutter, "A Downsampled Variant of ImageNet as an Alternative
to the CIFAR datasets", arXiv:1707.08819 (2017); files from image-net.org's download page
("Downsampled ImageNet", npz format), made by the authors' scripts
(github.com/PatrykChrabaszcz/Imagenet32_Scripts). Every ImageNet-1k training image (1,281,167)
and validation image (50,000), 1,000 classes, box-resized to 16, 32 or 64 pixels.

Files, as distributed: ``train_data_batch_1`` … ``train_data_batch_10`` and ``val_data``, each
a numpy ``.npz`` (with or without the ``.npz`` suffix) holding ``data``, an ``N × 3·s·s`` uint8
array whose rows are one image each in channel-major order (all red pixels row by row, then
green, then blue), and ``labels``, ``N`` class numbers from 1 to 1000; training files also hold
``mean``, the mean image, which fabench does not need. They are looked for in
``DATA_DIR/imagenet<s>``, ``DATA_DIR/Imagenet<s>`` or ``DATA_DIR`` itself, directly or one
folder down (the official archives unpack to ``Imagenet64_train_part1_npz/`` and the like).

Rows reshape to ``[N, 3, s, s]`` without reordering; labels become 0–999. A split that fits
in memory is held as a uint8 tensor like every in-memory dataset (the 64 px training split is
15.7 GB), so the device loader serves it from device memory. One that does not (or every one,
with ``FABENCH_DATA_STREAM=always``) is converted once to a ``.npy`` file
(:mod:`fabench.data._npy_cache`) and streamed from its memory map.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from fabench.data._dataset import Splits
from fabench.data._fingerprint import tree_fingerprint
from fabench.data._npy_cache import CACHE_FOLDER, CACHE_VARIABLE, cache_folder, cached_split
from fabench.data._placement import gb, note, stream_from_disk
from fabench.errors import FabenchError

SIDES = (16, 32, 64)
NUM_CLASSES = 1000
TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
VAL_FILE = "val_data"
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def expected(side: int) -> str:
    """What the files should be, for error messages."""
    return (f"expected Downsampled ImageNet {side}x{side} in npz format (image-net.org): "
            f"train_data_batch_1..10 and val_data, each with 'data' (N x {3 * side * side} uint8, "
            "channel-major) and 'labels' (1..1000)")


def _roots(data_dir: Path, side: int) -> list[Path]:
    return [data_dir / f"imagenet{side}", data_dir / f"Imagenet{side}", data_dir]


def _find(root: Path, name: str) -> Path | None:
    """``root``'s file ``name`` (or ``name.npz``), directly or one folder down."""
    for pattern in (name, f"{name}.npz", f"*/{name}", f"*/{name}.npz"):
        found = sorted(path for path in root.glob(pattern) if path.is_file())
        if found:
            return found[0]
    return None


def _locate(data_dir: str | Path, side: int) -> tuple[Path, list[Path], Path]:
    """The folder the files were found in, the ten training files and the validation file."""
    base = Path(data_dir).expanduser()
    for root in _roots(base, side):
        if not root.is_dir():
            continue
        found = {name: _find(root, name) for name in (*TRAIN_FILES, VAL_FILE)}
        if not any(found.values()):
            continue
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise FabenchError(f"imagenet{side}: {root} lacks {', '.join(missing)}; {expected(side)}")
        return root, [found[name] for name in TRAIN_FILES], found[VAL_FILE]
    raise FabenchError(f"imagenet{side} not found in {base}/imagenet{side} or {base}; {expected(side)}; "
                       "pass --data-dir")


def find_files(data_dir: str | Path, side: int) -> tuple[list[Path], Path]:
    """The ten training files and the validation file; a one-line FabenchError naming what is missing."""
    _, train, val = _locate(data_dir, side)
    return train, val


def _cache_folders() -> frozenset[str]:
    """The folders a fingerprint of the data leaves out: every ``.fabench-cache``, and
    ``FABENCH_CACHE_DIR`` should it lie inside the data folder, so that converting a split
    changes no run id."""
    chosen = os.environ.get(CACHE_VARIABLE, "").strip()
    return frozenset({CACHE_FOLDER, *([os.path.realpath(os.path.expanduser(chosen))] if chosen else [])})


def files_fingerprint(data_dir: str | Path, side: int) -> str | None:
    """Name, size and modification time of the folders holding the files (hashing 12 GB per run
    id would cost more than a short run); None when the files are not there (loading says so)."""
    try:
        train, val = find_files(data_dir, side)
    except FabenchError:
        return None
    folders = sorted({str(path.parent.resolve()) for path in (*train, val)})
    return " ".join(tree_fingerprint(folder, _cache_folders()) for folder in folders)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _check_keys(archive, path: Path, side: int) -> None:
    held = sorted(archive.files)
    if "data" not in held or "labels" not in held:
        raise FabenchError(f"{path}: holds {', '.join(held) or 'no arrays'}, not data and labels; {expected(side)}")


def read_batch(path: Path, side: int) -> tuple[np.ndarray, np.ndarray]:
    """One file's images ``[N, 3, s, s]`` uint8 and labels 0..999, validated."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            _check_keys(archive, path, side)
            data, labels = archive["data"], archive["labels"]
    except _READ_ERRORS as err:
        raise FabenchError(f"cannot read {path} ({_one_line(err)}); {expected(side)}") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * side * side:
        raise FabenchError(f"{path}: data is {data.dtype} {data.shape}; {expected(side)}")
    labels = np.asarray(labels).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer) or len(labels) != len(data):
        raise FabenchError(f"{path}: labels are {labels.dtype} {labels.shape} for {len(data)} images; "
                           f"{expected(side)}")
    if len(labels) and (labels.min() < 1 or labels.max() > NUM_CLASSES):
        raise FabenchError(f"{path}: labels run {labels.min()}..{labels.max()}; Downsampled ImageNet's are "
                           f"1..{NUM_CLASSES}")
    return data.reshape(-1, 3, side, side), labels.astype(np.int64) - 1


def _count(path: Path, side: int) -> int:
    """How many images ``path`` holds, from its labels alone (cheap: the images stay on disk)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            _check_keys(archive, path, side)
            return int(np.asarray(archive["labels"]).size)
    except _READ_ERRORS as err:
        raise FabenchError(f"cannot read {path} ({_one_line(err)}); {expected(side)}") from None


def _stack(paths: list[Path], counts: list[int], side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``paths`` into one preallocated tensor: the whole split plus one file in memory at
    most, not two copies of the split."""
    total = sum(counts)
    images = torch.empty((total, 3, side, side), dtype=torch.uint8)
    labels = torch.empty(total, dtype=torch.int64)
    start = 0
    for path in paths:
        data, y = read_batch(path, side)
        if start + len(y) > total:
            raise FabenchError(f"{path}: changed while it was read; read it again")
        images[start:start + len(y)] = torch.from_numpy(data)
        labels[start:start + len(y)] = torch.from_numpy(y)
        start += len(y)
    return images[:start], labels[:start]


def _read_split(split: str, paths: list[Path], side: int, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One split, held in memory, or converted once and memory-mapped when streamed."""
    counts = [_count(path, side) for path in paths]
    per_image = 3 * side * side
    nbytes = sum(counts) * per_image
    stream, why = stream_from_disk(nbytes, max(counts) * per_image)
    if not stream:
        return _stack(paths, counts, side)
    folder = cache_folder(root, f"imagenet{side}")
    label = f"imagenet{side} {split} split"
    images, labels = cached_split(folder, split, label, paths, counts, (3, side, side),
                                  lambda path: read_batch(path, side))
    note(f"{label} ({gb(nbytes)}) memory-mapped from {folder}, not read into memory ({why})")
    return images, labels


def read_downsampled(data_dir: str | Path, side: int) -> Splits:
    """Both splits of Downsampled ImageNet at ``side`` pixels, as uint8 NCHW tensors (held in
    memory, or memory-mapped when streamed)."""
    if side not in SIDES:
        raise FabenchError(f"Downsampled ImageNet comes at {', '.join(map(str, SIDES))} pixels, not {side}")
    root, train, val = _locate(data_dir, side)
    x_train, y_train = _read_split("train", train, side, root)
    x_test, y_test = _read_split("val", [val], side, root)
    if not len(x_test):
        raise FabenchError(f"{val}: the validation file holds no images; {expected(side)}")
    return Splits(x_train, y_train, x_test, y_test, num_classes=NUM_CLASSES)
