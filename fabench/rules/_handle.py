"""The handle :func:`fabench.rules.apply` returns: what was done to a model, its lifecycle, and how to undo it.

A training loop needs exactly four calls on it (docs/writing-rules.md): ``attach_optimizer``
once, ``begin_training`` before the first step of a fresh run, ``end_epoch`` after each epoch and
``remove`` to undo. It is also the engine's public view of each covered layer for code outside
the engine (the diagnostics probe, the DDP replica check, the benchmarks): the layer's current
B, which buffers belong to the rule. Nobody outside ``fabench.rules`` reads the engine's private
attributes or relies on its buffer names.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from fabench.errors import FabenchError
from fabench.rules import _layers
from fabench.rules._spec import RuleSpec


@dataclass
class FeedbackHandle:
    """What :func:`apply` did to a model; ``remove()`` restores plain backprop exactly."""

    spec: RuleSpec
    #: each part's settings by option key (base rule first, then modifiers as written)
    settings: list[dict]
    seed: int
    layers: dict[str, nn.Module]
    excluded: list[str]
    #: the rule object and the modifier objects (instances of the registered classes)
    base_rule: object = None
    modifier_rules: tuple = ()
    rule_layers: dict[str, _layers.RuleLayer] = field(default_factory=dict)
    _hooks: list = field(default_factory=list)

    @property
    def rule(self) -> str:
        return self.spec.name

    @property
    def options(self) -> dict:
        """Every option of the rule and its modifiers, by key."""
        return {k: v for part in self.settings for k, v in part.items()}

    @property
    def state(self):
        """A direct rule's shared state (its plan and matrices), else None."""
        return getattr(self.base_rule, "state", None)

    def _ordered_modifiers(self) -> list:
        return sorted(self.modifier_rules, key=lambda m: m.step_order)

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Make the modifiers, and rules that learn their feedback, act at the optimizer's step
        (call once per optimizer, before its learning-rate scheduler is made: kp adds B to it)."""
        for modifier in self._ordered_modifiers():
            self._hooks += modifier.attach_optimizer(optimizer, self.rule_layers)
        self._hooks += self.base_rule.attach_optimizer(optimizer, self.rule_layers)

    def begin_training(self, steps_per_epoch: int) -> None:
        """Call once, before the first step of a fresh run (not after resuming from a checkpoint):
        the rule's initial phase (the weight mirror's warm-up)."""
        self.base_rule.begin_training(self.rule_layers, steps_per_epoch)

    def end_epoch(self) -> None:
        """Call after each epoch: the rule's per-epoch phase (the weight mirror with mirror_every=epoch)."""
        self.base_rule.end_epoch(self.rule_layers)

    def feedback(self, name: str) -> torch.Tensor:
        """The B that backward would use for layer ``name`` now (W itself under bp; a direct
        rule's matrix, drawn whole).

        For a layer whose own forward transforms its weight (timm's ``StdConv2d`` standardises
        it), B follows the weight its last forward really used, so one forward must have run.
        """
        layer = self.rule_layers[name]
        module = layer.module
        if layer.direct is not None:
            return layer.direct.dense(device=module.weight.device, dtype=module.weight.dtype)
        weight = module.weight
        if layer.intercept:
            weight = module.__dict__.get(_layers.SEEN_WEIGHT_ATTR)
            if weight is None:
                raise FabenchError(f"layer '{name}' ({type(module).__name__}) transforms its weight in its own forward; "
                                   "run one forward pass before asking for its feedback")
        if self.base_rule.exact:
            return weight.detach()
        buffers = dict(zip(layer.saved_keys, layer.saved_buffers(), strict=True))
        with torch.no_grad():
            return self.base_rule.feedback(layer, weight, buffers)

    def kind(self, name: str) -> str:
        """Layer ``name``'s feedback label: the rule's ``kind`` (``fixed``, ``usf``, ..., ``dfa``), or
        ``fixed`` for a direct rule's layer that uses fa's B (dense-fa's Linear layers)."""
        direct_rule = hasattr(self.base_rule, "feedback_class")
        return "fixed" if direct_rule and self.rule_layers[name].direct is None else self.base_rule.kind

    def direct_feedback(self, name: str):
        """Layer ``name``'s direct-feedback object (dfa, dfa-conv, dfa-wht, dense-fa's convs; see
        fabench.rules._direct: its matrix, its product's FLOPs), or None where δx goes through B."""
        return self.rule_layers[name].direct

    def shares_weight_shape(self, name: str) -> bool:
        """True if :meth:`feedback` of layer ``name`` is a tensor of W's shape, comparable with W
        entry by entry: not a direct-feedback matrix, not a layer whose forward transforms W."""
        return not self.rule_layers[name].intercept and self.direct_feedback(name) is None

    def step_work(self, name: str, needs_dx: bool) -> tuple[list[tuple[float, float]], float]:
        """The rule's extra work per training step on layer ``name`` (kernels, random draws), for the cost model."""
        return self.base_rule.step_work(self.rule_layers[name], needs_dx)

    def rule_buffers(self) -> dict[str, torch.Tensor]:
        """Every buffer the rule added, by its full name in the model (``features.0.feedback_weight``)."""
        return {f"{name}.{buffer}": layer.module._buffers[buffer] for name, layer in self.rule_layers.items()
                for buffer in layer.buffer_names()}

    def owns_buffer(self, full_name: str) -> bool:
        """True if ``full_name`` (a name from ``model.named_buffers()``) is a buffer the rule added."""
        name, _, buffer = full_name.rpartition(".")
        layer = self.rule_layers.get(name)
        return layer is not None and buffer in layer.buffer_names()

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
        base = self.spec.base
        summary = {
            "rule": self.rule, "base": base.name, "kind": base.kind,
            "modifiers": list(self.spec.modifiers), "seed": self.seed,
            "options": self.options, "family": base.family, "source": base.source,
            "layers": len(self.layers), "excluded": self.excluded,
        }
        plugins = {part.source: part.source_sha256 for part in self.spec.parts if part.source_sha256}
        if plugins:
            summary["plugin_sha256"] = plugins
        summary.update(self.base_rule.describe())
        return summary
