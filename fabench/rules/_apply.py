"""``apply``: attach a rule to every Conv2d and Linear of any model; the handle undoes it."""

from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from fabench.errors import FabenchError
from fabench.rules import _attention, _init, _layers, _modifiers
from fabench.rules._feedback import feedback_tensor
from fabench.rules._spec import RuleSpec, parse_rule
from fabench.rules._tiles import parse_feedback_memory

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
                raise FabenchError(f"feedback {what} must be one of {', '.join(choices)}, got '{value}'")
        if self.scale is not None and not self.scale > 0:
            raise FabenchError(f"feedback scale must be positive, got {self.scale}")
        return self

    def check_used_by(self, spec: RuleSpec) -> RuleOptions:
        """Refuse options the rule would ignore (they would change run_id and nothing else)."""
        from fabench.rules._spec import RULES

        unscaled = spec.base.kind in ("bp", "sn")
        users = ", ".join(n for n in RULES if RULES.get(n).kind not in ("bp", "sn"))
        if unscaled and self.scale is not None:
            raise FabenchError(f"--feedback-scale does nothing under {spec.name} (its B is W or follows W's norm); "
                               f"the rules that use it: {users}")
        if unscaled and self.init != "auto":
            raise FabenchError(f"--feedback-init does nothing under {spec.name} (its B is W or follows W's norm); "
                               f"the rules that use it: {users}")
        if self.sn_norm != "fro" and spec.base.kind != "sn":
            raise FabenchError(f"--sn-norm applies to fa-usf-sn only, not {spec.name}")
        if self.ei_mode != "zero" and "ei" not in spec.modifiers:
            raise FabenchError(f"--ei-mode applies to rules with the +ei modifier only, not {spec.name}")
        return self


def covered_layers(model: nn.Module, exclude=()) -> dict[str, nn.Module]:
    """Every Conv2d and Linear of ``model`` by module name, minus fnmatch ``exclude`` patterns."""
    return {
        name: module for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
        and not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)
    }


def _kind_for(spec: RuleSpec, options: RuleOptions) -> str:
    kind = spec.base.kind
    return "sn-spectral" if kind == "sn" and options.sn_norm == "spectral" else kind


def _std(weight: torch.Tensor, kind: str, options: RuleOptions) -> float:
    """The feedback scale: the user's, else the init the rule's provenance names."""
    if options.scale is not None:
        return options.scale
    init = options.init if options.init != "auto" else ("xiao" if kind == "usf" else "kaiming")
    return _init.init_std(weight, init)


def _register_buffers(module: nn.Module, name: str, spec: RuleSpec, kind: str, options: RuleOptions, seed: int) -> None:
    """Create the fixed tensors this layer's rule and modifiers need, seeded by its name."""
    weight = module.weight.detach()
    std = _std(weight, kind, options)
    # fa-usf-init's magnitudes and dense-fa's Linear feedback are fa's own draws
    purpose = "fa" if spec.base.name in ("fa-usf-init", "dense-fa") else spec.base.name
    if kind == "fixed":
        module.register_buffer("feedback_weight", _init.draw_normal(weight, std, seed, name, purpose))
    elif kind == "magnitude":
        module.register_buffer("feedback_magnitude", _init.draw_normal(weight, std, seed, name, purpose).abs())
    elif kind in ("usf", "brsf"):
        module.register_buffer("feedback_scale", torch.tensor(std, dtype=weight.dtype, device=weight.device))
    if "ei" in spec.modifiers:
        sign = torch.where(weight >= 0, 1.0, -1.0).to(weight.dtype)
        module.register_buffer(_layers.SIGN_BUFFER, sign)
    if "const" in spec.modifiers:
        module.register_buffer(_layers.NORM_BUFFER, torch.linalg.vector_norm(weight).clone())


