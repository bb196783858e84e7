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
ImageNet is streamed by DataLoader workers (``_imagenet``) that crop to uint8
(``_folder_crops``: ``TrainCrop``, ``EvalCrop``), normalised on the device (``_folder_batches``:
``FolderBatches``; ``JpegPlan`` and ``DeviceDecoder`` when the device decodes the JPEGs).
Downsampled ImageNet (``imagenet16/32/64``, ``_downsampled``) is held like the small datasets
where it fits, else converted once to ``.npy`` (``_npy_cache``) and streamed from a memory map
(``_placement``; ``FABENCH_DATA_STREAM``). Embedded samples are built by
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
from fabench.data._folder_batches import DeviceDecoder, FolderBatches, JpegPlan
from fabench.data._folder_crops import EvalCrop, TrainCrop, TrainRegion, open_lazily
from fabench.data._imagenet import IMAGENET_MEAN, IMAGENET_STD, FolderDataset, default_workers
from fabench.data._loader import DeviceLoader, test_batches, train_batches

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentPolicy",
    "DeviceDecoder",
    "DeviceLoader",
    "EvalCrop",
    "FolderBatches",
    "FolderDataset",
    "InMemoryDataset",
    "JpegPlan",
    "Splits",
    "TrainCrop",
    "TrainRegion",
    "balanced_subset",
    "channel_stats",
    "check_dataset",
    "dataset_identity",
    "default_workers",
    "list_datasets",
    "load_dataset",
    "open_lazily",
    "test_batches",
    "train_batches",
]
