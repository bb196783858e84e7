"""ImageNet (or any ImageFolder tree with ``train/`` and ``val/``), streamed from disk.

ImageNet does not fit in memory as uint8 (≈ 190 GB at 224 px), so unlike the small datasets it
is read by torchvision's ImageFolder through DataLoader workers. Layout expected at
``data_dir`` (or ``data_dir/imagenet``): ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG``
with the same class folders (the usual ``valprep.sh`` layout). Class indices are the sorted
folder names.

Transforms are the standard ones: train ``RandomResizedCrop(image_size)`` + horizontal flip;
validation resize to ``image_size·256/224`` then centre crop. Normalisation uses the usual
ImageNet constants (computing them would need a pass over 1.28 M JPEGs).

Order is drawn from the ``generator`` given to :meth:`FolderDataset.train_loader`; with
``workers > 0`` each worker's augmentation RNG is seeded from it too (PyTorch's rule), so a run
is reproducible for a fixed number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from fabench.data._dataset import balanced_subset
from fabench.data._fingerprint import tree_fingerprint
from fabench.errors import FabenchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def find_root(data_dir: str | Path) -> Path:
    """The directory holding ``train/`` and ``val/``: ``data_dir`` or ``data_dir/imagenet``."""
    base = Path(data_dir).expanduser()
    for root in (base, base / "imagenet"):
        if (root / "train").is_dir() and (root / "val").is_dir():
            return root
    raise FabenchError(
        f"imagenet not found: expected ImageFolder directories {base}/train and {base}/val "
        f"(or {base}/imagenet/train, .../val), one sub-folder per class; pass --data-dir"
    )


def folder_fingerprint(data_dir: str | Path) -> str | None:
    """The names, sizes and modification times of the tree's train/ and val/ files, as one
    hash (its images decide the data); None when there is no tree (loading reports it)."""
    try:
        root = find_root(data_dir)
    except FabenchError:
        return None
    train, val = (tree_fingerprint(str((root / split).resolve())) for split in ("train", "val"))
    return f"train {train} val {val}"


def class_folders(split_dir: Path) -> tuple[str, ...]:
    return tuple(sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir()))


@dataclass
class FolderDataset:
    """An ImageFolder dataset read through DataLoader workers (used for ``imagenet``)."""

    name: str
    root: Path
    classes: tuple[str, ...]
    image_size: int = 224
    subset: int | None = None
    seed: int = 0
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    augment: str = "imagenet"
    jpeg_sample: bool = False
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def eval_only(self) -> bool:
        return False

    def _normalise(self):
        from torchvision import transforms

        return [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]

    def train_transform(self):
        from torchvision import transforms

        return transforms.Compose(
            [
                transforms.RandomResizedCrop(self.image_size),
                transforms.RandomHorizontalFlip(),
                *self._normalise(),
            ]
        )

    def val_transform(self):
        from torchvision import transforms

        resize = round(self.image_size * 256 / 224)
        return transforms.Compose(
            [transforms.Resize(resize), transforms.CenterCrop(self.image_size), *self._normalise()]
        )

    @cached_property
    def train_set(self):
        """The training ImageFolder (class-balanced subset if ``subset``); scans the tree once."""
        from torchvision.datasets import ImageFolder

        folder = ImageFolder(str(self.root / "train"), transform=self.train_transform())
        if self.subset is None:
            return folder
        keep = balanced_subset(
            torch.as_tensor(folder.targets), self.subset, self.num_classes, self.seed
        )
        return torch.utils.data.Subset(folder, keep.tolist())

    @cached_property
    def val_set(self):
        from torchvision.datasets import ImageFolder

        return ImageFolder(str(self.root / "val"), transform=self.val_transform())

    @property
    def n_train(self) -> int:
        return len(self.train_set)

    @property
    def n_test(self) -> int:
        return len(self.val_set)

    def _loader(self, dataset, batch_size: int, workers: int, **kwargs):
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            **kwargs,
        )

    def train_loader(
        self,
        batch_size: int,
        *,
        workers: int = 4,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ):
        """Shuffled, augmented training batches ``(x_normalised, y)``."""
        return self._loader(
            self.train_set,
            batch_size,
            workers,
            shuffle=True,
            generator=generator,
            drop_last=drop_last,
        )

    def val_loader(self, batch_size: int, *, workers: int = 4):
        """Validation batches in folder order, resized and centre-cropped."""
        return self._loader(self.val_set, batch_size, workers, shuffle=False)


def load_folder_dataset(
    name: str,
    data_dir: str | Path,
    *,
    subset: int | None,
    seed: int,
    image_size: int | None,
    description: str,
) -> FolderDataset:
    """Check the tree's layout (cheap: class folders only) and describe it."""
    root = find_root(data_dir)
    classes = class_folders(root / "train")
    if len(classes) < 2:
        raise FabenchError(f"{root}/train has {len(classes)} class folder(s); a classification benchmark needs "
                           "at least two (train/<class>/<images>)")
    if class_folders(root / "val") != classes:
        raise FabenchError(f"{root}/val must have the same class folders as {root}/train")
    if subset is not None and subset < 1:
        raise FabenchError(f"--subset must be at least 1, got {subset}")
    return FolderDataset(
        name,
        root,
        classes,
        image_size=image_size or 224,
        subset=subset,
        seed=seed,
        description=description,
    )
