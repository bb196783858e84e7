"""The choices RULES.md leaves open, as one validated value object (see :func:`fabench.rules.apply`)."""

from __future__ import annotations

from dataclasses import dataclass

from fabench.errors import FabenchError
from fabench.rules import _init, _modifiers
from fabench.rules._spec import RULES, RuleSpec

SN_NORMS = ("fro", "spectral")


@dataclass(frozen=True)
class RuleOptions:
    """Choices RULES.md leaves open, with their defaults (see :func:`apply`)."""

    scale: float | None = None
    init: str = "auto"
    sn_norm: str = "fro"
    ei_mode: str = "zero"

    def validate(self) -> RuleOptions:
        for value, choices, what in ((self.init, _init.INIT_CHOICES, "init"), (self.sn_norm, SN_NORMS, "sn_norm"),
                                     (self.ei_mode, _modifiers.EI_MODES, "ei_mode")):
            if value not in choices:
                setting = {"init": "feedback_init"}.get(what, what)
                raise FabenchError(f"feedback {what} must be one of {', '.join(choices)}, got '{value}'", setting=setting)
        if self.scale is not None and not self.scale > 0:
            raise FabenchError(f"feedback scale must be positive, got {self.scale}", setting="feedback_scale")
        return self

    def check_used_by(self, spec: RuleSpec) -> RuleOptions:
        """Refuse options the rule would ignore (they would change run_id and nothing else)."""
        unscaled = spec.base.kind in ("bp", "sn")
        users = ", ".join(n for n in RULES if RULES.get(n).kind not in ("bp", "sn"))
        if unscaled and self.scale is not None:
            raise FabenchError(f"--feedback-scale does nothing under {spec.name} (its B is W or follows W's norm); "
                               f"the rules that use it: {users}", setting="feedback_scale")
        if unscaled and self.init != "auto":
            raise FabenchError(f"--feedback-init does nothing under {spec.name} (its B is W or follows W's norm); "
                               f"the rules that use it: {users}", setting="feedback_init")
        if self.sn_norm != "fro" and spec.base.kind != "sn":
            raise FabenchError(f"--sn-norm applies to fa-usf-sn only, not {spec.name}", setting="sn_norm")
        if self.ei_mode != "zero" and "ei" not in spec.modifiers:
            raise FabenchError(f"--ei-mode applies to rules with the +ei modifier only, not {spec.name}", setting="ei_mode")
        return self
