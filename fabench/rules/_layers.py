"""Per-layer attachment: buffers on the module and a forward that routes through B.

A covered layer keeps its class, its parameters and its state_dict keys; it gains buffers
named ``feedback_*`` and, for rules other than ``bp``, an instance-level ``forward`` that
calls :class:`RuleConv2d`/:class:`RuleLinear` with exactly the arguments the class's
own forward would pass to ``F.conv2d``/``F.linear``.

Subclasses that override ``forward`` (timm's ``Conv2dSame``, ``StdConv2d``,
``ScaledStdConv2d``, ...) keep their own forward untouched: it runs inside a
:class:`torch.overrides.TorchFunctionMode` that catches its single ``conv2d``/``linear`` call
and routes that call through B, so the rule acts on the weight tensor the convolution really
uses (for weight-standardised convs, the standardised weight). A subclass whose forward does
not make exactly one such call is refused with an error naming the layer.

Rules that replace δx wholesale (``dfa``, ``dense-fa``: :mod:`fabench.rules._direct`) put a
feedback object on the layer (attribute ``_fabench_direct``); the same forwards then route the
call through that object's own autograd function instead of through B.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from fabench.errors import FabenchError
from fabench.rules._functions import RuleConv2d, RuleLinear

#: Buffer that holds each kind's fixed tensor (None: the kind needs none).
KIND_BUFFER = {"fixed": "feedback_weight", "kp": "feedback_weight", "wm": "feedback_weight", "usf": "feedback_scale", "magnitude": "feedback_magnitude",
               "brsf": "feedback_scale", "sn": None, "sn-spectral": None}
SIGN_BUFFER = "feedback_sign"
NORM_BUFFER = "feedback_norm0"
MATRIX_BUFFER = "feedback_matrix"
MIRROR_STEP_BUFFER = "feedback_mirror_steps"
ALL_BUFFERS = ("feedback_weight", "feedback_scale", "feedback_magnitude", SIGN_BUFFER, NORM_BUFFER, MATRIX_BUFFER,
               MIRROR_STEP_BUFFER)
#: Attribute holding a direct-feedback rule's per-layer object (see fabench.rules._direct).
DIRECT_ATTR = "_fabench_direct"


@dataclass(frozen=True)
class LayerRule:
    """What one covered layer does in backward: its kind and whether its signs are fixed."""

    kind: str
    fixed_sign: bool
    intercept: bool


def uses_own_forward(module: nn.Module) -> bool:
    """True for Conv2d/Linear subclasses that replace the standard forward."""
    base = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
    own = type(module).forward is not base.forward
    return own or (isinstance(module, nn.Conv2d) and type(module)._conv_forward is not nn.Conv2d._conv_forward)


def layer_buffers(module: nn.Module, rule: LayerRule) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The (kind buffer, fixed sign) pair the autograd function needs for this layer."""
    name = KIND_BUFFER[rule.kind]
    buffer = getattr(module, name) if name else None
    sign = getattr(module, SIGN_BUFFER) if rule.fixed_sign else None
    return buffer, sign


