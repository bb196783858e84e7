"""Peak memory of one training step, on CUDA or on a Linux CPU.

CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``) minus what was
allocated before the step. CPU: the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``) minus the resident set before the step. glibc keeps freed memory in
its arenas, which makes that figure noisy, so CPU benchmarks run with
:data:`STEADY_MALLOC_ENV` set before the interpreter starts (:func:`ensure_steady_malloc`
re-executes the command once with it): large blocks are then mapped and unmapped directly and
the resident set follows the live tensors.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

import torch

STEADY_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "16384", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "1"}


def ensure_steady_malloc() -> None:
    """Re-execute this command with :data:`STEADY_MALLOC_ENV` unless it is already set."""
    if all(os.environ.get(k) == v for k, v in STEADY_MALLOC_ENV.items()):
        return
    if not os.path.exists("/proc/self/clear_refs"):
        return
    env = {**os.environ, **STEADY_MALLOC_ENV}
    os.execve(sys.executable, [sys.executable, "-m", "fabench", *sys.argv[1:]], env)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+)", status.read()).group(1)) / 1024


def step_peak_mib(step: Callable[[], None], device: torch.device) -> float:
    """Memory a call of ``step`` needs at its peak beyond what was held before it, in MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _status_mib("VmRSS")
    step()
    return _status_mib("VmHWM") - before


def tensor_mib(tensors) -> float:
    """Total size of the given tensors in MiB."""
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20
