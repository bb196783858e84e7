"""The handle :func:`fabench.rules.apply` returns: what was done to a model, and how to undo it.

It is also the engine's public view of each covered layer for code outside the engine (the
diagnostics probe, the DDP replica check, the benchmarks): the layer's feedback kind, its current
B, which buffers belong to the rule. Nobody outside ``fabench.rules`` reads the engine's private
attributes or relies on its buffer names.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from fabench.errors import FabenchError
from fabench.rules import _layers, _learned, _modifiers
from fabench.rules._feedback import feedback_tensor
from fabench.rules._options import RuleOptions
from fabench.rules._spec import RuleSpec


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
        """Make the modifiers, and rules that learn their feedback, act at the optimizer's step
        (call once per optimizer, before its learning-rate scheduler is made: kp adds B to it)."""
        self._hooks += _modifiers.attach(optimizer, self.layers, self.spec.modifiers, self.options.ei_mode)
        if self.spec.base.kind == "kp":
            self._hooks += _learned.attach_kolen_pollack(optimizer, self.layers)
        elif self.spec.base.kind == "wm":
            self._hooks += _learned.attach_weight_mirror(optimizer, self.layers, self.seed, self.options)

    def begin_training(self, steps_per_epoch: int) -> None:
        """Called by training loops once, before the first step of a fresh run: the weight
        mirror's initial phase (``mirror_warmup`` steps; by default one epoch's worth, as the
        authors' public code sweeps once over the data, and at least ``⌈3 / mirror_lr⌉`` so that
        B keeps under 5 % of its random start: it starts as fa's draw, scaled like a full-size W)."""
        o = self.options
        if self.spec.base.kind == "wm":
            default = max(steps_per_epoch, math.ceil(3 / o.mirror_lr))
            _learned.mirror(self.layers, self.seed, o, default if o.mirror_warmup is None else o.mirror_warmup)

    def end_epoch(self) -> None:
        """Called by training loops after each epoch: the weight mirror's per-epoch phase, if chosen."""
        o = self.options
        if self.spec.base.kind == "wm" and o.mirror_every == "epoch":
            _learned.mirror(self.layers, self.seed, o, o.mirror_steps)

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

    def kind(self, name: str) -> str:
        """Layer ``name``'s feedback kind (``bp``, ``fixed``, ``usf``, ..., ``dfa``; fabench.rules._feedback)."""
        return self.layers[name]._fabench_rule.kind

    def direct_feedback(self, name: str):
        """Layer ``name``'s direct-feedback object (dfa, dfa-conv, dfa-wht, dense-fa's convs; see
        fabench.rules._direct: its matrix, its product's FLOPs), or None where δx goes through B."""
        return self.layers[name].__dict__.get(_layers.DIRECT_ATTR)

    def shares_weight_shape(self, name: str) -> bool:
        """True if :meth:`feedback` of layer ``name`` is a tensor of W's shape, comparable with W
        entry by entry: not a direct-feedback matrix, not a layer whose forward transforms W."""
        module = self.layers[name]
        return not module._fabench_rule.intercept and self.direct_feedback(name) is None

    def rule_buffers(self) -> dict[str, torch.Tensor]:
        """Every buffer the rule added, by its full name in the model (``features.0.feedback_weight``)."""
        return {f"{layer}.{buffer}": tensor for layer, module in self.layers.items()
                for buffer, tensor in module.named_buffers(recurse=False) if buffer in _layers.ALL_BUFFERS}

    def owns_buffer(self, full_name: str) -> bool:
        """True if ``full_name`` (a name from ``model.named_buffers()``) is a buffer the rule added."""
        layer, _, buffer = full_name.rpartition(".")
        return layer in self.layers and buffer in _layers.ALL_BUFFERS

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
            "options": dataclasses.asdict(self.options),
            "feedback_form": "weight-shared", "layers": len(self.layers), "excluded": self.excluded,
        }
