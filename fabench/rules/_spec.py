"""Parsing a rule spec such as ``fa-usf-sn+const+ei`` into its rule class and modifier classes.

The rules and modifiers themselves are classes registered with :func:`fabench.rules.register_rule`
(built-ins in :mod:`fabench.rules.library`, others from plugins, :mod:`fabench.rules._plugins`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fabench.errors import FabenchError, unknown_choice
from fabench.rules._base import MODIFIERS, RULES, Modifier, Rule


@dataclass(frozen=True)
class RuleSpec:
    """A parsed rule spec: a rule class plus modifier names, in the order written."""

    base: type[Rule]
    modifiers: tuple[str, ...]

    @property
    def name(self) -> str:
        return "+".join((self.base.name, *self.modifiers))

    @property
    def modifier_classes(self) -> tuple[type[Modifier], ...]:
        return tuple(MODIFIERS.get(m) for m in self.modifiers)

    @property
    def parts(self) -> tuple:
        """The base rule class, then the modifier classes in the order written."""
        return (self.base, *self.modifier_classes)

    def option_keys(self) -> tuple[str, ...]:
        return tuple(key for part in self.parts for key in part.option_keys())


def _ensure_known() -> None:
    from fabench.rules import _plugins

    _plugins.load_entry_points()


def rule_family(spec: str) -> str:
    """``bp``, ``sign`` (sign-concordant), ``random`` (fixed random B), ``direct`` (DFA) or ``learned``."""
    return parse_rule(spec).base.family


def list_rules(pattern: str = "*") -> dict[str, str]:
    """Rule names matching an fnmatch ``pattern``, each with its one-line description."""
    _ensure_known()
    return {name: RULES.get(name).description for name in RULES.names(pattern)}


def list_modifiers() -> dict[str, str]:
    """Modifier names (written after ``+``) with their one-line descriptions."""
    _ensure_known()
    return {name: MODIFIERS.get(name).description for name in sorted(MODIFIERS._entries, key=_modifier_order)}


def _modifier_order(name: str) -> int:
    return list(MODIFIERS._entries).index(name)


def parse_rule(spec: str) -> RuleSpec:
    """Parse ``base[+modifier...]``; unknown or repeated parts raise a one-line error."""
    if not isinstance(spec, str) or not spec.strip():
        _ensure_known()
        raise FabenchError(f"a rule is needed, e.g. fa-usf-sn+const; valid rules: {', '.join(RULES)}")
    base_name, *mods = spec.strip().split("+")
    if base_name not in RULES or any(m not in MODIFIERS for m in mods):
        _ensure_known()
    base = RULES.get(base_name)
    for mod in mods:
        if mod not in MODIFIERS:
            raise unknown_choice("rule modifier", f"+{mod}", [f"+{m}" for m in MODIFIERS])
    if len(set(mods)) != len(mods):
        raise FabenchError(f"rule '{spec}' repeats a modifier; give each of "
                           f"{', '.join('+' + m for m in MODIFIERS)} at most once")
    return RuleSpec(base, tuple(mods))


def rule_class(name: str) -> type[Rule]:
    """The registered class of rule ``name`` (to subclass a built-in, e.g. ``rule_class("dfa")``)."""
    if name not in RULES:
        _ensure_known()
    return RULES.get(name)
