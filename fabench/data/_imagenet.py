"""ImageNet (or any ImageFolder tree with ``train/`` and ``val/``), streamed from disk.

ImageNet does not fit in memory as uint8 (≈ 190 GB at 224 px), so unlike the small datasets it
is read by torchvision's ImageFolder through DataLoader workers. Layout expected at
``data_dir`` (or ``data_dir/imagenet``): ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG``
with the same class folders (the usual ``valprep.sh`` layout). Class indices are the sorted
folder names.

Transforms are the standard ones: train ``RandomResizedCrop(image_size)`` + horizontal flip;
validation resize to ``image_size·256/224`` then centre crop. Workers decode and crop to uint8
(JPEGs at reduced scale when the crop allows, :mod:`fabench.data._folder_crops`); the batches
become normalised float on the run's device (:mod:`fabench.data._folder_batches`). On a GPU
the workers only cut out each training crop's region and the GPU resizes it; with
``decode="gpu"`` the GPU decodes the JPEGs too. Normalisation uses the usual ImageNet
constants (computing them would need a pass over 1.28 M JPEGs).

Workers: ``workers=None`` sizes them to the machine (:func:`default_workers`). Order is drawn
from the ``generator`` given to :meth:`FolderDataset.train_loader`; with ``workers > 0`` each
worker's augmentation RNG is seeded from it too (PyTorch's rule), so a run is reproducible for
a fixed number of workers.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from fabench.data._dataset import balanced_subset
from fabench.data._fingerprint import tree_fingerprint
from fabench.data._folder_batches import (
    DECODERS,
    DeviceDecoder,
    DeviceResizer,
    FolderBatches,
    JpegPlan,
    collate_plans,
    collate_regions,
)
from fabench.data._folder_crops import EvalCrop, TrainCrop, TrainRegion, open_lazily
from fabench.errors import FabenchError, unknown_choice

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


def default_workers() -> int:
    """DataLoader workers for this machine: every core this process may use but one (kept for
    the training loop), at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


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
    #: where JPEGs are decoded: ``cpu`` (the workers) or ``gpu`` (the run's device)
    decode: str = "cpu"
    #: decode JPEGs only as far down and at as small a scale as the crop allows (False: all of it)
    draft: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def eval_only(self) -> bool:
        return False

    def train_transform(self):
        """The worker's transform of a training image: uint8 [H, W, 3], or bytes and crop for ``gpu``."""
        return JpegPlan(train=True) if self.decode == "gpu" else TrainCrop(self.image_size, draft=self.draft)

    def val_transform(self):
        return JpegPlan(train=False) if self.decode == "gpu" else EvalCrop(self.image_size, draft=self.draft)

    def _folder(self, split: str, transform):
        from torchvision.datasets import ImageFolder

        return ImageFolder(str(self.root / split), transform=transform, loader=open_lazily)

    @cached_property
    def train_set(self):
        """The training ImageFolder (class-balanced subset if ``subset``); scans the tree once."""
        folder = self._folder("train", self.train_transform())
        if self.subset is None:
            return folder
        keep = balanced_subset(
            torch.as_tensor(folder.targets), self.subset, self.num_classes, self.seed
        )
        return torch.utils.data.Subset(folder, keep.tolist())

    @cached_property
    def val_set(self):
        return self._folder("val", self.val_transform())

    def _train_regions(self):
        """The training set with workers that only cut out each crop's region (the device resizes)."""
        regions = TrainRegion(self.image_size, draft=self.draft)
        if isinstance(self.train_set, torch.utils.data.Subset):
            folder = copy.copy(self.train_set.dataset)
            folder.transform = regions
            return torch.utils.data.Subset(folder, self.train_set.indices)
        folder = copy.copy(self.train_set)
        folder.transform = regions
        return folder

    def _pipeline(self, split: str, device, resize_on_device: bool | None) -> tuple:
        """(dataset, collate_fn, device-side step) for batches of ``split`` bound for ``device``:
        the device decodes (``decode="gpu"``), or resizes training crops (``resize_on_device``;
        None: when it is a GPU), or only normalises (the CPU, where workers do everything else)."""
        if self.decode == "gpu":
            dataset = self.train_set if split == "train" else self.val_set
            return dataset, collate_plans, DeviceDecoder(self.image_size)
        if resize_on_device is None:
            resize_on_device = torch.device(device or "cpu").type == "cuda"
        if split == "train" and resize_on_device:
            return self._train_regions(), collate_regions, DeviceResizer(self.image_size)
        return (self.train_set if split == "train" else self.val_set), None, None

    @property
    def n_train(self) -> int:
        return len(self.train_set)

    @property
    def n_test(self) -> int:
        return len(self.val_set)

    def batches(self, split: str, *, batch_size: int | None = None, workers: int | None = None,
                device=None, channels_last: bool = False, resize_on_device: bool | None = None,
                **loader_options) -> FolderBatches:
        """Batches of ``split`` (``train`` or ``val``) as normalised float on ``device`` (CPU when
        None). ``loader_options`` go to the DataLoader (``shuffle``, ``generator``,
        ``drop_last``, ``batch_sampler``); ``workers=None`` sizes them to the machine;
        ``resize_on_device``: see :meth:`_pipeline`."""
        workers = default_workers() if workers is None else workers
        dataset, collate, device_step = self._pipeline(split, device, resize_on_device)
        if batch_size is not None:  # a batch_sampler makes the batches itself
            loader_options["batch_size"] = batch_size
        loader = torch.utils.data.DataLoader(
            dataset,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            collate_fn=collate,
            **loader_options,
        )
        return FolderBatches(loader, device, self.mean, self.std, channels_last=channels_last, decoder=device_step)

    def train_loader(self, batch_size: int, *, workers: int | None = None, generator: torch.Generator | None = None,
                     drop_last: bool = False, device=None, channels_last: bool = False) -> FolderBatches:
        """Shuffled, augmented training batches ``(x_normalised, y)`` on ``device``."""
        return self.batches("train", batch_size=batch_size, workers=workers, device=device,
                            channels_last=channels_last, shuffle=True, generator=generator, drop_last=drop_last)

    def val_loader(self, batch_size: int, *, workers: int | None = None, device=None,
                   channels_last: bool = False) -> FolderBatches:
        """Validation batches in folder order, resized and centre-cropped, on ``device``."""
        return self.batches("val", batch_size=batch_size, workers=workers, device=device,
                            channels_last=channels_last, shuffle=False)


def load_folder_dataset(
    name: str,
    data_dir: str | Path,
    *,
    subset: int | None,
    seed: int,
    image_size: int | None,
    description: str,
    decode: str = "cpu",
    draft: bool = True,
) -> FolderDataset:
    """Check the tree's layout (cheap: class folders only) and describe it.

    ``decode``: ``cpu`` (workers decode) or ``gpu`` (the run's device decodes the JPEGs)."""
    if decode not in DECODERS:
        raise unknown_choice("JPEG decoder", decode, DECODERS)
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
        decode=decode,
        draft=draft,
    )
