"""glibc malloc settings for training: freed activation memory stays in the process.

With glibc's defaults, the memory a training step frees at the top of the heap goes back to the
kernel and the next step faults it in again, page by page, and every block above the mmap
threshold is mapped and unmapped on each use: on a 2-core CPU that is a sixth of the CPU time
spent in the kernel. :func:`keep_freed_memory` turns off trimming and separately mapped blocks
and pads every heap growth (``mallopt``, which takes effect at once, so it can run after the
interpreter started). The cost is a few tens of MiB of
resident memory that the process keeps between steps.

Nothing is changed when the user or a benchmark set the allocator through ``MALLOC_*``
environment variables (the memory benchmarks' steady mode does), when ``FABENCH_MALLOC=default``
is set, or when the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

#: mallopt parameter -> value: no block is mapped on its own (a mapped block is unmapped when
#: freed and faulted in again when next allocated; glibc still maps when the heap cannot grow),
#: the heap is never trimmed (the largest value mallopt's int argument takes) and grows in
#: 512 MiB steps.
TRAINING_MALLOC = {
    _M_MMAP_MAX: 0,
    _M_TRIM_THRESHOLD: (1 << 31) - 1,
    _M_TOP_PAD: 512 << 20,
}


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
    except (OSError, AttributeError):
        return None
    return libc


def allocator_set_by_environment() -> bool:
    """Whether the environment already decides malloc's behaviour."""
    if os.environ.get("FABENCH_MALLOC", "") == "default":
        return True
    return any(name.startswith("MALLOC_") for name in os.environ)


def keep_freed_memory() -> str:
    """Apply :data:`TRAINING_MALLOC` in this process; return what malloc runs with, in words."""
    if allocator_set_by_environment():
        return "malloc as set by the environment"
    libc = _glibc()
    if libc is None:
        return "malloc of the C library (not glibc: left as it is)"
    if not all(libc.mallopt(param, value) == 1 for param, value in TRAINING_MALLOC.items()):
        return "glibc malloc (some settings refused: defaults kept for those)"
    return "glibc malloc keeping freed memory (no trimming, no separately mapped blocks, 512 MiB top pad)"
