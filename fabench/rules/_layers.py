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

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from fabench.errors import FabenchError
from fabench.rules import _init
from fabench.rules._base import BUFFER_PREFIX
from fabench.rules._functions import RuleConv2d, RuleLinear

#: Attribute holding a direct-feedback rule's per-layer object (see fabench.rules._direct).
DIRECT_ATTR = "_fabench_direct"
#: Attribute holding the layer's :class:`RuleLayer`.
LAYER_ATTR = "_fabench_rule"


class RuleLayer:
    """One covered layer as a rule sees it: its name, module, weight, seed and the rule's buffers.

    Rules create tensors on the layer with :meth:`add_buffer` (registered on the module as
    ``feedback_<key>``, so they move with ``model.to()``, are saved in checkpoints, compared across
    DDP replicas and removed by ``handle.remove()``) and draw random numbers with
    :meth:`draw_normal` / :meth:`generator`, which are seeded by (run seed, layer name, purpose).
    """

    def __init__(self, name: str, module: nn.Module, seed: int, intercept: bool, rule, modifiers) -> None:
        self.name, self.module, self.seed, self.intercept = name, module, seed, intercept
        self.rule, self.modifiers = rule, tuple(modifiers)
        self.saved_keys: list[str] = []
        self.own_keys: list[str] = []
        self.direct = None

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv2d)

    def add_buffer(self, key: str, tensor: torch.Tensor, *, persistent: bool = True, saved: bool = True) -> torch.Tensor:
        """Register ``tensor`` as buffer ``feedback_<key>``; ``saved``: handed to :meth:`Rule.feedback` in backward."""
        self.module.register_buffer(BUFFER_PREFIX + key, tensor, persistent=persistent)
        if key not in self.own_keys:
            self.own_keys.append(key)
        if saved and key not in self.saved_keys:
            self.saved_keys.append(key)
        return tensor

    def buffer(self, key: str) -> torch.Tensor:
        """The layer's current buffer ``key`` (``feedback_<key>``)."""
        return self.module._buffers[BUFFER_PREFIX + key]

    def has_buffer(self, key: str) -> bool:
        return self.module._buffers.get(BUFFER_PREFIX + key) is not None

    def saved_buffers(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.module._buffers[BUFFER_PREFIX + k] for k in self.saved_keys)

    def buffer_names(self) -> list[str]:
        """The module-level names of the buffers rules added here (``feedback_weight``, ...)."""
        return [BUFFER_PREFIX + k for k in self.own_keys if BUFFER_PREFIX + k in self.module._buffers]

    def generator(self, purpose: str, device=None) -> torch.Generator:
        """A generator seeded by (seed, layer name, ``purpose``): the same numbers in every process."""
        return _init.layer_generator(self.seed, self.name, purpose, device)

    def draw_normal(self, std: float, purpose: str) -> torch.Tensor:
        """N(0, std²) of W's shape, dtype and device, from the layer's ``purpose`` stream."""
        return _init.draw_normal(self.weight.detach(), std, self.seed, self.name, purpose)

    def init_std(self, init: str) -> float:
        """The std ``init`` (kaiming, xiao, xavier, weight) gives this layer's weight."""
        return _init.init_std(self.weight.detach(), init)


def feedback_signs(weight: torch.Tensor, buffers) -> torch.Tensor:
    """A fresh tensor of the feedback's signs, which the caller may scale in place: ``sign(W)``,
    or the fixed signs a modifier holds in buffer ``sign`` (``+ei``)."""
    fixed = buffers.get("sign")
    return torch.sign(weight) if fixed is None else fixed.clone()


def uses_own_forward(module: nn.Module) -> bool:
    """True for Conv2d/Linear subclasses that replace the standard forward."""
    base = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
    own = type(module).forward is not base.forward
    return own or (isinstance(module, nn.Conv2d) and type(module)._conv_forward is not nn.Conv2d._conv_forward)


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
    rule: RuleLayer = self._fabench_rule
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


def conv_function(module: nn.Module, rule: RuleLayer, x, weight, bias, stride, padding, dilation, groups):
    """One conv call with the rule's δx: through B, or through a direct-feedback layer object."""
    direct = module.__dict__.get(DIRECT_ATTR)
    if direct is not None:
        return direct.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return RuleConv2d.apply(x, weight, bias, rule, None, None, stride, padding, dilation, groups, *rule.saved_buffers())


def linear_function(module: nn.Module, rule: RuleLayer, x, weight, bias):
    """One linear call with the rule's δx: through B, or through a direct-feedback layer object."""
    direct = module.__dict__.get(DIRECT_ATTR)
    if direct is not None:
        return direct.linear(x, weight, bias)
    return RuleLinear.apply(x, weight, bias, rule, None, None, *rule.saved_buffers())


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


#: Attribute holding the weight an intercepted layer's last forward really used (detached, no copy).
SEEN_WEIGHT_ATTR = "_fabench_seen_weight"


def _conv_call(module: nn.Module, rule: RuleLayer, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
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


def _linear_call(module: nn.Module, rule: RuleLayer, x, weight, bias=None):
    module.__dict__[SEEN_WEIGHT_ATTR] = weight.detach()
    return linear_function(module, rule, x, weight, bias)


_CONV_FUNCS = {F.conv2d, torch.conv2d}
_LINEAR_FUNCS = {F.linear, torch._C._nn.linear}


class _InterceptMode(TorchFunctionMode):
    """Catches the layer's own conv2d/linear call and routes it through B."""

    def __init__(self, module: nn.Module, rule: RuleLayer) -> None:
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


def install_forward(module: nn.Module, name: str, rule: RuleLayer) -> None:
    """Mark ``module`` as covered and, unless its rule is exact (bp), route its δx through B."""
    module._fabench_rule = rule
    module._fabench_name = name
    if rule.rule.exact:
        return
    if rule.intercept:
        impl = intercepting_forward
    else:
        impl = feedback_conv_forward if isinstance(module, nn.Conv2d) else feedback_linear_forward
    module.forward = types.MethodType(impl, module)


def uninstall(module: nn.Module) -> None:
    """Remove everything :func:`install_forward` and the buffers added; the class forward is back."""
    layer = module.__dict__.get(LAYER_ATTR)
    for name in (layer.buffer_names() if layer is not None else []):
        module._buffers.pop(name, None)
    for attr in ("forward", LAYER_ATTR, "_fabench_name", DIRECT_ATTR, SEEN_WEIGHT_ATTR):
        module.__dict__.pop(attr, None)
