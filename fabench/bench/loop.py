"""``fabench bench loop``: training throughput of ``fabench run`` against a hand-written loop.

Both sides train the same architecture, initialised from the same seed, on the same images
with the same augmentation, optimizer, batch size, precision and memory layout, in this
process. The fabench side is :func:`fabench.train.run` under ``bp`` (into a temporary results
folder); its figure is the run's recorded training throughput (training steps only, as in
runs.csv: test evaluation and checkpoints are outside it). The baseline is the shortest honest
PyTorch loop: the uint8 training set on the device, per-epoch ``randperm`` slices, per-image
random crop and flip by indexing, normalisation, forward, loss, backward, step (no schedule,
no metrics). Rounds alternate which side goes first, so slow drift of a shared machine falls
on both; the first round is a warm-up and is discarded.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from fabench.train.config import RunConfig
from fabench.train.device import autocast, resolve_device, synchronize


@dataclass
class LoopFigures:
    """Images per second of each side, one value per timed round."""

    fabench: list[float]
    baseline: list[float]

    @property
    def ratio(self) -> float:
        return statistics.mean(self.fabench) / statistics.mean(self.baseline)

    @property
    def best_ratio(self) -> float:
        """Fastest round against fastest round: the figure least affected by other load."""
        return max(self.fabench) / max(self.baseline)

    @property
    def median_paired_ratio(self) -> float:
        return statistics.median(self.paired_ratios)

    @property
    def paired_ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.fabench, self.baseline, strict=True)]


def _fabench_images_per_s(config: RunConfig) -> float:
    from fabench.train import run

    with tempfile.TemporaryDirectory(prefix="fabench-bench-") as results:
        result = run(replace(config, results_dir=results), force=True)
    return float(result.row["images_per_s"])


def _augment(x: torch.Tensor, side: int, pad: int) -> torch.Tensor:
    """Random ``side`` crop (after zero padding) and horizontal flip, per image, by indexing."""
    n, room = x.shape[0], x.shape[-1] + 2 * pad - side
    if pad:
        x = F.pad(x, (pad,) * 4)
    corner = torch.randint(0, room + 1, (n, 2), device=x.device)
    span = torch.arange(side, device=x.device)
    rows, cols = (corner[:, 0:1] + span)[:, :, None], (corner[:, 1:2] + span)[:, None, :]
    x = x[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(n, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _baseline_images_per_s(config: RunConfig, dataset, device: torch.device) -> float:
    """The hand-written loop: same model, data and optimizer, nothing else."""
    from fabench.archs import create_model
    from fabench.data import AUGMENTATIONS

    policy = AUGMENTATIONS[dataset.augment]
    side = policy.crop or dataset.native_size
    torch.manual_seed(config.seed)
    model, _ = create_model(config.arch, num_classes=dataset.num_classes, in_chans=dataset.in_chans,
                            image_size=dataset.image_size)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=layout).train()
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    x_all, y_all = dataset.x_train.to(device), dataset.y_train.to(device)
    mean = torch.tensor(dataset.mean, device=device).view(1, -1, 1, 1) * 255
    std = torch.tensor(dataset.std, device=device).view(1, -1, 1, 1) * 255
    steps = x_all.shape[0] // config.batch_size
    synchronize(device)
    start = time.perf_counter()
    for _ in range(config.epochs):
        order = torch.randperm(x_all.shape[0], device=device)
        for i in range(steps):
            index = order[i * config.batch_size:(i + 1) * config.batch_size]
            x = _augment(x_all[index], side, policy.pad)
            x = ((x.float() - mean) / std).contiguous(memory_format=layout)
            with autocast(config.amp, device):
                loss = F.cross_entropy(model(x), y_all[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    synchronize(device)
    return steps * config.batch_size * config.epochs / (time.perf_counter() - start)


def run_loop_benchmark(config: RunConfig, rounds: int = 3) -> LoopFigures:
    """Alternate fabench and the baseline ``rounds`` times (after one warm-up round of each)."""
    from fabench.train.session import load_data

    if config.optimizer != "sgd" or config.rule != "bp":
        raise ValueError("the loop benchmark compares bp with SGD against a plain SGD loop")
    device = resolve_device(config.device)
    dataset = load_data(config)  # the very images and policy the run loads
    figures = LoopFigures([], [])
    for index in range(rounds + 1):
        sides = [("fabench", lambda: _fabench_images_per_s(config)),
                 ("baseline", lambda: _baseline_images_per_s(config, dataset, device))]
        for name, measure in sides if index % 2 == 0 else reversed(sides):
            value = measure()
            if index:
                getattr(figures, name).append(value)
    return figures
