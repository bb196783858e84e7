"""Modifiers act on the optimizer step, so they see the final (e.g. DDP-averaged) gradients.

``+bm`` replaces each covered weight's gradient by its sign just before the step; ``+ei``
and ``+const`` correct the weights just after it (``ei`` first, so that the norm constraint
rescales weights whose signs are already right). Hooks are registered with
``Optimizer.register_step_pre_hook``/``register_step_post_hook``, so any torch optimizer and
any training loop gets them by calling ``handle.attach_optimizer(optimizer)`` once.
"""

from __future__ import annotations

import torch
from torch import nn

#: The buffers the modifiers hold on each layer (``feedback_<key>``).
SIGN_BUFFER = "feedback_sign"
NORM_BUFFER = "feedback_norm0"
#: The tiny magnitude ``ei_mode="keep-sign"`` leaves on a weight whose update would flip it.
KEEP_SIGN_EPS = 1e-8


def weights_in(optimizer: torch.optim.Optimizer, layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """The covered layers whose weight this optimizer updates, by name."""
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return {n: m for n, m in layers.items() if id(m.weight) in owned}


@torch.no_grad()
def sign_gradients(layers: list[nn.Module]) -> None:
    """Batch Manhattan: the optimizer sees sign(∂L/∂W)."""
    for module in layers:
        if module.weight.grad is not None:
            module.weight.grad.sign_()


@torch.no_grad()
def enforce_signs(layers: list[nn.Module], mode: str) -> None:
    """E/I: a weight whose update crossed zero is left at zero (or a tiny value of its sign)."""
    for module in layers:
        weight, sign = module.weight, getattr(module, SIGN_BUFFER)
        flipped = weight * sign < 0
        replacement = 0.0 if mode == "zero" else KEEP_SIGN_EPS
        weight.copy_(torch.where(flipped, sign * replacement, weight))


@torch.no_grad()
def restore_norms(layers: list[nn.Module]) -> None:
    """Const.: rescale every covered weight back to its Frobenius norm at attach time."""
    for module in layers:
        norm = torch.linalg.vector_norm(module.weight)
        module.weight.mul_(getattr(module, NORM_BUFFER) / norm.clamp_min(1e-12))
