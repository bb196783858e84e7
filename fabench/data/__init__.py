"""Datasets: loading, validation, class-balanced subsets, and device-side batches.

Public surface::

    list_datasets() -> {name: description}
    check_dataset(name) -> name                     # or FabenchError (unknown name, missing .npz)
    dataset_identity(name) -> str                   # the name, or a file's content hash (run_id)
    load_dataset(name, *, data_dir="data", subset=None, seed=0, image_size=None, augment=None)
        -> InMemoryDataset | FolderDataset          # FolderDataset for imagenet
    DeviceLoader(dataset, device)                   # .train_batches(batch_size, generator),
                                                    # .test_batches(batch_size), .num_train_batches(...)
    train_batches(dataset_or_loader, batch_size, generator, device="cpu", *, drop_last=False)
    test_batches(dataset_or_loader, batch_size, device="cpu")
    AUGMENTATIONS: {policy name: AugmentPolicy}

Small datasets live in memory as uint8 and are served from device memory (``_loader``);
ImageNet is streamed by DataLoader workers (``_imagenet``). Embedded samples are built by
``make_embedded.py`` (provenance in its docstring).
"""

from fabench.data._augment import AUGMENTATIONS, AugmentPolicy
from fabench.data._dataset import InMemoryDataset, Splits, balanced_subset, channel_stats
from fabench.data._factory import (
    DATASETS,
    check_dataset,
    dataset_identity,
    list_datasets,
    load_dataset,
)
from fabench.data._imagenet import FolderDataset
from fabench.data._loader import DeviceLoader, test_batches, train_batches

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "AugmentPolicy",
    "DeviceLoader",
    "FolderDataset",
    "InMemoryDataset",
    "Splits",
    "balanced_subset",
    "channel_stats",
    "check_dataset",
    "dataset_identity",
    "list_datasets",
    "load_dataset",
    "test_batches",
    "train_batches",
]
