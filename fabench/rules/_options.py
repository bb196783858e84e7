"""The choices RULES.md leaves open, as one validated value object (see :func:`fabench.rules.apply`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fabench.errors import FabenchError
from fabench.rules import _init, _modifiers
from fabench.rules._learned import MIRROR_EVERY
from fabench.rules._spec import RULES, RuleSpec

SN_NORMS = ("fro", "spectral")


@dataclass(frozen=True)
class RuleOptions:
    """Choices RULES.md leaves open, with their defaults (see :func:`apply`)."""

    scale: float | None = None
    init: str = "auto"
    sn_norm: str = "fro"
    ei_mode: str = "zero"
    # the weight mirror (wm; fabench.rules._learned): its learning rate, decay, steps and when
    mirror_lr: float = 0.01
    mirror_decay: float = 1.0
    mirror_steps: int = 1
    mirror_every: str = "step"
    #: mirror steps before the first training step; None: one epoch's worth (the public code's sweep)
    mirror_warmup: int | None = None

    def validate(self) -> RuleOptions:
        for value, choices, what in ((self.init, _init.INIT_CHOICES, "init"), (self.sn_norm, SN_NORMS, "sn_norm"),
                                     (self.ei_mode, _modifiers.EI_MODES, "ei_mode")):
            if value not in choices:
                setting = {"init": "feedback_init"}.get(what, what)
                raise FabenchError(f"feedback {what} must be one of {', '.join(choices)}, got '{value}'", setting=setting)
        if self.scale is not None and not self.scale > 0:
            raise FabenchError(f"feedback scale must be positive, got {self.scale}", setting="feedback_scale")
        for value, ok, setting, rule in ((self.mirror_lr, self.mirror_lr > 0, "mirror_lr", "positive"),
                                         (self.mirror_decay, self.mirror_decay >= 0, "mirror_decay", "non-negative"),
                                         (self.mirror_steps, self.mirror_steps >= 1, "mirror_steps", "at least 1"),
                                         (self.mirror_warmup, self.mirror_warmup is None or self.mirror_warmup >= 0,
                                          "mirror_warmup", "a number of steps >= 0")):
            if not ok:
                raise FabenchError(f"--{setting.replace('_', '-')} must be {rule}, got {value}", setting=setting)
        if self.mirror_every not in MIRROR_EVERY:
            raise FabenchError(f"--mirror-every must be one of {', '.join(MIRROR_EVERY)}, got '{self.mirror_every}'",
                               setting="mirror_every")
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
        defaults = RuleOptions()
        changed = [f.name for f in dataclasses.fields(self)
                   if f.name.startswith("mirror_") and getattr(self, f.name) != getattr(defaults, f.name)]
        if changed and spec.base.kind != "wm":
            raise FabenchError(f"--{changed[0].replace('_', '-')} applies to wm (the weight mirror) only, not {spec.name}",
                               setting=changed[0])
        if self.ei_mode != "zero" and "ei" not in spec.modifiers:
            raise FabenchError(f"--ei-mode applies to rules with the +ei modifier only, not {spec.name}", setting="ei_mode")
        return self
