"""Build a model by name from fabench's own registry, timm, or torchvision.

Resolution: a plain name is looked up in fabench's registry first, then timm, then
torchvision, so ``resnet20`` and ``alexnet`` are fabench's and ``resnet18`` is timm's. A prefix
forces the source: ``fabench:alexnet``, ``timm:resnet18``, ``tv:resnet18``. timm names may carry
a pretrained tag (``resnet18.a1_in1k``); no weights are ever fetched (``pretrained=False``,
``weights=None``).

Listing (:func:`list_archs`): fabench's names plain; timm's names plain (``timm:<name>`` if one
ever collides with a fabench name); torchvision's always as ``tv:<name>``, since most of them
also exist in timm. A pattern may use the prefixes too: ``'timm:res*'``, ``'fabench:*'``.

Input size: fabench's CNNs adapt to ``image_size``; timm and torchvision models get it as
``img_size`` / ``image_size`` when their constructor takes one (ViTs), and otherwise it is not
needed (global pooling). For ``in_chans`` != 3 timm adapts the stem itself; for torchvision the
first 3-channel convolution is replaced by a freshly initialised one with ``in_chans`` inputs.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator

from torch import nn

from fabench._registry import natural_key
from fabench.archs._registry import ARCHS
from fabench.errors import FabenchError, unknown_choice

SOURCES = ("fabench", "timm", "tv")

# torchvision models whose default output in training mode is not plain logits
_TV_EXTRA_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def split_source(name: str) -> tuple[str | None, str]:
    """``'timm:resnet18'`` -> ``('timm', 'resnet18')``; no prefix -> ``(None, name)``."""
    head, sep, tail = name.partition(":")
    if sep and head in SOURCES:
        return head, tail
    return None, name


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def _tv_names() -> list[str]:
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)  # classification models only


def _in_source(source: str, name: str) -> bool:
    if source == "fabench":
        return name in ARCHS
    if source == "timm":
        import timm

        return timm.is_model(name)
    return name in _tv_names()


def _names_in(source: str) -> list[str]:
    if source == "fabench":
        return list(ARCHS)
    return _timm_names() if source == "timm" else _tv_names()


def check_arch(name: str) -> tuple[str, str]:
    """Resolve ``name`` to ``(source, name_in_source)`` without building anything.

    Raises FabenchError listing the valid names, closest first, if nothing matches.
    """
    forced, bare = split_source(name)
    for source in (forced,) if forced else SOURCES:
        if _in_source(source, bare):
            return source, bare
    choices = [f"{forced}:{n}" for n in _names_in(forced)] if forced else list(list_archs())
    raise unknown_choice("architecture", name, choices)


#: Constructor options that load pretrained weights or a checkpoint: fabench trains from random
#: weights only, so they are refused rather than passed on.
WEIGHT_OPTIONS = ("weights", "pretrained", "weights_backbone", "pretrained_cfg", "pretrained_cfg_overlay",
                  "pretrained_strict", "checkpoint_path")
#: Constructor arguments fabench sets itself from the dataset and the run.
FIXED_OPTIONS = ("num_classes", "in_chans", "image_size", "img_size", "device", "dtype")


def _constructor_options(source: str, bare: str) -> list[str] | None:
    """The options architecture ``bare`` of ``source`` takes, or None when they cannot be listed
    (a constructor with ``**kwargs``); timm and torchvision models are built on the meta device
    (no memory, no weights) to find their class."""
    import inspect

    import torch

    if source == "fabench":
        build = ARCHS.get(bare).build
    else:
        try:
            with torch.device("meta"):
                build = type(_BUILDERS[source](bare, 10, 3, None, {}))
        except Exception:  # a model that cannot be built bare is checked when it is built
            return None
    parameters = inspect.signature(build).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.name not in (*FIXED_OPTIONS, "self") and p.kind is not p.VAR_POSITIONAL]


def refuse_weight_options(options: dict) -> None:
    """Refuse constructor options that would load pretrained weights or a checkpoint."""
    loading = [key for key in options if key in WEIGHT_OPTIONS]
    if loading:
        raise FabenchError(f"architecture option '{loading[0]}' would load pretrained weights; fabench trains "
                           "from random weights only", setting="arch_options")


def check_arch_options(name: str, options: dict) -> None:
    """Refuse options architecture ``name`` does not take, and options that would load weights."""
    source, bare = check_arch(name)
    if not options:
        return
    refuse_weight_options(options)
    takes = _constructor_options(source, bare)
    unknown = [key for key in options if key in FIXED_OPTIONS or (takes is not None and key not in takes)]
    if unknown:
        raise FabenchError(f"architecture '{bare}' has no option '{unknown[0]}'; it takes "
                           f"{', '.join(takes) if takes else 'no options'}", setting="arch_options")


def _build_fabench(name: str, num_classes: int, in_chans: int, image_size, options) -> nn.Module:
    build = ARCHS.get(name).build
    try:
        return build(num_classes=num_classes, in_chans=in_chans, image_size=image_size, **options)
    except TypeError as err:
        if options:
            raise FabenchError(
                f"architecture '{name}' does not take options {sorted(options)}: {err}"
            ) from None
        raise


def _build_timm(name: str, num_classes: int, in_chans: int, image_size, options) -> nn.Module:
    import timm

    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_chans, **options}
    if image_size is not None:
        try:
            return timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError:
            pass  # a CNN: no img_size argument, and any input size works
    return timm.create_model(name, **kwargs)


def _build_tv(name: str, num_classes: int, in_chans: int, image_size, options) -> nn.Module:
    import torchvision.models as tvm

    kwargs = {
        "weights": None,
        "num_classes": num_classes,
        **_TV_EXTRA_KWARGS.get(name, {}),
        **options,
    }
    model = None
    if image_size is not None:
        with contextlib.suppress(TypeError):  # a CNN: no image_size argument, any size works
            model = tvm.get_model(name, image_size=image_size, **kwargs)
    if model is None:
        model = tvm.get_model(name, **kwargs)
    if in_chans != 3:
        replace_stem(model, in_chans)
    return model


def _first_rgb_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return path, module
    raise FabenchError(f"cannot adapt {type(model).__name__} to other than 3 input channels")


def replace_stem(model: nn.Module, in_chans: int) -> None:
    """Swap the first 3-channel convolution for an identical one taking ``in_chans`` channels."""
    path, old = _first_rgb_conv(model)
    if old.groups != 1:
        raise FabenchError(
            f"cannot adapt grouped stem '{path}' of {type(model).__name__} to {in_chans} channels"
        )
    new = nn.Conv2d(
        in_chans,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        old.dilation,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path), attr, new)


_BUILDERS = {"fabench": _build_fabench, "timm": _build_timm, "tv": _build_tv}


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    image_size: int | None = None,
    **options,
) -> tuple[nn.Module, str]:
    """Build architecture ``name`` with random weights; return ``(model, source)``.

    ``source`` is "fabench", "timm" or "tv", the one actually used. ``image_size=None`` means
    the size the architecture is designed for (see each family). Extra ``options`` go to the
    constructor; options left at None are dropped, so unset CLI flags never reach it.
    """
    options = {key: value for key, value in options.items() if value is not None}
    refuse_weight_options(options)
    source, bare = check_arch(name)
    try:
        model = _BUILDERS[source](bare, num_classes, in_chans, image_size, options)
    except (TypeError, ValueError) as err:
        if not options:
            raise
        message = str(err).strip().splitlines()
        raise FabenchError(f"architecture '{bare}' does not take options {sorted(options)}: "
                           f"{type(err).__name__}: {message[0] if message else ''}", setting="arch_options") from None
    return model, source


def default_image_size(arch: str, dataset: str) -> int | None:
    """Input size to train ``arch`` on ``dataset`` with; None = the dataset's native size.

    An architecture defined for one size wins (``arch1`` -> 24); otherwise ImageNet -> 224.
    Only fabench's registry is consulted, so this never imports timm.
    """
    forced, bare = split_source(arch)
    if forced in (None, "fabench") and bare in ARCHS and ARCHS.get(bare).image_size:
        return ARCHS.get(bare).image_size
    return 224 if dataset == "imagenet" else None


def _pattern_sources(pattern: str) -> tuple[str, ...]:
    """Sources whose names ``pattern`` can match (avoids importing timm for ``'fabench:*'``)."""
    forced, _ = split_source(pattern)
    return (forced,) if forced else SOURCES


def _timm_modules() -> dict[str, str]:
    import timm

    return {
        model: module for module in timm.list_modules() for model in timm.list_models(module=module)
    }


def _entries(sources: tuple[str, ...]) -> Iterator[tuple[str, str, str, str]]:
    """Yield ``(listed_name, source, bare_name, description)`` for every architecture."""
    if "fabench" in sources:
        for name in ARCHS:
            yield name, "fabench", name, ARCHS.get(name).description
    if "timm" in sources:
        families = _timm_modules()
        for name in _timm_names():
            listed = f"timm:{name}" if name in ARCHS else name
            yield (
                listed,
                "timm",
                name,
                f"timm model ({families.get(name, '?')} family), random init",
            )
    if "tv" in sources:
        import torchvision.models as tvm

        for name in _tv_names():
            family = tvm.get_model_builder(name).__module__.rpartition(".")[2]
            yield f"tv:{name}", "tv", name, f"torchvision model ({family} family), random init"


def list_archs(pattern: str = "*") -> dict[str, str]:
    """``{name: one-line description}`` of every architecture matching fnmatch ``pattern``.

    A name matches if either its listed form or ``source:name`` matches, so ``'res*'``,
    ``'timm:res*'`` and ``'tv:*'`` all work. Sorted naturally (resnet20 before resnet110).
    """
    found = {
        listed: text
        for listed, source, bare, text in _entries(_pattern_sources(pattern))
        if fnmatch.fnmatchcase(listed, pattern) or fnmatch.fnmatchcase(f"{source}:{bare}", pattern)
    }
    return {name: found[name] for name in sorted(found, key=natural_key)}
