"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 from torchvision's files under ``data_dir``.

The files are read with torchvision's dataset classes (``download=False``). If they are missing,
one download is attempted unless the environment says not to (``FABENCH_OFFLINE=1``), with a
socket timeout so an unreachable network fails in seconds rather than hanging. When that fails
too, the user gets one line naming the directory fabench looked in and where the files come
from; no traceback.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import torch

from fabench.data._dataset import Splits
from fabench.data._fingerprint import content_fingerprint, file_digest, gunzip_digest
from fabench.errors import FabenchError

#: fabench name -> torchvision.datasets class name
CLASSES = {
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
}
DOWNLOAD_TIMEOUT_S = 30


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def downloads_allowed() -> bool:
    """False when ``FABENCH_OFFLINE`` is set to anything but an empty string, 0, false or no."""
    return os.environ.get("FABENCH_OFFLINE", "").strip().lower() in ("", "0", "false", "no")


def _dataset_class(name: str):
    import torchvision.datasets

    return getattr(torchvision.datasets, CLASSES[name])


def expected_location(name: str, root: Path) -> tuple[Path, str]:
    """Where torchvision looks for ``name``'s files under ``root``, and how to get them."""
    cls = _dataset_class(name)
    if hasattr(cls, "base_folder"):  # CIFAR: one archive, extracted
        return root / cls.base_folder, f"download {cls.url} and extract it into {root}"
    raw = root / cls.__name__ / "raw"
    files = ", ".join(Path(url).stem for url, _ in cls.resources)
    return raw, f"download {files} (.gz) from {cls.mirrors[0]} and gunzip them into {raw}"


def _is_official(raw: Path, url: str, md5: str) -> bool:
    """True when ``raw`` is the decompressed copy of the official archive kept beside it (as
    torchvision's download leaves it: ``raw/<file>.gz``, checked against its published md5)."""
    official = gunzip_digest(raw.parent / Path(url).name, md5)
    return official is not None and official == file_digest(raw)


def files_fingerprint(name: str, data_dir: str | Path) -> str | None:
    """What in ``data_dir`` decides dataset ``name``'s data, for its run id; None for the official files.

    CIFAR-10/100: always None, as torchvision checks every file's md5 when it opens them (it
    refuses anything else). MNIST and Fashion-MNIST: torchvision reads whatever IDX files lie
    in ``raw/`` (or its older ``processed/*.pt``), so those are hashed, unless they are
    missing (a download brings the official ones) or match the official archives beside them.
    """
    cls = _dataset_class(name)
    if hasattr(cls, "base_folder"):
        return None
    folder = Path(data_dir).expanduser() / cls.__name__
    legacy = [folder / "processed" / cls.training_file, folder / "processed" / cls.test_file]
    if all(path.is_file() for path in legacy):  # torchvision reads these first when present
        return content_fingerprint(legacy, folder)
    raw = [(folder / "raw" / Path(url).stem, url, md5) for url, md5 in cls.resources]
    if not all(path.is_file() for path, _, _ in raw):
        return None
    if all(_is_official(path, url, md5) for path, url, md5 in raw):
        return None
    return content_fingerprint([path for path, _, _ in raw], folder)


def _open(name: str, root: Path, train: bool, download: bool = False):
    return _dataset_class(name)(str(root), train=train, download=download)


def _download(name: str, root: Path) -> None:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        _open(name, root, train=True, download=True)
        _open(name, root, train=False, download=True)
    finally:
        socket.setdefaulttimeout(previous)


def _ensure_files(name: str, root: Path) -> None:
    """Make sure torchvision can open ``name`` under ``root``, downloading once if allowed."""
    try:
        _open(name, root, train=True)
        return
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        reason = "files missing or corrupted"
    where, how = expected_location(name, root)
    if downloads_allowed():
        try:
            _download(name, root)
            return
        except Exception as err:  # any network or archive failure ends in the same advice
            reason = f"download failed: {_one_line(err)}"
    else:
        reason += "; downloads disabled by FABENCH_OFFLINE"
    raise FabenchError(f"{name} not found at {where} ({reason}); {how}, or pass --data-dir")


def _images(data) -> torch.Tensor:
    array = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    array = array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))


def _labels(targets) -> torch.Tensor:
    return torch.as_tensor(np.asarray(targets), dtype=torch.int64)


def read_torchvision(name: str, data_dir: str | Path) -> Splits:
    """Both splits of torchvision dataset ``name`` as uint8 NCHW tensors."""
    root = Path(data_dir).expanduser()
    _ensure_files(name, root)
    train, test = _open(name, root, train=True), _open(name, root, train=False)
    classes = tuple(str(c) for c in train.classes)
    return Splits(
        _images(train.data),
        _labels(train.targets),
        _images(test.data),
        _labels(test.targets),
        num_classes=len(classes),
        classes=classes,
    )
