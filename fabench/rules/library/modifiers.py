"""The modifiers ``+const``, ``+ei`` and ``+bm``: step hooks on the forward weights (:mod:`fabench.rules._modifiers`).

Hooks run in ``step_order``: ``+bm`` before the step (on the gradients), then ``+ei``, then
``+const`` after it (so the norm constraint rescales weights whose signs are already right).
"""

from __future__ import annotations

import torch

from fabench.rules import _modifiers
from fabench.rules._base import Modifier, Option, register_rule
from fabench.setting_values import EI_MODES


@register_rule
class ConstantNorm(Modifier):
    """W ← W · ‖W_0‖/‖W‖ after every step; ‖W_0‖ held as buffer ``norm0``."""

    name = "const"
    description = "forward weight norm held at its initial value every step (W <- W·‖W0‖/‖W‖) [2nd]"
    step_order = 20

    def init_layer(self, layer) -> None:
        layer.add_buffer("norm0", torch.linalg.vector_norm(layer.weight.detach()).clone())

    def attach_optimizer(self, optimizer, layers):
        targets = [layer.module for layer in _modifiers.weights_in(optimizer, layers).values()]
        return [optimizer.register_step_post_hook(lambda *_: _modifiers.restore_norms(targets))]


@register_rule
class ExcitatoryInhibitory(Modifier):
    """Fixed signs (buffer ``sign``, which sign-concordant feedback then uses instead of sign(W_t))."""

    name = "ei"
    description = "fixed excitatory/inhibitory signs: no weight ever changes sign; feedback uses the fixed signs [2nd]"
    options = (Option("ei_mode", "zero", "a weight whose update would flip sign is set to zero or keep-sign (1e-8)",
                      choices=EI_MODES, label="feedback ei_mode"),)
    step_order = 10

    def init_layer(self, layer) -> None:
        weight = layer.weight.detach()
        layer.add_buffer("sign", torch.where(weight >= 0, 1.0, -1.0).to(weight.dtype))

    def attach_optimizer(self, optimizer, layers):
        targets = [layer.module for layer in _modifiers.weights_in(optimizer, layers).values()]
        mode = self.settings.ei_mode
        return [optimizer.register_step_post_hook(lambda *_: _modifiers.enforce_signs(targets, mode))]


@register_rule
class BatchManhattan(Modifier):
    """The optimizer sees sign(∂L/∂W)."""

    name = "bm"
    description = "Batch Manhattan: the optimizer sees sign(∂L/∂W) instead of the gradient [lit, Liao et al. 2016]"
    step_order = 0

    def attach_optimizer(self, optimizer, layers):
        targets = [layer.module for layer in _modifiers.weights_in(optimizer, layers).values()]
        return [optimizer.register_step_pre_hook(lambda *_: _modifiers.sign_gradients(targets))]
