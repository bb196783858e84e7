"""Direct Kolen–Pollack (``dkp``): DFA whose direct feedback matrices are learned with a Kolen–Pollack update.

Webster et al., "Learning the Connections in Direct Feedback Alignment" (public code:
github.com/webstah/dkp-gist). As in DFA (Nøkland 2016), every covered layer's δx is ``D_l e``,
``e = ∂L/∂logits``; unlike DFA, ``D_l`` is not fixed. It gets the update a weight matrix
connecting the layer's input ``x`` straight to the logits would get, ``x eᵀ`` summed over the
batch (the public code's ``grad_at_output.t().mm(layer_out)``), through the run's own optimizer:

    fabench run --plugin examples/plugins/dkp.py --rule dkp --arch arch1 --dataset cifar10-mini
    fabench run --plugin examples/plugins/dkp.py --rule dkp --rule-option feedback_lr_scale=0.2

``D_l`` starts as ``dfa``'s draw (the same numbers), so ``dkp`` before its first step is ``dfa``.
The public code trains B with its own Adam (lr 1e-4, weight decay 1e-6) beside SGD for W; here B
joins the run's optimizer in a group copying W's hyperparameters (as fabench's ``kp`` does), with
its learning rate scaled by ``feedback_lr_scale`` and its own ``feedback_weight_decay`` if given.
"""

from __future__ import annotations

import math

import torch

from fabench.errors import FabenchError
from fabench.rules import DirectRule, LayerFeedback, Option, register_rule


class LearnedDirectFeedback(LayerFeedback):
    """``δx = D e`` with ``D`` ``[d_in, classes]`` held as buffer ``direct``; backward also leaves ``x eᵀ`` in ``D.grad``."""

    purpose = "dfa"  # dfa's stream: dkp starts from dfa's matrices

    def matrix_shape(self):
        return math.prod(self.in_shape), self.state.num_classes

    def virtual_weight_shape(self):
        return self.state.num_classes, math.prod(self.in_shape)

    def input_grad(self, grad_out, x, slot, geometry=None):
        self.check_shape(x)
        matrix = self.layer.buffer("direct")
        error = self.error(slot, x.shape[0]).to(matrix.dtype)
        update = x.reshape(x.shape[0], -1).to(matrix.dtype).t() @ error
        matrix.grad = update if matrix.grad is None else matrix.grad + update
        return (error @ matrix.t()).view(x.shape)

    def product_flops(self, batch: int) -> float:
        """δx's product with D, and the update's product of the same size."""
        return 4.0 * batch * self.matrix().numel

    def dense(self, *, device, dtype):
        """D now (a layer whose input needs no δx holds none: its starting draw)."""
        if not self.layer.has_buffer("direct"):
            return super().dense(device=device, dtype=dtype)
        return self.layer.buffer("direct").to(device=device, dtype=dtype)


@register_rule
class DirectKolenPollack(DirectRule):
    """DFA's engine with a learned, held matrix per layer, updated by the run's optimizer."""

    name = "dkp"
    description = ("direct Kolen-Pollack: DFA whose D_l gets the update x eᵀ of a direct connection to the output "
                   "each step [lit, Webster et al. (dkp-gist)]")
    family = "direct"
    conv_feedback = linear_feedback = LearnedDirectFeedback
    options = (*DirectRule.options,
               Option("feedback_lr_scale", 1.0, "D's learning rate as a multiple of W's", type=float,
                      check=lambda v: v > 0, must="positive"),
               Option("feedback_weight_decay", None, "D's weight decay (default: W's)", type=float,
                      check=lambda v: v >= 0, must="non-negative"))

    def attach_model(self, model, layers, *, input_shape=None, feedback_memory="auto"):
        if input_shape is None:
            raise FabenchError("dkp needs the input shape when it is attached (apply(..., input_shape=(C, H, W))), "
                               "so that its matrices exist before the optimizer is made")
        hooks = super().attach_model(model, layers, input_shape=input_shape, feedback_memory=feedback_memory)
        for feedback in self.state.planned():
            weight = feedback.module.weight
            matrix = feedback.matrix().materialise(device=weight.device, dtype=weight.dtype)
            feedback.layer.add_buffer("direct", matrix, saved=False)
        return hooks

    def attach_optimizer(self, optimizer, layers):
        """D joins the optimizer beside its layer's W (same group settings, lr scaled); before each
        step its gradient is averaged over DDP ranks, after it the gradient is released."""
        matrices = []
        for group in list(optimizer.param_groups):
            owned = {id(p) for p in group["params"]}
            mine = [layer.buffer("direct") for layer in layers.values()
                    if id(layer.weight) in owned and layer.has_buffer("direct")]
            if not mine:
                continue
            settings = {k: v for k, v in group.items() if k != "params"}
            settings["lr"] = group["lr"] * self.settings.feedback_lr_scale
            if self.settings.feedback_weight_decay is not None:
                settings["weight_decay"] = self.settings.feedback_weight_decay
            optimizer.add_param_group({**settings, "params": mine})
            matrices += mine

        def average_gradients(*_):
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                for matrix in matrices:
                    if matrix.grad is not None:
                        torch.distributed.all_reduce(matrix.grad)
                        matrix.grad /= torch.distributed.get_world_size()

        def release_gradients(*_):
            for matrix in matrices:
                matrix.grad = None

        return [optimizer.register_step_pre_hook(average_gradients),
                optimizer.register_step_post_hook(release_gradients), _GroupRemoval(optimizer, matrices)]


class _GroupRemoval:
    """``remove()`` takes D's parameter groups (and their state) out of the optimizer again."""

    def __init__(self, optimizer, matrices) -> None:
        self.optimizer, self.ids = optimizer, {id(m) for m in matrices}

    def remove(self) -> None:
        groups = self.optimizer.param_groups
        for group in groups:
            for tensor in group["params"]:
                if id(tensor) in self.ids:
                    self.optimizer.state.pop(tensor, None)
        groups[:] = [g for g in groups if not any(id(t) in self.ids for t in g["params"])]
