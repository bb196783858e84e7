"""The two autograd functions of the engine: one conv, one linear, for every rule.

Forward is the very call the layer would make (``F.conv2d`` / ``F.linear`` with the same
arguments), so outputs are bit-identical to the unmodified model. Backward computes the weight
and bias gradients as backprop does, in one place (:func:`conv_gradients`,
:func:`linear_gradients`); only the input gradient δx depends on the rule, through the layer's
*input-gradient strategy*: a feedback tensor B formed inside backward from the weight and the
layer's buffers (the FA family; one ``convolution_backward`` call returns δx through B together
with ∂L/∂W, the same work as backprop), or a direct-feedback object that forms δx itself
(``dfa``, ``dfa-conv``, ``dense-fa``: :mod:`fabench.rules._direct`). A rule that learns its
feedback keeps B in a buffer and takes the first path. Only the tensors backprop saves are
saved (the input and the weight, plus the layer's fixed buffers).

Autocast: the inputs are cast to the autocast dtype exactly as autocast would cast them, the
cast input is what is saved, and gradients are returned in each input's own dtype. This keeps
mixed precision working without saving an extra copy.

Being ``torch.autograd.Function`` subclasses, these trace into ``torch.compile`` graphs with
their backward, unlike module backward hooks (which compiled graphs ignore).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast would compute in on this device, or None when autocast is off."""
    if device_type in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _cast(tensor: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    if tensor is None or dtype is None or not tensor.is_floating_point():
        return tensor
    return tensor.to(dtype)


def autocast_conv2d(x, weight, bias, stride, padding, dilation, groups):
    """``F.conv2d`` as autocast would run it; returns (output, the input as cast, to save)."""
    dtype = _autocast_dtype(x.device.type)
    xc, wc, bc = _cast(x, dtype), _cast(weight, dtype), _cast(bias, dtype)
    with torch.autocast(x.device.type, enabled=False):
        return F.conv2d(xc, wc, bc, stride, padding, dilation, groups), xc


def autocast_linear(x, weight, bias):
    """``F.linear`` as autocast would run it; returns (output, the input as cast, to save)."""
    dtype = _autocast_dtype(x.device.type)
    xc, wc, bc = _cast(x, dtype), _cast(weight, dtype), _cast(bias, dtype)
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(xc, wc, bc), xc


def conv_gradients(grad_out, xc, weight, dx_weight, geometry, needs, has_bias):
    """``(∂L/∂x, ∂L/∂W, ∂L/∂b)`` of a conv, the weight and bias gradients as backprop computes them.

    ``dx_weight`` is the tensor δx is computed through (B for the FA family; W itself never
    reaches here), or None when δx comes from elsewhere (direct feedback): then only the
    weight and bias gradients are computed. One ``convolution_backward`` call either way.
    """
    stride, padding, dilation, groups = geometry
    need_x, need_w, need_b = needs[0] and dx_weight is not None, needs[1], has_bias and needs[2]
    return torch.ops.aten.convolution_backward(
        grad_out, xc.to(grad_out.dtype), (weight if dx_weight is None else dx_weight).to(grad_out.dtype),
        [weight.shape[0]] if has_bias else None, stride, padding, dilation, False, [0, 0], groups,
        [need_x, need_w, need_b],
    )


def linear_gradients(grad_out, xc, weight, dx_weight, needs, has_bias):
    """``(∂L/∂x, ∂L/∂W, ∂L/∂b)`` of a linear layer over any leading dims; δx through ``dx_weight`` if given."""
    flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
    grad_x = grad_out.matmul(dx_weight.to(grad_out.dtype)) if needs[0] and dx_weight is not None else None
    grad_w = flat_grad.t().mm(xc.reshape(-1, xc.shape[-1]).to(grad_out.dtype)) if needs[1] else None
    grad_b = flat_grad.sum(0) if has_bias and needs[2] else None
    return grad_x, grad_w, grad_b


def _input_feedback(ctx, weight, buffers):
    """B for this backward, when δx is wanted and comes from a feedback tensor (not direct)."""
    if ctx.direct is not None or not ctx.needs_input_grad[0]:
        return None  # direct feedback forms δx itself; the first layer's input needs no δx
    layer = ctx.layer
    return layer.rule.feedback(layer, weight, dict(zip(layer.saved_keys, buffers, strict=True)))


def _to(grad, dtype):
    return None if grad is None or dtype is None else grad.to(dtype)


class RuleConv2d(torch.autograd.Function):
    """``F.conv2d`` forward; backward gives the usual ∂L/∂W and ∂L/∂b, and δx by the layer's
    input-gradient strategy: a feedback tensor B from the layer's rule (the FA family:
    ``conv_transpose(δy, B)``) or a direct-feedback object (``direct.input_grad``: dfa, dense-fa, ...).
    ``buffers``: the layer's saved buffers (:attr:`RuleLayer.saved_keys`), handed to ``Rule.feedback``."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer, direct, slot, stride, padding, dilation, groups, *buffers):
        out, xc = autocast_conv2d(x, weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(xc, weight, *buffers)
        ctx.layer, ctx.direct, ctx.slot = layer, direct, slot
        ctx.geometry, ctx.has_bias = (stride, padding, dilation, groups), bias is not None
        ctx.dtypes = (x.dtype, bias.dtype if bias is not None else None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xc, weight, *buffers = ctx.saved_tensors
        with torch.autocast(grad_out.device.type, enabled=False):
            dx_weight = _input_feedback(ctx, weight, buffers)
            grad_x, grad_w, grad_b = conv_gradients(grad_out, xc, weight, dx_weight, ctx.geometry,
                                                    ctx.needs_input_grad, ctx.has_bias)
            if ctx.direct is not None and ctx.needs_input_grad[0]:
                grad_x = ctx.direct.input_grad(grad_out, xc, ctx.slot, ctx.geometry)
        return (_to(grad_x, ctx.dtypes[0]), _to(grad_w, weight.dtype), _to(grad_b, ctx.dtypes[1]),
                None, None, None, None, None, None, None, *(None for _ in buffers))


class RuleLinear(torch.autograd.Function):
    """``F.linear`` forward over any leading dims; backward as :class:`RuleConv2d` (δx = δy B or direct)."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer, direct, slot, *buffers):
        out, xc = autocast_linear(x, weight, bias)
        ctx.save_for_backward(xc, weight, *buffers)
        ctx.layer, ctx.direct, ctx.slot, ctx.has_bias = layer, direct, slot, bias is not None
        ctx.dtypes = (x.dtype, bias.dtype if bias is not None else None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xc, weight, *buffers = ctx.saved_tensors
        with torch.autocast(grad_out.device.type, enabled=False):
            dx_weight = _input_feedback(ctx, weight, buffers)
            grad_x, grad_w, grad_b = linear_gradients(grad_out, xc, weight, dx_weight, ctx.needs_input_grad,
                                                      ctx.has_bias)
            if ctx.direct is not None and ctx.needs_input_grad[0]:
                grad_x = ctx.direct.input_grad(grad_out, xc, ctx.slot)
        return (_to(grad_x, ctx.dtypes[0]), _to(grad_w, weight.dtype), _to(grad_b, ctx.dtypes[1]),
                None, None, None, *(None for _ in buffers))
