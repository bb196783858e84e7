"""Where DFA's error enters: the model's output, caught on its way back.

DFA (Nøkland 2016) sends the output error ``e = ∂L/∂logits`` to every layer through that
layer's own fixed random matrix. Autograd only carries gradients along the graph, so ``e`` has
to be caught where it is born and handed to the layers out of band:

- a forward *pre*-hook on the root model opens a fresh :class:`ErrorSlot` for each forward
  pass; every covered layer's forward records the slot that was open when it ran;
- a forward hook passes the model's output through :class:`CaptureError`, an identity whose
  backward stores ``e`` in that slot;
- every layer's output flows into the logits, so autograd runs ``CaptureError``'s backward
  before any covered layer's backward, and each layer reads ``e`` from the slot of its own
  forward pass (so two forwards before one backward, as in gradient accumulation, each see
  their own ``e``).

What this cannot serve, by construction:

- a model whose output is not the logits tensor ``[batch, classes]`` (a tuple with auxiliary
  logits, a dict, a dense prediction map): refused at the first forward;
- a layer whose output does not reach the model's output (an auxiliary head): if its loss is
  backpropagated without the logits' it has no ``e`` and is refused by name; if both losses
  are summed it receives ``D_l e`` like every layer, which is rarely what one wants, so
  exclude such heads (``exclude=``);
- a layer whose first dimension is not the batch (e.g. Swin's window-partitioned attention,
  ``[batch·windows, tokens, channels]``): refused by name, since ``e`` is per sample;
- ``torch.compile`` cannot trace the slot (a Python object written in backward): dynamo breaks
  the graph around every covered layer and runs those layers eagerly, so a compiled model gets
  the same gradients as an eager one (tested) but little of compile's speed. Should a compiled
  backward ever try to trace a layer's backward, :func:`error_for` refuses with a clear error
  rather than bake one step's ``e`` into the graph.
"""

from __future__ import annotations

import torch

from fabench.errors import FabenchError


class ErrorSlot:
    """Holds ``e = ∂L/∂logits`` of one forward pass once backward has reached the output."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: torch.Tensor | None = None


class CaptureError(torch.autograd.Function):
    """Identity on the logits whose backward stores the incoming gradient ``e`` in a slot."""

    @staticmethod
    def forward(ctx, logits, slot):
        ctx.slot = slot
        return logits.clone()  # a fresh tensor: in-place ops on the output stay legal

    @staticmethod
    def backward(ctx, grad):
        ctx.slot.error = grad.detach()
        return grad, None


def check_logits(output, model_type: str) -> torch.Tensor:
    """The model's output if it is a ``[batch, classes]`` tensor; else a one-line FabenchError."""
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        what = f"a tensor of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor) else type(output).__name__
        raise FabenchError(f"dfa needs {model_type}'s output to be the logits tensor [batch, classes], "
                           f"got {what}; use a model (or a wrapper) that returns only the logits")
    return output


def error_for(slot: ErrorSlot | None, layer: str, batch: int) -> torch.Tensor:
    """The output error for a layer's backward, or a FabenchError that says why there is none."""
    if torch.compiler.is_compiling():
        raise FabenchError("dfa's backward cannot be traced by torch.compile (the output error reaches the "
                           "layers outside the autograd graph); run without --compile")
    if slot is None or slot.error is None:
        raise FabenchError(f"layer '{layer}' ran its backward before the output error was known: its output does "
                           "not reach the model's output (an auxiliary head?) or it ran outside the model's "
                           "forward; exclude it with --exclude")
    error = slot.error
    if error.shape[0] != batch:
        raise FabenchError(f"layer '{layer}' sees a first dimension of {batch} but the model's output has "
                           f"{error.shape[0]} rows; dfa needs every covered layer's first dimension to be the "
                           "batch (exclude the layer with --exclude)")
    return error
