"""Wall-clock timing of device work, shared by the benchmarks' rate measurements."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from fabench.train.device import synchronize


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 3) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up call, queued device work included."""
    fn()
    runs = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)
