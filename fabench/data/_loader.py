"""Batches straight from device memory, augmented on the device (the airbench approach).

:class:`DeviceLoader` copies a dataset's uint8 tensors to the device once (CIFAR-10 is 150 MB)
and then serves batches as index slices: an epoch is a random permutation of the training
indices, cut into consecutive slices of ``batch_size``. Crops, flips, resizing and
normalisation run over the whole batch on the device. There are no DataLoader workers.

Randomness: :meth:`DeviceLoader.train_batches` draws all of an epoch's random numbers from the
given CPU ``torch.Generator`` at the moment it is called (permutation, then crop offsets, then
flip bits). So ``generator.get_state()`` saved between epochs and restored later reproduces
the following epochs exactly, on any device.

Partial batches: the last, smaller batch of an epoch is kept by default, so every training
image is seen once per epoch; ``drop_last=True`` drops it. Checking that ``batch_size`` fits the
split is the caller's business (see :meth:`DeviceLoader.num_train_batches`).

Output: float32 ``[B, C, image_size, image_size]`` normalised with the dataset's mean and std,
and int64 labels ``[B]``, both on the device.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from fabench.data._augment import augment_test, augment_train, draw_epoch, fit_to_size, get_policy
from fabench.data._dataset import InMemoryDataset
from fabench.errors import FabenchError

Batch = tuple[Tensor, Tensor]


def _count_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


class DeviceLoader:
    """A dataset resident on one device, served as normalised, augmented batches."""

    def __init__(self, dataset: InMemoryDataset, device: str | torch.device = "cpu") -> None:
        self.dataset = dataset
        self.device = torch.device(device)
        self.policy = get_policy(dataset.augment)
        self.image_size = dataset.image_size
        self.x_train = dataset.x_train.to(self.device)
        self.y_train = dataset.y_train.to(self.device)
        self.x_test = dataset.x_test.to(self.device)
        self.y_test = dataset.y_test.to(self.device)
        self.x_val = dataset.x_val.to(self.device)
        self.y_val = dataset.y_val.to(self.device)
        mean = torch.tensor(dataset.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(dataset.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        # (x / 255 - mean) / std as one multiply-add
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std

    @property
    def n_train(self) -> int:
        return self.dataset.n_train

    @property
    def n_test(self) -> int:
        return self.dataset.n_test

    def num_train_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return _count_batches(self.n_train, batch_size, drop_last)

    def num_test_batches(self, batch_size: int) -> int:
        return _count_batches(self.n_test, batch_size, False)

    def _finish(self, images: Tensor) -> Tensor:
        """Resize to ``image_size`` and normalise to float32."""
        images = fit_to_size(images, self.image_size)
        return images.float().mul_(self._scale).add_(self._shift)

    def train_batches(
        self, batch_size: int, generator: torch.Generator, *, drop_last: bool = False
    ) -> Iterator[Batch]:
        """One epoch of shuffled, augmented training batches; draws its randomness now."""
        if self.dataset.eval_only:
            raise FabenchError(
                f"dataset '{self.dataset.name}' is evaluation-only (it has no x_train/y_train)"
            )
        if batch_size < 1:
            raise FabenchError(f"batch size must be at least 1, got {batch_size}")
        draws = draw_epoch(self.n_train, self.policy, self.dataset.native_size, generator)
        order = draws.order.to(self.device)
        offsets = None if draws.offsets is None else draws.offsets.to(self.device)
        flips = None if draws.flips is None else draws.flips.to(self.device)
        return self._epoch(batch_size, order, offsets, flips, drop_last)

    def _epoch(self, batch_size, order, offsets, flips, drop_last) -> Iterator[Batch]:
        for start in range(
            0, self.num_train_batches(batch_size, drop_last) * batch_size, batch_size
        ):
            window = slice(start, start + batch_size)
            index = order[window]
            images = augment_train(
                self.x_train[index],
                self.policy,
                None if offsets is None else offsets[window],
                None if flips is None else flips[window],
            )
            yield self._finish(images), self.y_train[index]

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        """The test split in stored order, with the policy's test transform."""
        return self._fixed_batches(self.x_test, self.y_test, batch_size)

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        """The validation split (held out of training) in order, transformed as the test split."""
        return self._fixed_batches(self.x_val, self.y_val, batch_size)

    def _fixed_batches(self, images: Tensor, labels: Tensor, batch_size: int) -> Iterator[Batch]:
        if batch_size < 1:
            raise FabenchError(f"batch size must be at least 1, got {batch_size}")
        for start in range(0, labels.shape[0], batch_size):
            batch = augment_test(images[start : start + batch_size], self.policy)
            yield self._finish(batch), labels[start : start + batch_size]


def _loader(data: InMemoryDataset | DeviceLoader, device) -> DeviceLoader:
    return data if isinstance(data, DeviceLoader) else DeviceLoader(data, device)


def train_batches(
    data: InMemoryDataset | DeviceLoader,
    batch_size: int,
    generator: torch.Generator,
    device: str | torch.device = "cpu",
    *,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """One training epoch. Pass a :class:`DeviceLoader` to avoid copying the data every epoch."""
    return _loader(data, device).train_batches(batch_size, generator, drop_last=drop_last)


def test_batches(
    data: InMemoryDataset | DeviceLoader, batch_size: int, device: str | torch.device = "cpu"
) -> Iterator[Batch]:
    """The test split once, in order."""
    return _loader(data, device).test_batches(batch_size)


test_batches.__test__ = False  # not a pytest test, though the name looks like one
