"""The in-memory dataset type, its per-channel statistics, and class-balanced subsets.

Images are kept as uint8 ``[N, C, H, W]`` tensors (4× smaller than float, and the form the
device loader slices); conversion to float and normalisation happen per batch on the device.

Normalisation statistics (``mean``, ``std``, per channel, in [0, 1] pixel units) are computed
exactly from the dataset's full training split, before any ``subset`` is taken, so that a
subset run normalises its inputs like a full run. They come from 256-bin pixel histograms,
which is exact and needs no float copy of the data; they are counted a few thousand images at
a time, one pass over a memory-mapped split. An evaluation-only set (no training split)
uses its test split; code evaluating a trained model should prefer the statistics recorded
with the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fabench.data._placement import fits_host, gb, is_mapped
from fabench.errors import FabenchError

#: bytes of images whose histograms are counted at once by :func:`channel_stats`
_STATS_CHUNK_BYTES = 64 << 20


@dataclass
class Splits:
    """Validated arrays of a dataset as read from disk, before statistics and policies."""

    x_train: Tensor  # uint8 [N, C, H, W]
    y_train: Tensor  # int64 [N]
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    classes: tuple[str, ...] = ()


@dataclass
class InMemoryDataset:
    """A dataset held in memory as uint8 tensors, ready for :class:`DeviceLoader`."""

    name: str
    x_train: Tensor  # uint8 [N, C, H, W]; empty (N = 0) for an evaluation-only set
    y_train: Tensor  # int64 [N]
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: augmentation policy name (see fabench.data.AUGMENTATIONS)
    augment: str = "none"
    #: side of the batches the loader produces (the native size unless asked otherwise)
    image_size: int = 0
    #: True for cifar10-mini: JPEG re-encoded CIFAR-10 pixels, not the originals
    jpeg_sample: bool = False
    description: str = ""
    classes: tuple[str, ...] = field(default_factory=tuple)
    #: images held out of the training split for validation (empty unless a val split was asked for)
    x_val: Tensor | None = None
    y_val: Tensor | None = None

    def __post_init__(self) -> None:
        if not self.image_size:
            self.image_size = self.native_size
        if self.x_val is None:
            self.x_val = self.x_test[:0]
            self.y_val = self.y_test[:0]

    @property
    def native_size(self) -> int:
        """Side of the stored images."""
        return int(self.x_test.shape[-1])

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.y_test.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.y_val.shape[0])

    @property
    def eval_only(self) -> bool:
        """True when the set has no training split (an .npz with only x_test, y_test)."""
        return self.n_train == 0

    def summary(self) -> dict:
        """JSON-ready description for run manifests."""
        return {
            "name": self.name,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "n_val": self.n_val,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "native_size": self.native_size,
            "image_size": self.image_size,
            "augment": self.augment,
            "mean": list(self.mean),
            "std": list(self.std),
            "jpeg_sample": self.jpeg_sample,
        }


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and standard deviation of uint8 ``[N, C, H, W]`` images, in [0, 1]."""
    channels = images.shape[1]
    counts = torch.zeros(channels, 256, dtype=torch.int64)
    rows = max(1, _STATS_CHUNK_BYTES // max(1, images[:1].numel()))
    for start in range(0, images.shape[0], rows):
        chunk = images[start : start + rows]
        for channel in range(channels):
            counts[channel] += torch.bincount(chunk[:, channel].reshape(-1), minlength=256)
    levels = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for channel in range(channels):
        histogram = counts[channel].double()
        total = histogram.sum()
        mean = (histogram * levels).sum() / total
        var = (histogram * (levels - mean) ** 2).sum() / total
        means.append(round(float(mean) / 255, 6))
        stds.append(round(float(var.sqrt()) / 255, 6))
    return tuple(means), tuple(stds)


def _take_rows(images: Tensor, rows: Tensor, what: str) -> Tensor:
    """``images[rows]`` in memory; from a memory-mapped split only when that copy fits."""
    if is_mapped(images):
        nbytes = int(images[:1].numel()) * int(rows.sum() if rows.dtype == torch.bool else rows.numel())
        fits, available = fits_host(nbytes)
        if not fits:
            raise FabenchError(f"{what} copies {gb(nbytes)} of the streamed training split into memory, which "
                               f"has {gb(available)} available; use a smaller --subset, or --val-split 0 (a validation "
                               "split copies the rest of the training images)")
    return images[rows]


def balanced_counts(class_sizes: list[int], n: int) -> list[int]:
    """How many images to take per class so the ``n`` are spread as evenly as the classes allow.

    Classes are filled smallest first with an equal share of what is left, so a class with too
    few images gives its shortfall to the others; leftovers of the integer division go to the
    later (larger, then higher-numbered) classes.
    """
    take = [0] * len(class_sizes)
    order = sorted(range(len(class_sizes)), key=lambda c: (class_sizes[c], c))
    left = n
    for rank, label in enumerate(order):
        take[label] = min(class_sizes[label], left // (len(order) - rank))
        left -= take[label]
    return take


def balanced_subset(labels: Tensor, n: int, num_classes: int, seed: int) -> Tensor:
    """Sorted indices of a class-balanced random subset of ``n`` examples (deterministic in ``seed``)."""
    if n < 1:
        raise FabenchError(f"--subset must be at least 1, got {n}")
    if n > labels.shape[0]:
        raise FabenchError(
            f"--subset {n} is larger than the training split ({labels.shape[0]} images); "
            f"use at most {labels.shape[0]}"
        )
    generator = torch.Generator().manual_seed(seed)
    members = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    counts = balanced_counts([len(m) for m in members], n)
    chosen = [
        m[torch.randperm(len(m), generator=generator)[:k]]
        for m, k in zip(members, counts, strict=True)
    ]
    return torch.cat(chosen).sort().values


def take_train_subset(dataset: InMemoryDataset, n: int, seed: int) -> InMemoryDataset:
    """``dataset`` with its training split reduced to ``n`` class-balanced images (stats kept)."""
    if dataset.eval_only:
        raise FabenchError(f"dataset '{dataset.name}' has no training split to take --subset from")
    keep = balanced_subset(dataset.y_train, n, dataset.num_classes, seed)
    return dataclasses.replace(
        dataset, x_train=_take_rows(dataset.x_train, keep, f"--subset {n}"), y_train=dataset.y_train[keep]
    )


def take_validation_split(dataset: InMemoryDataset, n: int, seed: int) -> InMemoryDataset:
    """``dataset`` with ``n`` class-balanced training images moved to a validation split.

    The held-out images leave the training split entirely (a later ``--subset`` draws from what
    is left), so no validation image is ever trained on. Normalisation statistics stay those of
    the full training split (fixed constants of the dataset, as BioTorch's are).
    """
    if dataset.eval_only:
        raise FabenchError(f"dataset '{dataset.name}' has no training split to take --val-split from")
    if n >= dataset.n_train:
        raise FabenchError(f"--val-split {n} leaves no training images (the training split has "
                           f"{dataset.n_train}); use at most {dataset.n_train - 1}")
    held = balanced_subset(dataset.y_train, n, dataset.num_classes, seed)
    keep = torch.ones(dataset.n_train, dtype=torch.bool)
    keep[held] = False
    return dataclasses.replace(dataset, x_train=_take_rows(dataset.x_train, keep, f"--val-split {n}"),
                               y_train=dataset.y_train[keep], x_val=dataset.x_train[held], y_val=dataset.y_train[held])