def _same_padding(module: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Resolve padding='same' as PyTorch does: symmetric part in the conv, the odd extra on the right."""
    pads, extra = [], []
    for d, k in zip(module.dilation, module.kernel_size, strict=False):
        total = d * (k - 1)
        pads.append(total // 2)
        extra.append(total - 2 * (total // 2))
    if any(extra):
        x = F.pad(x, [0, extra[1], 0, extra[0]])
    return x, tuple(pads)


def feedback_conv_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """nn.Conv2d's forward with δx routed through the layer's feedback tensor."""
    rule: LayerRule = self._fabench_rule
    if self.padding_mode != "zeros":
        x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        padding = (0, 0)
    elif self.padding == "same":
        x, padding = _same_padding(self, x)
    elif self.padding == "valid":
        padding = (0, 0)
    else:
        padding = self.padding
    return conv_function(self, rule, x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


def feedback_linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear's forward with δx routed through the layer's feedback tensor."""
    return linear_function(self, self._fabench_rule, x, self.weight, self.bias)


def conv_function(module: nn.Module, rule: LayerRule, x, weight, bias, stride, padding, dilation, groups):
    """One conv call with the rule's δx: through B, or through a direct-feedback layer object."""
    direct = module.__dict__.get(DIRECT_ATTR)
    if direct is not None:
        return direct.conv2d(x, weight, bias, stride, padding, dilation, groups)
    buffer, sign = layer_buffers(module, rule)
    return RuleConv2d.apply(x, weight, bias, buffer, sign, None, None, rule.kind, stride, padding, dilation, groups)


def linear_function(module: nn.Module, rule: LayerRule, x, weight, bias):
    """One linear call with the rule's δx: through B, or through a direct-feedback layer object."""
    direct = module.__dict__.get(DIRECT_ATTR)
    if direct is not None:
        return direct.linear(x, weight, bias)
    buffer, sign = layer_buffers(module, rule)
    return RuleLinear.apply(x, weight, bias, buffer, sign, None, None, rule.kind)


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


#: Attribute holding the weight an intercepted layer's last forward really used (detached, no copy).
SEEN_WEIGHT_ATTR = "_fabench_seen_weight"


def _conv_call(module: nn.Module, rule: LayerRule, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Route one intercepted ``conv2d(...)`` call through B, normalising its arguments."""
    module.__dict__[SEEN_WEIGHT_ATTR] = weight.detach()
    stride, dilation = _pair(stride), _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif all(s == 1 for s in stride) and all(d * (k - 1) % 2 == 0 for d, k in zip(dilation, weight.shape[2:], strict=False)):
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, weight.shape[2:], strict=False))
        else:
            raise FabenchError(f"layer calls conv2d with padding='{padding}' and an even kernel; not supported")
    return conv_function(module, rule, x, weight, bias, stride, _pair(padding), dilation, groups)


def _linear_call(module: nn.Module, rule: LayerRule, x, weight, bias=None):
    module.__dict__[SEEN_WEIGHT_ATTR] = weight.detach()
    return linear_function(module, rule, x, weight, bias)


_CONV_FUNCS = {F.conv2d, torch.conv2d}
_LINEAR_FUNCS = {F.linear, torch._C._nn.linear}


class _InterceptMode(TorchFunctionMode):
    """Catches the layer's own conv2d/linear call and routes it through B."""

    def __init__(self, module: nn.Module, rule: LayerRule) -> None:
        super().__init__()
        self.module, self.rule, self.calls = module, rule, 0
        self.targets = _CONV_FUNCS if isinstance(module, nn.Conv2d) else _LINEAR_FUNCS

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.targets:
            return func(*args, **kwargs)
        self.calls += 1
        call = _conv_call if isinstance(self.module, nn.Conv2d) else _linear_call
        return call(self.module, self.rule, *args, **kwargs)


def intercepting_forward(self: nn.Module, *args, **kwargs):
    """Run the subclass's own forward, routing its single conv2d/linear call through B."""
    mode = _InterceptMode(self, self._fabench_rule)
    with mode:
        out = type(self).forward(self, *args, **kwargs)
    if mode.calls != 1:
        raise FabenchError(
            f"layer '{self._fabench_name}' ({type(self).__name__}) made {mode.calls} conv/linear calls in "
            "its forward; fabench needs exactly one to apply a feedback rule (exclude it with --exclude)"
        )
    return out


def install_forward(module: nn.Module, name: str, rule: LayerRule) -> None:
    """Mark ``module`` as covered and, unless its rule is bp, route its δx through B."""
    module._fabench_rule = rule
    module._fabench_name = name
    if rule.kind == "bp":
        return
    if rule.intercept:
        impl = intercepting_forward
    else:
        impl = feedback_conv_forward if isinstance(module, nn.Conv2d) else feedback_linear_forward
    module.forward = types.MethodType(impl, module)


def uninstall(module: nn.Module) -> None:
    """Remove everything :func:`install_forward` and the buffers added; the class forward is back."""
    for attr in ("forward", "_fabench_rule", "_fabench_name", DIRECT_ATTR, SEEN_WEIGHT_ATTR):
        module.__dict__.pop(attr, None)
    for name in ALL_BUFFERS:
        module._buffers.pop(name, None)