@dataclass
class FeedbackHandle:
    """What :func:`apply` did to a model; ``remove()`` restores plain backprop exactly."""

    spec: RuleSpec
    options: RuleOptions
    seed: int
    layers: dict[str, nn.Module]
    excluded: list[str]
    _hooks: list = field(default_factory=list)

    @property
    def rule(self) -> str:
        return self.spec.name

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Make the modifiers act at the optimizer's step (call once per optimizer)."""
        self._hooks += _modifiers.attach(optimizer, self.layers, self.spec.modifiers, self.options.ei_mode)

    def feedback(self, name: str) -> torch.Tensor:
        """The B that backward would use for layer ``name`` now (W itself under bp).

        For a layer whose own forward transforms its weight (timm's ``StdConv2d`` standardises
        it), B follows the weight its last forward really used, so one forward must have run.
        """
        module = self.layers[name]
        rule = module._fabench_rule
        weight = module.weight
        if rule.intercept:
            weight = module.__dict__.get(_layers.SEEN_WEIGHT_ATTR)
            if weight is None:
                raise FabenchError(f"layer '{name}' ({type(module).__name__}) transforms its weight in its own forward; "
                                   "run one forward pass before asking for its feedback")
        if rule.kind == "bp":
            return weight.detach()
        buffer, sign = _layers.layer_buffers(module, rule)
        with torch.no_grad():
            return feedback_tensor(rule.kind, weight, buffer, sign)

    @contextmanager
    def exact_backprop(self):
        """Temporarily give every layer its class's forward (true gradients), e.g. for a probe."""
        saved = [(m, m.__dict__.pop("forward", None)) for m in self.layers.values()]
        try:
            yield
        finally:
            for module, forward in saved:
                if forward is not None:
                    module.forward = forward

    def remove(self) -> None:
        """Detach hooks, forwards and buffers: the model is plain backprop again."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for module in self.layers.values():
            _layers.uninstall(module)

    def describe(self) -> dict:
        """A JSON-ready summary for run manifests."""
        return {
            "rule": self.rule, "base": self.spec.base.name, "kind": self.spec.base.kind,
            "modifiers": list(self.spec.modifiers), "seed": self.seed,
            "options": {"scale": self.options.scale, "init": self.options.init,
                        "sn_norm": self.options.sn_norm, "ei_mode": self.options.ei_mode},
            "feedback_form": "weight-shared", "layers": len(self.layers), "excluded": self.excluded,
        }


def apply(model: nn.Module, rule: str, *, seed: int = 0, exclude=(), scale: float | None = None,
          init: str = "auto", sn_norm: str = "fro", ei_mode: str = "zero", feedback_memory: str = "auto",
          input_shape: tuple[int, ...] | None = None) -> FeedbackHandle:
    """Attach feedback ``rule`` (e.g. ``"fa-usf-sn+const"``) to every Conv2d/Linear of ``model``.

    ``exclude``: fnmatch patterns of module names left on exact backprop. ``scale``: the
    feedback's standard deviation (``fa``), magnitude scale (``fa-usf``, ``fa-frsf``, ...),
    overriding ``init``: ``auto`` (``kaiming`` fan-in std for random feedback, ``xiao``
    fan-out std for ``fa-usf``, the scales RULES.md gives), ``kaiming``, ``xiao``, ``xavier``
    or ``weight`` (the forward weight's own std). ``sn_norm``: ``fro`` (the flattened L2 norm,
    what Lance & Kieu's code uses) or ``spectral`` (what their text says). ``ei_mode``:
    ``zero`` leaves a weight whose update would flip its sign at 0, ``keep-sign`` at a tiny
    value of its original sign.

    ``dfa``, ``dfa-conv`` and ``dense-fa`` hold one fixed random matrix per layer
    (:mod:`fabench.rules._direct`). ``feedback_memory`` (``auto``, ``materialised``, ``tiled``
    or a size such as ``512MB``) decides whether they are held or redrawn in tiles during
    backward; ``input_shape`` (e.g. ``(3, 224, 224)``) lets that plan be made at once, by a
    batch-1 probe forward, instead of at the first training forward.
    """
    from fabench.rules import _direct  # imports this module: FeedbackHandle is its base class

    spec = parse_rule(rule)
    options = RuleOptions(scale, init, sn_norm, ei_mode).validate().check_used_by(spec)
    memory = parse_feedback_memory(feedback_memory)
    layers = covered_layers(model, exclude)
    if not layers:
        raise FabenchError(f"{type(model).__name__} has no nn.Conv2d or nn.Linear layer a rule could act on "
                           "(or --exclude removed them all)")
    _attention.refuse_uncalled(model, layers)
    attached = [n for n, m in layers.items() if "_fabench_rule" in m.__dict__]
    if attached:
        raise FabenchError(f"layer '{attached[0]}' already carries a rule; call handle.remove() first")
    kind = _kind_for(spec, options)
    for name, module in layers.items():
        layer_kind = _direct.layer_kind(kind, module)
        _register_buffers(module, name, spec, layer_kind, options, seed)
        layer_rule = _layers.LayerRule(layer_kind, "ei" in spec.modifiers, _layers.uses_own_forward(module))
        _layers.install_forward(module, name, layer_rule)
    excluded = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in layers]
    handle_args = {"spec": spec, "options": options, "seed": seed, "layers": layers, "excluded": excluded}
    if kind in _direct.DIRECT_KINDS:
        return _direct.attach(model, handle_args, kind, memory, input_shape)
    return FeedbackHandle(**handle_args)
