"""GPU-hours of a grid cell, estimated from the work model: one step's roofline times its steps.

Per cell, the model and its rule are built as a run builds them (``build_model``) but from
PyTorch's fake tensors (shapes only: no memory, no arithmetic, so a dense feedback matrix of
billions of entries costs nothing), the work of one training step at the cell's batch size is
counted by :func:`fabench.bench.work_model.step_work`, and turned into seconds at
:data:`REFERENCE_GPU`'s rates by :func:`~fabench.bench.work_model.roofline_seconds`; times
``epochs · (n_train // batch_size)`` steps. That is the time if every kernel of the covered
layers ran at the GPU's float32 peak. It leaves out BatchNorm, activations and pooling, test
passes and data loading, and real kernels run below peak (which lengthens the run), while
PyTorch lets cuDNN run float32 convolutions in TF32 on tensor cores (which can shorten it):
an order of magnitude to plan with, not a bound.

The rates are the NVIDIA A100 40GB SXM4 datasheet's (FP32, non-tensor: 19.5 TFLOP/s; HBM2
1,555 GB/s), a common cluster GPU; a random draw is costed as writing its four bytes [inf].
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from fabench.bench.work_model import Rates, roofline_seconds, step_work


@dataclass(frozen=True)
class ReferenceGpu:
    name: str
    rates: Rates


REFERENCE_GPU = ReferenceGpu("A100 fp32", Rates(flop_per_s=19.5e12, byte_per_s=1.555e12, s_per_draw=4 / 1.555e12))

#: The dry run's column title for :func:`gpu_hours_text`.
ESTIMATE_TITLE = "A100_h"

#: (classes, channels, native side, training images) of the named datasets, so a cell's work is
#: known without reading its data.
DATASET_SHAPES = {
    "mnist": (10, 1, 28, 60000), "fashion-mnist": (10, 1, 28, 60000), "mnist-mini": (10, 1, 28, 10000),
    "cifar10": (10, 3, 32, 50000), "cifar100": (100, 3, 32, 50000), "cifar10-mini": (10, 3, 32, 5000),
    "imagenet": (1000, 3, 224, 1281167), "imagenet16": (1000, 3, 16, 1281167),
    "imagenet32": (1000, 3, 32, 1281167), "imagenet64": (1000, 3, 64, 1281167),
}


def _training_images(config, total: int) -> int:
    left = total - (config.val_split or 0)
    return min(left, config.subset) if config.subset else left


def _dataset_name(config) -> str:
    return config.dataset.split(" ")[0]


#: Settings that do not change a step's work: cells differing only in these share one estimate.
_NOT_WORK = ("seed", "epochs", "subset", "val_split", "lr", "momentum", "weight_decay", "schedule", "milestones",
             "gamma", "warmup_epochs", "results_dir", "data_dir", "device", "task", "task_version", "progress",
             "workers", "jpeg_decoder", "tuned", "recipe", "log")


def step_seconds(config, gpu: ReferenceGpu = REFERENCE_GPU) -> float | None:
    """Roofline seconds of one training step of ``config`` (a RunConfig); None for a dataset of unknown shape.

    Cached on every setting but those of :data:`_NOT_WORK`, so a grid's seeds and epoch
    variants cost one build."""
    import dataclasses

    key = repr(sorted((k, repr(v)) for k, v in dataclasses.asdict(config).items() if k not in _NOT_WORK))
    return _step_seconds(key, config, gpu)


_CACHE: dict[tuple, float | None] = {}


def _step_seconds(key: str, config, gpu: ReferenceGpu) -> float | None:
    if (key, gpu.name) not in _CACHE:
        _CACHE[key, gpu.name] = _measure_step(config, gpu)
    return _CACHE[key, gpu.name]


def _measure_step(config, gpu: ReferenceGpu) -> float | None:
    from unittest import mock

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fabench.archs import default_image_size
    from fabench.train.session import build_model

    if _dataset_name(config) not in DATASET_SHAPES:
        return None
    classes, chans, native, _ = DATASET_SHAPES[_dataset_name(config)]
    side = config.image_size or default_image_size(config.arch, _dataset_name(config)) or native
    shape = SimpleNamespace(num_classes=classes, in_chans=chans, image_size=side)
    # fake tensors: shapes without memory or arithmetic; the model stays where it is built
    # (moving fake parameters is not supported, and there is nowhere to move them)
    with FakeTensorMode(allow_non_fake_inputs=True), mock.patch.object(torch.nn.Module, "to", _stay):
        model, handle, _ = build_model(config, shape, torch.device("cpu"))
        work = step_work(model, handle, torch.empty(config.batch_size, chans, side, side))
    return roofline_seconds(work, gpu.rates)


def _stay(module, *args, **kwargs):
    return module


def cell_gpu_hours(config, gpu: ReferenceGpu = REFERENCE_GPU) -> float | None:
    """Estimated GPU-hours of ``config``'s training on ``gpu`` (see module docstring); None if unknown."""
    seconds = step_seconds(config, gpu)
    if seconds is None:
        return None
    images = _training_images(config, DATASET_SHAPES[_dataset_name(config)][3])
    return seconds * config.epochs * (images // config.batch_size) / 3600


def gpu_hours_text(config) -> str:
    """The estimate as the dry run prints it: whole hours from 10 up, two significant digits
    below, ``<0.01`` under 36 seconds, ``?`` when unknown."""
    try:
        hours = cell_gpu_hours(config.resolved())
    except Exception:  # a cell that cannot be built from fake tensors is estimated as unknown, not an error
        return "?"
    if hours is None:
        return "?"
    if hours < 0.01:
        return "<0.01"
    return f"{hours:.0f}" if hours >= 10 else f"{hours:.2g}"
