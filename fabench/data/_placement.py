"""Where a dataset's images live: device memory, host memory, or a memory-mapped file.

Small datasets are held in host memory and copied to the device once. A split too large for
either is streamed: its images stay in a memory-mapped ``.npy`` file (or in host memory when
only the device is too small) and each batch is gathered there and copied to the device.

``FABENCH_DATA_STREAM`` decides: ``auto`` (the default) streams a split that does not fit,
``always`` streams every split that can be memory-mapped (Downsampled ImageNet's), ``never``
holds every split in memory as before. "Fits" keeps room for the rest of the run: the split
plus :func:`host_headroom` within the host's available memory, at most half of the device's
free memory.

Memory-mapped tensors are recorded here (:func:`map_npy`, :func:`is_mapped`) so that the
loader, the statistics and the subsets can tell them from tensors held in memory.
"""

from __future__ import annotations

import os
import sys
import weakref
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fabench.errors import FabenchError

MODE_VARIABLE = "FABENCH_DATA_STREAM"
MODES = ("auto", "always", "never")
GIB = 1 << 30

#: storage address -> the memory map behind it (dead once the map is closed)
_MAPPED: dict[int, weakref.ref] = {}


def stream_mode() -> str:
    """``FABENCH_DATA_STREAM``: auto, always or never."""
    mode = os.environ.get(MODE_VARIABLE, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise FabenchError(f"{MODE_VARIABLE}={mode} is not one of {', '.join(MODES)}")
    return mode


def gb(nbytes: int) -> str:
    """Bytes as decimal gigabytes, for messages."""
    return f"{nbytes / 1e9:.1f} GB"


def note(message: str) -> None:
    """One line on stderr about where data lives (the run's output goes to stdout)."""
    print(f"fabench: {message}", file=sys.stderr, flush=True)


def host_memory() -> tuple[int, int]:
    """(available, total) bytes of host memory: MemAvailable and MemTotal from /proc/meminfo,
    else free and physical pages."""
    fields = {}
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                fields[name] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if "MemAvailable" in fields and "MemTotal" in fields:
        return fields["MemAvailable"], fields["MemTotal"]
    page = os.sysconf("SC_PAGE_SIZE")
    return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page


def host_headroom(total: int) -> int:
    """Host memory left for everything but the split: an eighth of it, at least 4 GiB."""
    return max(4 * GIB, total // 8)


def fits_host(nbytes: int) -> tuple[bool, int]:
    """Whether ``nbytes`` can be held in host memory, and the bytes available."""
    available, total = host_memory()
    return nbytes + host_headroom(total) <= available, available


def fits_device(nbytes: int, device: torch.device) -> tuple[bool, int]:
    """Whether ``nbytes`` can be held on a CUDA ``device`` (at most half its free memory, the
    other half left to the model), and the bytes free there."""
    free, _ = torch.cuda.mem_get_info(device)
    return 2 * nbytes <= free, free


def map_npy(path: Path) -> Tensor:
    """A ``.npy`` file as a tensor backed by a copy-on-write memory map (reads come from the
    file; a write, should one happen, stays in this process)."""
    array = np.load(path, mmap_mode="c", allow_pickle=False)
    tensor = torch.from_numpy(array)
    _MAPPED[tensor.untyped_storage().data_ptr()] = weakref.ref(array)
    return tensor


def is_mapped(tensor: Tensor) -> bool:
    """True for a tensor (or a view of one) made by :func:`map_npy`."""
    if tensor.device.type != "cpu":
        return False
    ref = _MAPPED.get(tensor.untyped_storage().data_ptr())
    return ref is not None and ref() is not None


def place(images: Tensor, device: torch.device, what: str) -> Tensor:
    """``images`` on ``device`` where they belong there, else left on the host to be streamed:
    a memory-mapped split stays mapped for a CPU run (and under ``always``); under ``auto`` a
    split that does not fit on a CUDA device stays on the host."""
    mapped = is_mapped(images)
    if device.type == "cpu":
        return images if mapped else images.to(device)
    mode = stream_mode()
    if mode == "always" and mapped:
        return images
    if mode != "auto" or device.type != "cuda":
        return images.to(device)
    nbytes = images.numel() * images.element_size()
    fits, free = fits_device(nbytes, device)
    if fits:
        return images.to(device)
    note(f"{what} ({gb(nbytes)}) streamed to {device} batch by batch: {gb(free)} free there "
         f"({MODE_VARIABLE}=never holds it in device memory)")
    return images


def stream_from_disk(nbytes: int, reading: int) -> tuple[bool, str]:
    """Whether a split of ``nbytes`` that needs ``reading`` more bytes while it is read into
    memory should be streamed from a memory-mapped file instead, and why (for the note)."""
    mode = stream_mode()
    if mode != "auto" or not nbytes:
        return mode == "always" and nbytes > 0, f"{MODE_VARIABLE}={mode}"
    fits, available = fits_host(nbytes + reading)
    return not fits, (f"{gb(available)} of memory available; {MODE_VARIABLE}=never holds it in memory")
