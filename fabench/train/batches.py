"""A run's view of its data: training epochs and test passes as batches on the run's device.

In-memory datasets go through :class:`fabench.data.DeviceLoader` (one uint8 tensor on the
device, index slices of a per-epoch permutation, augmentation on the device); ImageNet-style
folder datasets through their DataLoader with workers, built once so that workers persist
across epochs. Either way an epoch's randomness comes from the CPU generator the run owns.

Training drops the last partial batch: every step sees ``batch_size`` images (a one-image
batch would break BatchNorm, and equal steps keep timings comparable). Images skipped that way
differ from epoch to epoch. ``skip`` replays the first batches of an epoch without training
on them, which is how a run interrupted mid-epoch resumes exactly.

Folder datasets' torchvision transforms draw from torch's global generator of the process that
runs them. In worker processes that generator is the worker's own, seeded from the run's
generator. With ``workers=0`` it would be the main process's, shared with training (dropout,
``fa-brsf``), so loading would perturb training and a replay could not be exact: batches are
then fetched with the global generator swapped for a data stream seeded from the run's
generator at the start of each epoch (:func:`_isolated_rng`).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator

import torch

from fabench.data import DeviceLoader, FolderDataset, InMemoryDataset
from fabench.errors import FabenchError

Batch = tuple[torch.Tensor, torch.Tensor]


def _isolated_rng(batches, generator: torch.Generator) -> Iterator:
    """Yield from ``batches`` with torch's global CPU generator replaced by a stream of its own."""
    seed = int(torch.randint(2**62, (1,), generator=generator))
    state = torch.Generator().manual_seed(seed).get_state()
    iterator = iter(batches)
    while True:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(state)
            batch = next(iterator, None)
            state = torch.get_rng_state()
        if batch is None:
            return
        yield batch


class RunData:
    """Training and test batches of one dataset on one device (all of them, or one rank's share)."""

    def __init__(self, dataset: InMemoryDataset | FolderDataset, device: torch.device, *,
                 generator: torch.Generator, batch_size: int, workers: int = 4,
                 channels_last: bool = False) -> None:
        self.dataset = dataset
        self.device = device
        self.generator = generator
        self.batch_size = batch_size
        self.channels_last = channels_last
        self.workers = workers
        self.rank, self.world = 0, 1
        self._shard_test = None
        if isinstance(dataset, FolderDataset):
            self._loader = None
            place = {"workers": workers, "device": device, "channels_last": channels_last}
            self._train = dataset.train_loader(batch_size, generator=generator, drop_last=True, **place)
            self._test = dataset.val_loader(batch_size, **place)
        else:
            self._loader = DeviceLoader(dataset, device)

    def shard(self, rank: int, world: int) -> RunData:
        """This data as rank ``rank`` of ``world`` sees it: its contiguous slice of every global
        training batch (same draws as one process), and every ``world``-th test batch.

        Folder datasets load only the rank's images: their training sampler yields the rank's
        slice of each global batch, their test sampler the rank's batches.
        """
        shard = copy.copy(self)
        shard.rank, shard.world = rank, world
        if self._loader is None:
            dataset = self.dataset
            place = {"workers": self.workers, "device": self.device, "channels_last": self.channels_last}
            shard._train = dataset.batches("train", batch_sampler=RankSlices(dataset.n_train, self.batch_size, rank, world,
                                                                             self.generator), generator=self.generator, **place)
            shard._shard_test = dataset.batches(
                "val", batch_sampler=RankBatches(dataset.n_test, self.batch_size, rank, world), **place)
        return shard

    @property
    def n_train(self) -> int:
        return self.dataset.n_train

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.batch_size

    def summary(self) -> dict:
        """The dataset as the manifest records it (what ``fabench eval`` needs to match it)."""
        d = self.dataset
        if isinstance(d, InMemoryDataset):
            return d.summary()
        return {"name": d.name, "n_train": d.n_train, "n_test": d.n_test, "num_classes": d.num_classes,
                "in_chans": d.in_chans, "image_size": d.image_size, "augment": d.augment,
                "mean": list(d.mean), "std": list(d.std), "jpeg_sample": d.jpeg_sample}

    def check_batch_size(self) -> None:
        if self.dataset.eval_only:
            raise FabenchError(f"dataset '{self.dataset.name}' has no training split (x_train/y_train); "
                               "use it with 'fabench eval'")
        if self.batch_size > self.n_train:
            raise FabenchError(f"--batch-size {self.batch_size} is larger than the training set "
                               f"({self.n_train} images); use at most {self.n_train}")

    def _place(self, batches) -> Iterator[Batch]:
        for x, y in batches:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)

    def _mine(self, batches) -> Iterator[Batch]:
        """This rank's contiguous slice of each global batch (all of it in a lone process)."""
        if self.world == 1:
            return batches
        local = self.batch_size // self.world
        window = slice(self.rank * local, (self.rank + 1) * local)
        return ((x[window], y[window]) for x, y in batches)

    def _every_worldth(self, batches) -> Iterator[Batch]:
        """Every ``world``-th batch from this rank's on (all of them in a lone process)."""
        if self.world == 1:
            return batches
        return (batch for i, batch in enumerate(batches) if i % self.world == self.rank)

    def train_epoch(self, skip: int = 0) -> Iterator[Batch]:
        """One epoch of training batches, its randomness drawn from ``self.generator`` now."""
        if self._loader is not None:
            batches = self._mine(self._loader.train_batches(self.batch_size, self.generator, drop_last=True))
        else:  # a sharded folder loader already yields this rank's slices
            batches = _isolated_rng(self._train, self.generator)
        return self._place(itertools.islice(batches, skip, None))

    @property
    def n_val(self) -> int:
        return getattr(self.dataset, "n_val", 0)

    def val(self, batch_size: int | None = None) -> Iterator[Batch]:
        """The validation split once, in order (empty without ``--val-split``)."""
        if self._loader is None or not self.n_val:
            return iter(())
        return self._every_worldth(self._place(self._loader.val_batches(batch_size or self.batch_size)))

    def test(self, batch_size: int | None = None) -> Iterator[Batch]:
        """The test split once, in order (a rank's batches of it, when sharded)."""
        if self._loader is not None:
            return self._every_worldth(self._place(self._loader.test_batches(batch_size or self.batch_size)))
        if self._shard_test is not None and batch_size is None:
            return self._place(iter(self._shard_test))
        return self._every_worldth(self._place(iter(self._test)))


# --- a rank's share of a folder dataset ---------------------------------------------------

class RankSlices(torch.utils.data.Sampler):
    """Global batches of a random permutation, of which this rank takes its contiguous slice."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.rank, self.world, self.generator = n, batch_size, rank, world, generator

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist()
        local = self.batch_size // self.world
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start + self.rank * local: start + (self.rank + 1) * local]


class RankBatches(torch.utils.data.Sampler):
    """Consecutive test batches in order, every ``world``-th one starting at ``rank``."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int) -> None:
        self.starts = list(range(rank * batch_size, n, world * batch_size))
        self.n, self.batch_size = n, batch_size

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self):
        for start in self.starts:
            yield list(range(start, min(start + self.batch_size, self.n)))
