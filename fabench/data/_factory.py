"""Dataset names, their loaders, and :func:`load_dataset`.

Names: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100`` (torchvision files under
``data_dir``), ``imagenet`` (an ImageFolder tree, streamed), ``imagenet16``, ``imagenet32`` and
``imagenet64`` (Downsampled ImageNet's npz files under ``data_dir``), ``cifar10-mini`` and
``mnist-mini`` (embedded in the package, no files needed), or the path of any ``.npz`` file.

Default augmentation: ``cifar`` for the colour datasets (``crop24`` when 24-pixel inputs are
asked for, which is what ``arch1`` gets), ``mnist`` (none) for the grey ones. A user ``.npz``
gets ``cifar`` if it has 3 channels and ``none`` otherwise. ``augment=`` overrides.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fabench._registry import Registry
from fabench.data import _downsampled
from fabench.data._dataset import (
    InMemoryDataset,
    Splits,
    channel_stats,
    take_train_subset,
    take_validation_split,
)
from fabench.data._fingerprint import file_digest
from fabench.data._imagenet import FolderDataset, folder_fingerprint, load_folder_dataset
from fabench.data._npz import read_npz
from fabench.data._torchvision import files_fingerprint, read_torchvision
from fabench.errors import FabenchError, unknown_choice

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
NPZ_HINT = "<path>.npz"


@dataclass(frozen=True)
class DatasetSpec:
    description: str
    #: reads the splits given data_dir; None for the streamed imagenet
    read: Callable[[Path], Splits] | None
    #: default augmentation policy; None = decide from the channel count
    augment: str | None
    jpeg_sample: bool = False
    #: what in data_dir decides the data, for the run id (None: nothing, or the official files)
    fingerprint: Callable[[Path], str | None] | None = None


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _torchvision_reader(name: str) -> Callable[[Path], Splits]:
    return lambda data_dir: read_torchvision(name, data_dir)


def _torchvision_fingerprint(name: str) -> Callable[[Path], str | None]:
    return lambda data_dir: files_fingerprint(name, data_dir)


def read_embedded(name: str) -> Splits:
    """The arrays of an embedded dataset shipped in ``fabench/data/embedded``."""
    path = EMBEDDED_DIR / f"{name}.npz"
    if not path.is_file():
        raise FabenchError(
            f"embedded dataset file {path} is missing; reinstall fabench or rebuild it with "
            "'python -m fabench.data.make_embedded'"
        )
    return read_npz(path)


def _embedded_reader(name: str) -> Callable[[Path], Splits]:
    return lambda data_dir: read_embedded(name)


def _register(name: str, description: str, read, augment: str | None, jpeg_sample=False, fingerprint=None) -> None:
    DATASETS.register(name, DatasetSpec(description, read, augment, jpeg_sample, fingerprint))


_register(
    "mnist",
    "MNIST digits, 60000/10000, 1x28x28 (torchvision files in DATA_DIR/MNIST)",
    _torchvision_reader("mnist"),
    "mnist",
    fingerprint=_torchvision_fingerprint("mnist"),
)
_register(
    "fashion-mnist",
    "Fashion-MNIST, 60000/10000, 1x28x28 (torchvision files in DATA_DIR/FashionMNIST)",
    _torchvision_reader("fashion-mnist"),
    "mnist",
    fingerprint=_torchvision_fingerprint("fashion-mnist"),
)
_register(
    "cifar10",
    "CIFAR-10, 50000/10000, 3x32x32 (torchvision files in DATA_DIR/cifar-10-batches-py)",
    _torchvision_reader("cifar10"),
    "cifar",
    fingerprint=_torchvision_fingerprint("cifar10"),
)
_register(
    "cifar100",
    "CIFAR-100, 50000/10000, 3x32x32 (torchvision files in DATA_DIR/cifar-100-python)",
    _torchvision_reader("cifar100"),
    "cifar",
    fingerprint=_torchvision_fingerprint("cifar100"),
)
_register(
    "imagenet",
    "ImageNet-1k as ImageFolder DATA_DIR/{train,val}, streamed by DataLoader workers",
    None,
    "imagenet",
    fingerprint=folder_fingerprint,
)
for _side in _downsampled.SIDES:
    _register(
        f"imagenet{_side}",
        f"Downsampled ImageNet (Chrabaszcz et al. 2017), 1281167/50000, 3x{_side}x{_side}, 1000 classes "
        f"(official npz batch files in DATA_DIR/imagenet{_side})",
        lambda data_dir, side=_side: _downsampled.read_downsampled(data_dir, side),
        "cifar",
        fingerprint=lambda data_dir, side=_side: _downsampled.files_fingerprint(data_dir, side),
    )
_register(
    "cifar10-mini",
    "embedded CIFAR-10 sample, 5000/1000 class-balanced; JPEG re-encoded pixels, "
    "accuracies run a few points below real CIFAR-10",
    _embedded_reader("cifar10-mini"),
    "cifar",
    jpeg_sample=True,
)
_register(
    "mnist-mini",
    "embedded MNIST sample, 10000/2000 class-balanced, original pixels",
    _embedded_reader("mnist-mini"),
    "mnist",
)


def list_datasets() -> dict[str, str]:
    """``{name: description}`` of the named datasets (any ``.npz`` path works too)."""
    return {name: DATASETS.get(name).description for name in DATASETS}


def _is_npz_path(name: str) -> bool:
    return name.endswith(".npz") or "/" in name


def dataset_identity(name: str, data_dir: str | Path = "data") -> str:
    """What identifies a dataset in a run's id: its name, or the files that decide its data.

    Two different ``d.npz`` files in two folders are two datasets, and one file reached by two
    spellings of its path is one; so a file dataset is identified by its bytes, not its path.
    Likewise a dataset read from ``data_dir`` adds its files' fingerprint to its name, unless
    they are the official files (see :attr:`DatasetSpec.fingerprint`). A missing file keeps
    its name (the run's preflight reports it).
    """
    if name in DATASETS:
        fingerprint = DATASETS.get(name).fingerprint
        found = fingerprint(Path(data_dir)) if fingerprint else None
        return f"{name} {found}" if found else name
    if not _is_npz_path(name):
        return name
    path = Path(name).expanduser()
    try:
        return f"npz sha256:{file_digest(path)}"
    except OSError:
        return name


def check_dataset(name: str) -> str:
    """Return ``name`` if it names a dataset or an existing ``.npz`` file; else FabenchError."""
    if name in DATASETS:
        return name
    if _is_npz_path(name):
        if not Path(name).expanduser().is_file():
            raise FabenchError(
                f"dataset file {name} does not exist; give a named dataset or an existing .npz file"
            )
        return name
    raise unknown_choice("dataset", name, [*DATASETS, NPZ_HINT])


def _label_list(labels: set[int]) -> str:
    shown = sorted(labels)
    return ", ".join(map(str, shown[:10])) + (", ..." if len(shown) > 10 else "")


def check_classes(splits: Splits, name: str) -> None:
    """Refuse a training split with fewer than two classes (every model scores 100 % on it);
    warn on stderr when the training and test splits hold different classes. An evaluation-only
    set (no training split) is not checked."""
    if not len(splits.y_train):
        return
    train = set(splits.y_train.unique().tolist())
    if len(train) < 2:
        raise FabenchError(f"dataset {name}: the training split holds {len(train)} class (label "
                           f"{_label_list(train)}); a classification benchmark needs at least two")
    test = set(splits.y_test.unique().tolist())
    if train != test:
        parts = [f"only in train: {_label_list(train - test)}" if train - test else "",
                 f"only in test: {_label_list(test - train)}" if test - train else ""]
        print(f"fabench: warning: dataset {name}: train and test splits hold different classes "
              f"({'; '.join(p for p in parts if p)})", file=sys.stderr)


def default_augment(base: str | None, in_chans: int, image_size: int) -> str:
    """The augmentation policy a dataset gets unless one is asked for (see module docstring)."""
    if base is None:
        base = "cifar" if in_chans == 3 else "none"
    if base == "cifar" and image_size == 24:
        return "crop24"
    return base


def _in_memory(
    name: str, splits: Splits, spec: DatasetSpec, image_size: int | None, augment: str | None
) -> InMemoryDataset:
    in_chans = int(splits.x_test.shape[1])
    native = int(splits.x_test.shape[-1])
    stats_from = splits.x_train if len(splits.x_train) else splits.x_test
    mean, std = channel_stats(stats_from)
    size = image_size or native
    return InMemoryDataset(
        name=name,
        x_train=splits.x_train,
        y_train=splits.y_train,
        x_test=splits.x_test,
        y_test=splits.y_test,
        num_classes=splits.num_classes,
        in_chans=in_chans,
        mean=mean,
        std=std,
        augment=augment or default_augment(spec.augment, in_chans, size),
        image_size=size,
        jpeg_sample=spec.jpeg_sample,
        description=spec.description,
        classes=splits.classes,
    )


def load_dataset(
    name: str,
    *,
    data_dir: str | Path = "data",
    subset: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
    augment: str | None = None,
    val_split: int = 0,
    decode: str = "cpu",
) -> InMemoryDataset | FolderDataset:
    """Load dataset ``name`` (a registered name or a ``.npz`` path).

    ``subset``: keep a class-balanced random ``subset`` of the training images, chosen by
    ``seed`` (the only thing ``seed`` affects). ``image_size``: side of the batches (None =
    native). ``augment``: override the default policy. ``val_split``: hold out this many
    class-balanced training images (chosen by ``seed``, before ``subset``) as a validation
    split that is never trained on. ``decode``: where a folder dataset's JPEGs are decoded,
    ``cpu`` (the DataLoader workers) or ``gpu`` (the run's device). Returns an
    :class:`InMemoryDataset`, or a :class:`FolderDataset` for ``imagenet``.
    """
    check_dataset(name)
    if image_size is not None and image_size < 1:
        raise FabenchError(f"--image-size must be positive, got {image_size}")
    if name == "imagenet":
        if val_split:
            raise FabenchError("--val-split applies to in-memory datasets; for imagenet give a folder tree whose "
                               "train/ leaves out the validation images")
        spec = DATASETS.get(name)
        return load_folder_dataset(
            name,
            data_dir,
            subset=subset,
            seed=seed,
            image_size=image_size,
            description=spec.description,
            decode=decode,
        )
    if name in DATASETS:
        spec = DATASETS.get(name)
        splits = spec.read(Path(data_dir))
    else:
        spec = DatasetSpec(f"dataset file {name}", None, None)
        splits = read_npz(name)
    check_classes(splits, name)
    if augment is not None:
        from fabench.data._augment import get_policy

        get_policy(augment)  # validate the name early
    dataset = _in_memory(name, splits, spec, image_size, augment)
    if val_split:
        dataset = take_validation_split(dataset, val_split, seed)
    if subset is not None:
        dataset = take_train_subset(dataset, subset, seed)
    return dataset
