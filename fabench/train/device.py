"""Where and in what precision a run computes: device choice, autocast, determinism.

``--device auto`` takes the first CUDA device when there is one, else the CPU. ``--amp bf16``
autocasts forward passes to bfloat16 (CPU or CUDA); ``--amp fp16`` autocasts to float16 and
scales the loss with a GradScaler, which needs CUDA. BatchNorm and the loss stay in float32
under autocast (PyTorch's autocast policy). ``--deterministic`` asks PyTorch for deterministic
kernels for the duration of the run and restores the previous setting afterwards, so several
runs in one process do not leak settings into each other.

``--amp auto`` is decided by :mod:`fabench.train.recipes`; what it asks of the machine is here:
whether the run's device is the CPU (:func:`runs_on_cpu`) and whether that CPU computes bfloat16
in hardware (:func:`cpu_has_native_bf16`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from fabench.errors import FabenchError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cuda_device_count() -> int:
    """How many CUDA devices this process can use (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a device that exists here, or raise FabenchError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FabenchError(f"--device must be auto, cpu, cuda or cuda:N, got '{name}'") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise FabenchError(f"--device must be auto, cpu, cuda or cuda:N, got '{name}'")
    count = cuda_device_count()
    if count == 0:
        raise FabenchError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if device.index is not None and device.index >= count:
        raise FabenchError(f"--device {name}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
    return device


def runs_on_cpu(device: str) -> bool:
    """True if ``--device device`` puts a run on this machine's CPU: ``cpu``, or ``auto`` without CUDA."""
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


#: /proc/cpuinfo flags of x86 CPUs that compute bfloat16 in hardware (AVX-512 BF16, AMX).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on a Linux x86 CPU with AVX-512 BF16 or AMX whose bfloat16 kernels torch's oneDNN uses.

    Only there was bf16 measured faster than fp32 (docs/benchmarks.md). oneDNN alone also says yes
    on AVX-512 CPUs that emulate bfloat16, hence the CPU flags; on other systems (no
    /proc/cpuinfo) and other CPUs the answer is no, and runs stay in fp32.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return False
    flags = {flag for line in lines if line.startswith("flags") for flag in line.partition(":")[2].split()}
    if not flags & NATIVE_BF16_FLAGS:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def check_amp(amp: str, device: torch.device) -> None:
    """fp16 needs CUDA (GradScaler); bf16 and off work everywhere."""
    if amp == "fp16" and device.type != "cuda":
        raise FabenchError("--amp fp16 needs a CUDA device; use --amp bf16 or --amp off on the CPU")


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for forward passes (a no-op context when amp is off)."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def make_grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (a disabled scaler is a pass-through)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock readings mean what they say."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_device(device: torch.device) -> str:
    """A human-readable device name for the manifest and runs.csv."""
    if device.type == "cuda":
        return f"{device}:{torch.cuda.get_device_name(device)}"
    import platform

    return f"cpu:{platform.processor() or platform.machine()}:{torch.get_num_threads()}threads"


def _set_deterministic(enabled: bool) -> None:
    """Switch deterministic algorithms only on a change: the call imports torch's compiler
    stack (seconds per process), which a grid worker would otherwise pay for every cell."""
    if torch.are_deterministic_algorithms_enabled() != enabled:
        torch.use_deterministic_algorithms(enabled)


@contextlib.contextmanager
def numerics(deterministic: bool) -> Iterator[None]:
    """Deterministic kernels (and no cuDNN autotuning) inside the block when asked.

    Without ``deterministic``, cuDNN benchmarking picks the fastest kernels, which may differ
    from run to run in the last bits. PyTorch's debugging aid of filling every new tensor with
    NaN under deterministic mode is turned off: it costs time and changes no result.
    """
    import torch.utils.deterministic as fill

    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        fill.fill_uninitialized_memory,
    )
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    _set_deterministic(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    fill.fill_uninitialized_memory = False
    try:
        yield
    finally:
        _set_deterministic(previous[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, fill.fill_uninitialized_memory = previous[1:]
