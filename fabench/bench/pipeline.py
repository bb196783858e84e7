"""``fabench bench pipeline``: images/s one core turns into training crops, per folder pipeline.

The benchmark writes its own JPEG folder (photo-like 500×375 images, ImageNet's typical size)
in a temporary directory, or reads a given one, and times each pipeline over the same files in
one process with one thread, visiting the pipelines in a rotated order each round so that the
drift of a shared machine falls on all of them alike. Reported: images/s per core of each
pipeline (median over rounds) and, per round, its ratio to the reference measured in that
round (the paired ratio; median over rounds).

Pipelines (a DataLoader worker's share of one training image; ``RandomResizedCrop(size)`` and
a horizontal flip in every one, drawn the same way):

* ``reference``: the transform fabench's folder datasets used to run in their workers: PIL
  decode, crop and resize, flip, ``ToTensor``, ``Normalize``; float32 out;
* ``cpu-run``: what workers do for a run on the CPU: decode (at reduced scale when the crop
  allows), crop and resize, flip, to uint8 (:class:`fabench.data.TrainCrop`); the run's process
  normalises;
* ``gpu-run``: what workers do for a run on a GPU: decode and cut out the crop's region as
  uint8 (:class:`fabench.data.TrainRegion`); the GPU resizes, flips and normalises;
* ``gpu-decode``: what workers do with ``decode="gpu"``: read the file's bytes and draw the
  crop (:class:`fabench.data.JpegPlan`); the GPU decodes (``torchvision.io.decode_jpeg``).

The GPU's share is not counted here: it runs on the GPU, and whether it keeps up is what
``tools/gpu_check_loader.sh`` measures.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: ImageNet's typical photo: 500×375 (its most common size), JPEG quality 90.
PHOTO_SIZE = (500, 375)


def photo_like(rng: np.random.Generator, size: tuple[int, int] = PHOTO_SIZE) -> Image.Image:
    """Smooth shapes, edges and fine texture, so the JPEG is about as large as a real photo's."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(size)
    pixels = np.zeros((height, width, 3))
    for _ in range(6):  # a few broad waves of random orientation and colour
        fx, fy, phase = rng.uniform(-12, 12), rng.uniform(-12, 12), rng.uniform(0, 6.3)
        pixels += rng.uniform(10, 40, 3) * np.sin(fx * x + fy * y + phase)[..., None]
    cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.6), rng.uniform(0.1, 0.3)
    pixels += np.where(((x - cx) ** 2 + (y - cy) ** 2 < r * r)[..., None], rng.uniform(-60, 60, 3), 0)
    pixels += rng.normal(0, 19, pixels.shape)  # texture and noise: files of about 94 KB, as ImageNet's
    return Image.fromarray(np.clip(pixels + 128, 0, 255).astype(np.uint8))


def write_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` photo-like JPEGs in ``folder``; returns their paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{index:05d}.jpg"
        photo_like(rng).save(path, quality=90)
        paths.append(path)
    return paths


def reference_transform(size: int) -> Callable:
    """The float transform folder datasets ran in their workers (PIL decode included)."""
    from torchvision import transforms

    from fabench.data import IMAGENET_MEAN, IMAGENET_STD

    compose = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return lambda path: compose(Image.open(path).convert("RGB"))


def _worker_transform(transform) -> Callable:
    from fabench.data import open_lazily

    return lambda path: transform(open_lazily(str(path)))


def pipelines(size: int) -> dict[str, Callable]:
    """Name -> function of one JPEG path doing a worker's share of one training crop."""
    from fabench.data import JpegPlan, TrainCrop, TrainRegion

    return {"reference": reference_transform(size), "cpu-run": _worker_transform(TrainCrop(size)),
            "gpu-run": _worker_transform(TrainRegion(size)), "gpu-decode": _worker_transform(JpegPlan(train=True))}


@dataclass
class PipelineFigures:
    """Images/s per round of each pipeline, and each round's ratio to the reference."""

    rates: dict[str, list[float]] = field(default_factory=dict)

    def median_rate(self, name: str) -> float:
        return statistics.median(self.rates[name])

    def paired_ratios(self, name: str) -> list[float]:
        return [mine / ref for mine, ref in zip(self.rates[name], self.rates["reference"], strict=True)]


def _time_over(function: Callable, paths: list[Path]) -> float:
    """Images/s of ``function`` over ``paths`` (one pass)."""
    start = time.perf_counter()
    for path in paths:
        function(path)
    return len(paths) / (time.perf_counter() - start)


def run_pipeline_benchmark(paths: list[Path], size: int, rounds: int, seed: int = 0) -> PipelineFigures:
    """Time every pipeline over ``paths`` for ``rounds`` rounds (after one warm-up pass of a few
    images each), in a rotated order; one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        named = pipelines(size)
        names = list(named)
        for function in named.values():
            _time_over(function, paths[:4])
        figures = PipelineFigures({name: [] for name in names})
        for round_index in range(rounds):
            torch.manual_seed(seed + round_index)
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in order:
                figures.rates[name].append(_time_over(named[name], paths))
        return figures
    finally:
        torch.set_num_threads(threads)
