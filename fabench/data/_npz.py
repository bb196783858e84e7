"""Reading datasets from ``.npz`` files (the embedded samples and any user file), validated.

Expected keys: ``x_train``, ``y_train``, ``x_test``, ``y_test``; optionally ``classes`` (a
unicode array of class names). Images are uint8, NHWC with 1 or 3 channels, or NHW for one
channel, and square. Labels are non-negative integers, one per image. A file with only
``x_test`` and ``y_test`` is an evaluation-only set: its training split is empty.

Every problem (missing file, not a zip, truncated member, wrong keys, dtypes or shapes, labels
out of range) becomes a single-line FabenchError naming the file and what was expected.
"""

from __future__ import annotations

import contextlib
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fabench.data._dataset import Splits
from fabench.errors import FabenchError

EXPECTED = (
    "expected a numpy .npz with uint8 images x_train, x_test (NHWC with 1 or 3 channels, or NHW) "
    "and integer labels y_train, y_test (x_test, y_test alone = evaluation only)"
)
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _read_arrays(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays fabench reads from the file, and the names of every array the file holds."""
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        arrays = {
            key: archive[key] for key in ("x_train", "y_train", "x_test", "y_test") if key in keys
        }
        if "classes" in keys:
            # an object array would need pickle: then ignore the names and keep the data
            with contextlib.suppress(ValueError):
                arrays["classes"] = archive["classes"]
    return arrays, sorted(keys)


def _images(x: np.ndarray, key: str, path: Path) -> Tensor:
    if x.dtype != np.uint8:
        raise FabenchError(f"{path}: {key} must be uint8 pixels 0-255, got {x.dtype}; {EXPECTED}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    else:
        raise FabenchError(f"{path}: {key} has shape {x.shape}; {EXPECTED}")
    if x.shape[2] != x.shape[3]:
        raise FabenchError(
            f"{path}: {key} images are {x.shape[2]}x{x.shape[3]}; fabench needs square images"
        )
    return torch.from_numpy(np.ascontiguousarray(x))


def _labels(y: np.ndarray, key: str, count: int, path: Path) -> Tensor:
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(y) != count:
        raise FabenchError(
            f"{path}: {key} must be {count} integer labels (one per image), got {y.dtype} {y.shape}"
        )
    if count and y.min() < 0:
        raise FabenchError(f"{path}: {key} contains negative labels")
    return torch.from_numpy(y.astype(np.int64))


def _class_names(arrays: dict, num_labels: int, path: Path) -> tuple[tuple[str, ...], int]:
    """Class names (if stored) and the number of classes they or the labels imply."""
    if "classes" not in arrays:
        return (), num_labels
    names = tuple(str(name) for name in np.asarray(arrays["classes"]).reshape(-1))
    if num_labels > len(names):
        raise FabenchError(
            f"{path}: labels reach {num_labels - 1} but only {len(names)} classes are named"
        )
    return names, len(names)


def _check_label_range(y_train: Tensor, y_test: Tensor, named: bool, path: Path) -> None:
    """Without class names, labels must be 0..K-1 with every class present somewhere.

    A label far outside the others (a 99 in a 10-class file) would otherwise make a 100-class
    model in silence; a file whose classes are really sparse can name them in ``classes``.
    """
    if named:
        return
    present = torch.unique(torch.cat([y_train, y_test]))
    missing = int(present.max()) + 1 - len(present)
    if missing:
        top = int(present.max())
        which = "y_train" if len(y_train) and int(y_train.max()) == top else "y_test"
        raise FabenchError(f"{path}: {which} holds label {top} but {missing} of the classes 0..{top} have no image; "
                           "labels must be 0..K-1 (or add a 'classes' array naming all K classes)")


def _splits(arrays: dict[str, np.ndarray], path: Path, held: list[str]) -> Splits:
    if "x_test" not in arrays or "y_test" not in arrays:
        raise FabenchError(f"{path}: missing x_test/y_test (the file holds {', '.join(held) or 'no arrays'}); {EXPECTED}")
    if ("x_train" in arrays) != ("y_train" in arrays):
        raise FabenchError(f"{path}: x_train and y_train must come together; {EXPECTED}")
    x_test = _images(arrays["x_test"], "x_test", path)
    if x_test.shape[0] == 0:
        raise FabenchError(f"{path}: x_test is empty")
    y_test = _labels(arrays["y_test"], "y_test", x_test.shape[0], path)
    if "x_train" in arrays:
        x_train = _images(arrays["x_train"], "x_train", path)
        y_train = _labels(arrays["y_train"], "y_train", x_train.shape[0], path)
    else:
        x_train = torch.empty((0, *x_test.shape[1:]), dtype=torch.uint8)
        y_train = torch.empty(0, dtype=torch.int64)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise FabenchError(
            f"{path}: train images are {tuple(x_train.shape[1:])} but test images {tuple(x_test.shape[1:])} (C, H, W)"
        )
    num_labels = int(max(y_train.max() if len(y_train) else 0, y_test.max())) + 1
    classes, num_classes = _class_names(arrays, num_labels, path)
    _check_label_range(y_train, y_test, bool(classes), path)
    return Splits(x_train, y_train, x_test, y_test, num_classes, classes)


def read_npz(path: str | Path) -> Splits:
    """Read and validate a dataset ``.npz``; raise a one-line FabenchError on any problem."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FabenchError(f"dataset file {path} does not exist; {EXPECTED}")
    try:
        arrays, held = _read_arrays(path)
    except _READ_ERRORS as err:
        raise FabenchError(
            f"cannot read dataset file {path} ({_one_line(err)}); {EXPECTED}"
        ) from None
    return _splits(arrays, path, held)
