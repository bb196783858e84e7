"""Architectures: fabench's own (arch1, lenet, CIFAR ResNets, alexnet), timm's and torchvision's.

Public surface (see ``_factory`` for how names resolve)::

    create_model(name, *, num_classes, in_chans=3, image_size=None, **options) -> (model, source)
    check_arch(name) -> (source, name_in_source)
    list_archs(pattern="*") -> {name: description}
    default_image_size(arch, dataset) -> int | None
    reinitialise(layers, scheme, scale)            # the run's --weight-init

Every model returns logits ``[B, num_classes]`` and is a plain ``nn.Module`` tree of Conv2d,
Linear, BatchNorm, pooling and activation modules, which is what the learning rules rewrite.
Importing this package registers the family modules.
"""

from fabench.archs import alexnet, arch1, cifar_resnet, lenet, mlp  # noqa: F401  (registration)
from fabench.archs._factory import (
    SOURCES,
    check_arch,
    check_arch_options,
    create_model,
    default_image_size,
    list_archs,
    split_source,
)
from fabench.archs._registry import ARCHS, ArchSpec, register_arch
from fabench.archs._weight_init import WEIGHT_INITS, check_weight_init, reinitialise

__all__ = [
    "ARCHS",
    "SOURCES",
    "WEIGHT_INITS",
    "ArchSpec",
    "check_arch",
    "check_arch_options",
    "check_weight_init",
    "create_model",
    "default_image_size",
    "list_archs",
    "register_arch",
    "reinitialise",
    "split_source",
]
