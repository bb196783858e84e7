"""fabench's own architectures: a named registry of builders, filled by the family modules.

Each family module (``arch1``, ``lenet``, ``cifar_resnet``, ``alexnet``) registers its
entry points here with :func:`register_arch`. A builder is called as
``build(num_classes=..., in_chans=..., image_size=..., **options)`` and returns a plain
``nn.Module`` whose output is logits ``[B, num_classes]``. ``image_size=None`` means "the size
this architecture was designed for".

An architecture may also declare what it trains in by default on a CPU with native bfloat16
(``cpu_amp``, ``cpu_channels_last``, and the measurement behind it, ``cpu_measured``): the run's
``--amp auto`` and unset ``--channels-last`` become these there (:mod:`fabench.train.recipes`).
Anything that declares nothing, and every timm and torchvision model, keeps fp32 and NCHW.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fabench._registry import Registry
from fabench.errors import FabenchError

#: What a CPU policy may choose: fp16 needs CUDA's gradient scaler.
CPU_AMP_MODES = ("off", "bf16")


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture: how to build it, what it is, which input size it expects."""

    build: Callable
    description: str
    #: Input side the architecture is defined for (arch1: 24); None = it takes the data's size.
    image_size: int | None = None
    #: Precision (``off`` or ``bf16``) and layout of its runs on a CPU with native bfloat16 when the
    #: run leaves them to fabench, and the measurement that chose them (docs/benchmarks.md).
    cpu_amp: str = "off"
    cpu_channels_last: bool = False
    cpu_measured: str = ""

    def __post_init__(self) -> None:
        if self.cpu_amp not in CPU_AMP_MODES:
            raise FabenchError(f"architecture cpu_amp must be one of {', '.join(CPU_AMP_MODES)}, got '{self.cpu_amp}'")
        if (self.cpu_amp, self.cpu_channels_last) != ("off", False) and not self.cpu_measured:
            raise FabenchError("an architecture that leaves fp32 NCHW on the CPU must say which measurement chose it (cpu_measured=...)")


ARCHS: Registry[ArchSpec] = Registry("architecture")


def register_arch(name: str, description: str, image_size: int | None = None, *, cpu_amp: str = "off",
                  cpu_channels_last: bool = False, cpu_measured: str = "") -> Callable:
    """Decorator registering ``fn`` as fabench architecture ``name``.

    ``cpu_amp`` and ``cpu_channels_last``: what its runs use on a CPU with native bf16 when they
    leave it to fabench (``--amp auto``), and ``cpu_measured`` the measurement that chose them;
    by default fp32 NCHW.
    """

    def decorator(fn: Callable) -> Callable:
        ARCHS.register(name, ArchSpec(fn, description, image_size, cpu_amp, cpu_channels_last, cpu_measured))
        return fn

    return decorator
