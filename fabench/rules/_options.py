"""Rule options: the shared declarations, the flag spellings, and resolving given values against a spec.

A rule declares its options (:class:`fabench.rules.Option`); :func:`resolve_settings` turns the
values a user gave (``--rule-option KEY=VALUE``, ``rule_options:``, or a dedicated flag such as
``--feedback-scale``) into each part's validated settings, refusing unknown keys, bad values and
options the chosen rule does not use, each with one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from fabench.errors import FabenchError, unknown_choice
from fabench.rules import _init
from fabench.rules._base import Option, every_option_key, users_of
from fabench.setting_values import RULE_DEFAULTS

FEEDBACK_SCALE = Option("scale", None, "std (fa) or magnitude scale (sign rules) of the feedback; default from init",
                        type=float, check=lambda v: v > 0, must="positive", label="feedback scale")
FEEDBACK_INIT = Option("init", "auto", "how the feedback scale is chosen: auto (the rule's source), kaiming, xiao, "
                       "xavier or weight (the forward weight's own std)", choices=_init.INIT_CHOICES,
                       label="feedback init")


def feedback_std(layer, settings, default: str = "kaiming") -> float:
    """The feedback scale of ``layer``: the user's ``scale``, else ``init`` (``auto``: ``default``)."""
    if settings.scale is not None:
        return settings.scale
    return layer.init_std(default if settings.init == "auto" else settings.init)


@dataclass(frozen=True)
class RuleOptions:
    """The rule options that also have their own flag (``--feedback-scale`` is option ``scale``), at the
    defaults the flags have; a flag left at its default is not an option given."""

    scale: float | None = RULE_DEFAULTS["scale"]
    init: str = RULE_DEFAULTS["init"]
    sn_norm: str = RULE_DEFAULTS["sn_norm"]
    ei_mode: str = RULE_DEFAULTS["ei_mode"]
    mirror_lr: float = RULE_DEFAULTS["mirror_lr"]
    mirror_decay: float = RULE_DEFAULTS["mirror_decay"]
    mirror_steps: int = RULE_DEFAULTS["mirror_steps"]
    mirror_every: str = RULE_DEFAULTS["mirror_every"]
    mirror_warmup: int | None = RULE_DEFAULTS["mirror_warmup"]


#: The flag and run setting that spell each of those options.
FLAGS = {f.name: "--" + {"scale": "feedback-scale", "init": "feedback-init"}.get(f.name, f.name.replace("_", "-"))
         for f in fields(RuleOptions)}
SETTINGS = {f.name: {"scale": "feedback_scale", "init": "feedback_init"}.get(f.name, f.name) for f in fields(RuleOptions)}


def given_by_flags(values: Mapping[str, Any]) -> dict[str, Any]:
    """The flag-spelled options whose value differs from the flag's default."""
    defaults = RuleOptions()
    return {k: v for k, v in values.items() if k in FLAGS and v != getattr(defaults, k)}


def _unused(key: str, spec, by_flag: bool) -> FabenchError:
    label = FLAGS[key] if by_flag else f"rule option {key}"
    setting = SETTINGS.get(key, key) if by_flag else "rule_options"
    users = users_of(key)
    if not users:
        return unknown_choice(f"option of rule {spec.name} (--rule-option)", key, spec.option_keys() or ["(none)"])
    if len(users) == 1:
        user = f"rules with the {users[0]} modifier" if users[0].startswith("+") else users[0]
        return FabenchError(f"{label} applies to {user} only, not {spec.name}", setting=setting)
    return FabenchError(f"{label} does nothing under {spec.name}; the rules that use it: {', '.join(users)}",
                        setting=setting)


def resolve_settings(spec, options: Mapping[str, Any] | None = None, flags: Mapping[str, Any] | None = None) -> list[dict]:
    """Each part's settings (base rule first, then the modifiers in ``spec`` order).

    ``options``: values given as rule options (every key must be used by a part of ``spec``);
    ``flags``: values given through a dedicated flag or :func:`fabench.rules.apply`'s keyword (a
    value equal to the flag's default counts as not given). A key given both ways is refused.
    """
    options, flags = dict(options or {}), given_by_flags(flags or {})
    for key in options:
        if key in flags:
            raise FabenchError(f"rule option {key} is given twice: as {FLAGS[key]} and as --rule-option {key}=...; "
                               "give it once", setting="rule_options")
    given = {**{k: (v, True) for k, v in flags.items()}, **{k: (v, False) for k, v in options.items()}}
    used = set(spec.option_keys())
    for key, (_, by_flag) in given.items():
        if key not in used:
            if not by_flag and key not in every_option_key():
                raise unknown_choice(f"option of rule {spec.name} (--rule-option)", key,
                                     spec.option_keys() or ["(none: this rule takes no options)"])
            raise _unused(key, spec, by_flag)
    settings = []
    for part in spec.parts:
        values = {}
        for option in part.options:
            value, by_flag = given.get(option.key, (option.default, True))
            try:
                values[option.key] = (option if by_flag else replace(option, label="")).parse(value)
            except FabenchError as error:
                raise FabenchError(str(error), setting=SETTINGS.get(option.key, option.key) if by_flag
                                   else "rule_options") from None
        settings.append(values)
    return settings


def check_rule_options(rule: str, options: Mapping[str, Any] | None = None, **flags) -> list[dict]:
    """Resolve ``options`` and flag-spelled ``flags`` against ``rule`` (a spec string); one-line errors."""
    from fabench.rules._spec import parse_rule

    return resolve_settings(parse_rule(rule), options, flags)
