"""fabench's own architectures: a named registry of builders, filled by the family modules.

Each family module (``arch1``, ``lenet``, ``cifar_resnet``, ``alexnet``) registers its
entry points here with :func:`register_arch`. A builder is called as
``build(num_classes=..., in_chans=..., image_size=..., **options)`` and returns a plain
``nn.Module`` whose output is logits ``[B, num_classes]``. ``image_size=None`` means "the size
this architecture was designed for".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fabench._registry import Registry


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture: how to build it, what it is, which input size it expects."""

    build: Callable
    description: str
    #: Input side the architecture is defined for (arch1: 24); None = it takes the data's size.
    image_size: int | None = None


ARCHS: Registry[ArchSpec] = Registry("architecture")


def register_arch(name: str, description: str, image_size: int | None = None) -> Callable:
    """Decorator registering ``fn`` as fabench architecture ``name``."""

    def decorator(fn: Callable) -> Callable:
        ARCHS.register(name, ArchSpec(fn, description, image_size))
        return fn

    return decorator
