"""``apply``: attach a rule to every Conv2d and Linear of any model; the handle undoes it."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from torch import nn

from fabench.errors import FabenchError
from fabench.rules import _attention, _layers
from fabench.rules._handle import FeedbackHandle
from fabench.rules._options import FLAGS, resolve_settings
from fabench.rules._spec import parse_rule
from fabench.rules._tiles import parse_feedback_memory


def covered_layers(model: nn.Module, exclude=()) -> dict[str, nn.Module]:
    """Every Conv2d and Linear of ``model`` by module name, minus fnmatch ``exclude`` patterns."""
    return {
        name: module for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
        and not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)
    }


def _check_attachable(model: nn.Module, layers: dict[str, nn.Module]) -> None:
    if not layers:
        raise FabenchError(f"{type(model).__name__} has no nn.Conv2d or nn.Linear layer a rule could act on "
                           "(or --exclude removed them all)")
    _attention.refuse_uncalled(model, layers)
    attached = [n for n, m in layers.items() if _layers.LAYER_ATTR in m.__dict__]
    if attached:
        raise FabenchError(f"layer '{attached[0]}' already carries a rule; call handle.remove() first")


def apply(model: nn.Module, rule: str, *, seed: int = 0, exclude=(), options: Mapping[str, Any] | None = None,
          feedback_memory: str = "auto", input_shape: tuple[int, ...] | None = None, **flags) -> FeedbackHandle:
    """Attach feedback ``rule`` (e.g. ``"fa-usf-sn+const"``) to every Conv2d/Linear of ``model``.

    ``options``: the rule's options by key (``fabench ls rules`` lists each rule's; unknown keys,
    bad values and options the rule does not use are refused). The options that also have a flag
    may be passed as keywords too, e.g. ``scale=0.05`` (a keyword left at its flag's default is
    ignored): ``scale`` (the feedback's std or magnitude scale), ``init`` (``auto``, ``kaiming``,
    ``xiao``, ``xavier``, ``weight``), ``sn_norm`` (``fro``, ``spectral``), ``ei_mode`` (``zero``,
    ``keep-sign``), ``mirror_lr``, ``mirror_decay``, ``mirror_steps``, ``mirror_every``,
    ``mirror_warmup`` (the weight mirror).

    ``exclude``: fnmatch patterns of module names left on exact backprop. ``feedback_memory``
    (``auto``, ``materialised``, ``tiled`` or a size such as ``512MB``) decides whether the direct
    rules' matrices are held or redrawn in tiles during backward; ``input_shape`` (e.g.
    ``(3, 224, 224)``) lets their plan be made at once, by a batch-1 probe forward.
    """
    spec = parse_rule(rule)
    unknown = [k for k in flags if k not in FLAGS]
    if unknown:
        raise TypeError(f"apply() got an unexpected keyword argument '{unknown[0]}'")
    settings = resolve_settings(spec, options, flags)
    parse_feedback_memory(feedback_memory)
    layers = covered_layers(model, exclude)
    _check_attachable(model, layers)
    base = spec.base(settings[0], seed)
    modifiers = tuple(cls(values, seed) for cls, values in zip(spec.modifier_classes, settings[1:], strict=True))
    ordered = sorted(modifiers, key=lambda m: m.step_order)
    rule_layers = {}
    for name, module in layers.items():
        layer = _layers.RuleLayer(name, module, seed, _layers.uses_own_forward(module), base, modifiers)
        base.init_layer(layer)
        for modifier in ordered:
            modifier.init_layer(layer)
        _layers.install_forward(module, name, layer)
        rule_layers[name] = layer
    excluded = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in layers]
    handle = FeedbackHandle(spec=spec, settings=settings, seed=seed, layers=layers, excluded=excluded,
                            base_rule=base, modifier_rules=modifiers, rule_layers=rule_layers)
    handle._hooks += base.attach_model(model, rule_layers, input_shape=input_shape, feedback_memory=feedback_memory)
    return handle

