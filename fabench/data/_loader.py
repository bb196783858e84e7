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

Streamed splits: a split that stays on the host (memory-mapped, or too large for the device;
see :func:`fabench.data._placement.place`) is served the same way, except that each batch's
images are gathered on the host, a few batches ahead on a background thread, and copied to the
device as uint8 before augmentation. The draws, the order and therefore the batches are the
same as when the split is held on the device.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from fabench.data._augment import augment_test, augment_train, draw_epoch, fit_to_size, get_policy
from fabench.data._dataset import InMemoryDataset
from fabench.data._placement import is_mapped, place
from fabench.errors import FabenchError

Batch = tuple[Tensor, Tensor]

#: batches of a streamed split gathered ahead of the one being used
PREFETCH = 4


def _count_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def gather_rows(images: Tensor, index: Tensor) -> Tensor:
    """``images[index]``, read in ascending row order (neighbouring rows of a memory map come
    from the same pages) and returned in ``index``'s order."""
    ordered, position = index.sort()
    rows = images.index_select(0, ordered)
    return torch.empty_like(rows).index_copy_(0, position, rows)


def host_batches(images: Tensor, indices: Iterable[Tensor], device: torch.device) -> Iterator[Tensor]:
    """``images[index]`` on ``device`` for each index batch, gathered on the host by a
    background thread :data:`PREFETCH` batches ahead."""
    indices = iter(indices)
    pool = ThreadPoolExecutor(1, thread_name_prefix="fabench-gather")
    try:
        pending = deque(pool.submit(gather_rows, images, index) for index in itertools.islice(indices, PREFETCH))
        while pending:
            batch = pending.popleft().result()
            following = next(indices, None)
            if following is not None:
                pending.append(pool.submit(gather_rows, images, following))
            yield batch.to(device)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class DeviceLoader:
    """A dataset resident on one device, served as normalised, augmented batches."""

    def __init__(self, dataset: InMemoryDataset, device: str | torch.device = "cpu") -> None:
        self.dataset = dataset
        self.device = torch.device(device)
        self.policy = get_policy(dataset.augment)
        self.image_size = dataset.image_size
        self.x_train = place(dataset.x_train, self.device, f"{dataset.name} training split")
        self.y_train = dataset.y_train.to(self.device)
        self.x_test = place(dataset.x_test, self.device, f"{dataset.name} test split")
        self.y_test = dataset.y_test.to(self.device)
        self.x_val = place(dataset.x_val, self.device, f"{dataset.name} validation split")
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

    def streamed(self, images: Tensor) -> bool:
        """True when ``images`` (one of the splits) is served from the host batch by batch."""
        return images.device.type != self.device.type or is_mapped(images)

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
        offsets = None if draws.offsets is None else draws.offsets.to(self.device)
        flips = None if draws.flips is None else draws.flips.to(self.device)
        return self._epoch(batch_size, draws.order, offsets, flips, drop_last)

    def _epoch(self, batch_size, order, offsets, flips, drop_last) -> Iterator[Batch]:
        end = self.num_train_batches(batch_size, drop_last) * batch_size
        windows = [slice(start, start + batch_size) for start in range(0, end, batch_size)]
        on_device = order.to(self.device)
        if self.streamed(self.x_train):
            images = host_batches(self.x_train, [order[window] for window in windows], self.device)
        else:
            images = (self.x_train[on_device[window]] for window in windows)
        with contextlib.closing(images):
            for window, batch in zip(windows, images, strict=True):
                augmented = augment_train(
                    batch,
                    self.policy,
                    None if offsets is None else offsets[window],
                    None if flips is None else flips[window],
                )
                yield self._finish(augmented), self.y_train[on_device[window]]

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        """The test split in stored order, with the policy's test transform."""
        return self._fixed_batches(self.x_test, self.y_test, batch_size)

    def val_batches(self, batch_size: int) -> Iterator[Batch]:
        """The validation split (held out of training) in order, transformed as the test split."""
        return self._fixed_batches(self.x_val, self.y_val, batch_size)

    def _fixed_batches(self, images: Tensor, labels: Tensor, batch_size: int) -> Iterator[Batch]:
        if batch_size < 1:
            raise FabenchError(f"batch size must be at least 1, got {batch_size}")
        n = labels.shape[0]
        starts = range(0, n, batch_size)
        if self.streamed(images):
            batches = host_batches(images, [torch.arange(start, min(start + batch_size, n)) for start in starts],
                                   self.device)
        else:
            batches = (images[start : start + batch_size] for start in starts)
        with contextlib.closing(batches):
            for start, batch in zip(starts, batches, strict=True):
                yield self._finish(augment_test(batch, self.policy)), labels[start : start + batch_size]


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
