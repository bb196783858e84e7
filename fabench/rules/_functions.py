"""Autograd functions that run a layer's usual forward and send δx back through B.

Forward is the very call the layer would make (``F.conv2d`` / ``F.linear`` with the same
arguments), so outputs are bit-identical to the unmodified model. Backward makes one
``convolution_backward`` (or two matmuls for Linear) that returns the input gradient computed
with B and the weight gradient computed as backprop does, in a single call: the same work as
backprop. Only the tensors backprop saves are saved (the input and the weight); B is formed
inside backward.

Autocast: the inputs are cast to the autocast dtype exactly as autocast would cast them, the
cast input is what is saved, and gradients are returned in each input's own dtype. This keeps
mixed precision working without saving an extra copy.

Being ``torch.autograd.Function`` subclasses, these trace into ``torch.compile`` graphs with
their backward, unlike module backward hooks (which compiled graphs ignore).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fabench.rules._feedback import feedback_tensor


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


def _same_dtype(grad: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    return grad if grad is None or like is None else grad.to(like.dtype)


class FeedbackConv2d(torch.autograd.Function):
    """``F.conv2d`` forward; backward gives δx = conv_transpose(δy, B) and the usual ∂L/∂W."""

    @staticmethod
    def forward(ctx, x, weight, bias, buffer, fixed_sign, kind, stride, padding, dilation, groups):
        out, xc = autocast_conv2d(x, weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(xc, weight, buffer, fixed_sign)
        ctx.conf = (kind, stride, padding, dilation, groups, bias is not None)
        ctx.dtypes = (x.dtype, bias.dtype if bias is not None else None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xc, weight, buffer, fixed_sign = ctx.saved_tensors
        kind, stride, padding, dilation, groups, has_bias = ctx.conf
        with torch.autocast(grad_out.device.type, enabled=False):
            # B only when δx is wanted: the first layer's input needs none, and forming it there
            # would waste a W-sized tensor (and, for fa-brsf, draws from the training RNG)
            needs_x = ctx.needs_input_grad[0]
            feedback = (feedback_tensor(kind, weight, buffer, fixed_sign) if needs_x else weight).to(grad_out.dtype)
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, xc.to(grad_out.dtype), feedback,
                [weight.shape[0]] if has_bias else None,
                stride, padding, dilation, False, [0, 0], groups,
                [ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]],
            )
        grad_x = grad_x.to(ctx.dtypes[0]) if grad_x is not None else None
        grad_w = _same_dtype(grad_w, weight)
        grad_b = grad_b.to(ctx.dtypes[1]) if grad_b is not None else None
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None


class FeedbackLinear(torch.autograd.Function):
    """``F.linear`` forward over any leading dims; backward gives δx = δy B and the usual ∂L/∂W."""

    @staticmethod
    def forward(ctx, x, weight, bias, buffer, fixed_sign, kind):
        out, xc = autocast_linear(x, weight, bias)
        ctx.save_for_backward(xc, weight, buffer, fixed_sign)
        ctx.kind = kind
        ctx.dtypes = (x.dtype, bias.dtype if bias is not None else None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xc, weight, buffer, fixed_sign = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        with torch.autocast(grad_out.device.type, enabled=False):
            flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
            if ctx.needs_input_grad[0]:
                feedback = feedback_tensor(ctx.kind, weight, buffer, fixed_sign).to(grad_out.dtype)
                grad_x = grad_out.matmul(feedback).to(ctx.dtypes[0])
            if ctx.needs_input_grad[1]:
                flat_x = xc.reshape(-1, xc.shape[-1]).to(grad_out.dtype)
                grad_w = flat_grad.t().mm(flat_x).to(weight.dtype)
            if ctx.dtypes[1] is not None and ctx.needs_input_grad[2]:
                grad_b = flat_grad.sum(0).to(ctx.dtypes[1])
        return grad_x, grad_w, grad_b, None, None, None
