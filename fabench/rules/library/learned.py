"""Rules that learn B without reading W: Kolen–Pollack (``kp``) and the weight mirror (``wm``).

Akrout et al. 2019; the mechanics are in :mod:`fabench.rules._learned`. Both hold B as buffer
``weight`` (``feedback_weight``), starting as ``fa``'s draw (the same numbers).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from fabench.rules import _learned
from fabench.rules._base import Option, Rule, register_rule
from fabench.rules._options import FEEDBACK_INIT, FEEDBACK_SCALE, feedback_std
from fabench.setting_values import MIRROR_EVERY


def _modules(layers) -> dict:
    return {name: layer.module for name, layer in layers.items()}


class _LearnedFeedback(Rule):
    """B is a buffer that starts as fa's draw; backward uses it as it is."""

    family = "learned"
    options = (FEEDBACK_SCALE, FEEDBACK_INIT)

    def init_layer(self, layer) -> None:
        layer.add_buffer("weight", layer.draw_normal(feedback_std(layer, self.settings), "fa"))

    def feedback(self, layer, weight, buffers):
        return buffers["weight"]


@register_rule
class KolenPollack(_LearnedFeedback):
    """B joins the run's optimizer in groups copying W's, and gets W's gradient before every step."""

    name = "kp"
    description = ("Kolen-Pollack: B starts as fa's draw and gets W's update and its own weight decay each step, "
                   "so B and W converge [lit, Akrout et al. 2019]")
    #: Kolen–Pollack gives W and B the same update plus weight decay, so B − W shrinks by (1 − lr·wd)
    #: each step; without decay it never does and kp is fa with a moving B. AdamW decouples the
    #: decay, so the shrink is exact: 1 % a step at lr 1e-3, wd 10 (docs/reproductions.md, "kp's own recipe": on
    #: mlp/mnist-mini after 5 epochs kp's δx angle to backprop is 13.9° against fa's 46.5°; 38.5° under Adam).
    recipe: ClassVar[dict] = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 10.0}

    def attach_optimizer(self, optimizer, layers):
        return _learned.attach_kolen_pollack(optimizer, _modules(layers))


@register_rule
class WeightMirror(_LearnedFeedback):
    """Mirror steps move B toward the layer's response to noise; own seeded noise stream per layer and step."""

    name = "wm"
    description = ("weight mirror: B starts as fa's draw; after each step a mirror phase moves it toward the layer's "
                   "response to noise, an estimate of W [lit, Akrout et al. 2019]")
    options = (
        FEEDBACK_SCALE, FEEDBACK_INIT,
        Option("mirror_lr", 0.01, "mirror learning rate", type=float, check=lambda v: v > 0, must="positive",
               label="--mirror-lr"),
        Option("mirror_decay", 1.0, "decay of B in each mirror step", type=float, check=lambda v: v >= 0,
               must="non-negative", label="--mirror-decay"),
        Option("mirror_steps", 1, "mirror steps per phase", type=int, check=lambda v: v >= 1, must="at least 1",
               label="--mirror-steps"),
        Option("mirror_every", "step", "run the mirror phase after every training step or every epoch",
               choices=MIRROR_EVERY, label="--mirror-every"),
        Option("mirror_warmup", None, "mirror steps before training (default: one epoch's worth)", type=int,
               check=lambda v: v >= 0, must="a number of steps >= 0", label="--mirror-warmup"),
    )

    def init_layer(self, layer) -> None:
        super().init_layer(layer)
        weight = layer.weight.detach()
        layer.add_buffer("mirror_steps", torch.zeros((), dtype=torch.int64, device=weight.device), saved=False)

    def attach_optimizer(self, optimizer, layers):
        return _learned.attach_weight_mirror(optimizer, _modules(layers), self.seed, self.settings)

    def begin_training(self, layers, steps_per_epoch: int) -> None:
        """The initial mirror phase: ``mirror_warmup`` steps; by default one epoch's worth, as the
        authors' code sweeps once over the data, and at least ``⌈3 / mirror_lr⌉`` so that B keeps
        under 5 % of its random start (fa's draw, scaled like a full-size W)."""
        o = self.settings
        default = max(steps_per_epoch, math.ceil(3 / o.mirror_lr))
        _learned.mirror(_modules(layers), self.seed, o, default if o.mirror_warmup is None else o.mirror_warmup)

    def end_epoch(self, layers) -> None:
        if self.settings.mirror_every == "epoch":
            _learned.mirror(_modules(layers), self.seed, self.settings, self.settings.mirror_steps)

    def step_work(self, layer, needs_dx):
        flops, noise = _learned.mirror_work(layer.module)
        steps = _learned.steps_per_training_step(self.settings)
        return [(steps * flops, 4.0 * 2 * steps * layer.weight.numel())], steps * noise
