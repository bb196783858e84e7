"""The probe: per-layer alignment of a rule's error signals with backprop's, on a fixed batch.

One probe runs the probe batch forward and backward twice, from the same weights: once with
the rule (what training uses) and once under ``handle.exact_backprop()`` (every layer's
class forward: the true gradients). Per layer that carries the rule it compares

- ``dx``: the error signal the layer sends down, i.e. the gradient with respect to its input
  that this layer alone produces (``Bᵀδy`` under the rule, ``Wᵀδy`` under backprop, each pass
  with its own upstream ``δy``: the full-rule signal against the true one, as in the
  literature, not one layer's step given the same ``δy``);
- ``dw``: the layer's weight gradient, the direction the optimizer is given;
- ``dy``: the error arriving at the layer's output (its norm, to show vanishing or exploding
  feedback through depth);
- B against W: angle, norm ratio, sign concordance (current B and current W; only where B has
  W's shape, so not for ``dfa``'s ``[d_in, classes]`` matrices).

The first layer sends no δx: its input, the image, needs no gradient (as in training).

How the signals are caught: a forward pre-hook on each covered layer hands the layer an alias
of its input (``x.view_as(x)``) and puts a tensor hook on it, so the hook receives exactly the
gradient this layer sends (not the sum over the tensor's other consumers, e.g. a ResNet
shortcut); a forward hook puts a tensor hook on the output. These hooks exist only during the
probe's own forward passes; gradients come from ``torch.autograd.grad``, so no ``.grad`` is
touched.

Not disturbing training (:func:`undisturbed`): the probe runs the model in training mode (so
BatchNorm normalises with the probe batch's statistics, as in a training step), then puts
every module's mode back, restores every buffer that is not a feedback buffer (BatchNorm
running statistics and ``num_batches_tracked``) and runs inside ``torch.random.fork_rng`` with
a fixed seed for each pass, so dropout masks and ``fa-brsf``'s redrawn magnitudes are the same
in both passes and training's random streams are untouched. The probe computes in float32
(no autocast) whatever ``--amp`` says.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fabench.diagnostics.metrics import DotSums, angle_deg, norm, norm_ratio, sign_concordance
from fabench.errors import FabenchError

#: Images in the probe batch: the first of the test split, in stored order, test transform.
PROBE_IMAGES = 64
#: Seed of torch's generators inside the probe (dropout, fa-brsf), restored afterwards.
PROBE_SEED = 0
#: The ``split`` column of probe rows in curves.csv.
PROBE_SPLIT = "probe"

#: Every metric a probe logs per layer, with its meaning (units in the name or the text).
METRICS = {
    "depth": "position of the layer in forward order, 0 = first layer the input meets",
    "dx_angle": "degrees between the rule's and backprop's δx (the gradient the layer sends to its input)",
    "dw_angle": "degrees between the rule's and backprop's weight gradient",
    "bw_angle": "degrees between B and W, flattened",
    "bw_norm_ratio": "‖B‖ / ‖W‖ (Frobenius)",
    "sign_concordance": "fraction of entries with sign(B) = sign(W)",
    "dy_norm": "error arriving at the layer's output under the rule: RMS over probe images of ‖δy_i‖",
    "dx_norm": "error the layer sends down under the rule: RMS over probe images of ‖δx_i‖",
    "w_norm": "‖W‖ (Frobenius), what +const holds fixed",
}


@dataclass
class _LayerSignals:
    """What one layer's hooks collected over the two passes."""

    depth: int
    rule_dx: list[torch.Tensor] = field(default_factory=list)
    dx: DotSums = field(default_factory=DotSums)
    dy_sq: float = 0.0
    calls: int = 0


@dataclass
class LayerDiagnostics:
    """One layer's probe values: its module name, depth and ``{metric: value}``."""

    name: str
    depth: int
    values: dict[str, float]


def probe_batch(data, images: int = PROBE_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``images`` test images and labels of a run's data, as the model sees them.

    ``data`` is a :class:`fabench.train.batches.RunData`. Fetched inside ``fork_rng`` because a
    DataLoader (folder datasets) draws a seed from torch's generator when it starts.
    """
    xs, ys, have = [], [], 0
    with torch.random.fork_rng(devices=[]):
        for x, y in data.test(images):
            xs.append(x)
            ys.append(y)
            have += y.shape[0]
            if have >= images:
                break
    if not xs:
        raise FabenchError("the dataset has no test images to probe with; use --diagnostics off")
    return torch.cat(xs)[:images], torch.cat(ys)[:images]


def _cuda_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _seed_generators(device: torch.device) -> None:
    """Seed the CPU generator and the probe device's own (not every CUDA device's, unlike
    ``torch.manual_seed``), so that ``fork_rng`` restores everything that was seeded."""
    torch.default_generator.manual_seed(PROBE_SEED)
    for index in _cuda_devices(device):
        torch.cuda.default_generators[index].manual_seed(PROBE_SEED)


@contextlib.contextmanager
def undisturbed(model: nn.Module, device: torch.device, handle) -> Iterator[None]:
    """Training mode and fresh random streams inside; modes, buffers and RNG as before after.

    The rule's own buffers (``handle.owns_buffer``) are not copied: no forward changes them.
    """
    modes = [(module, module.training) for module in model.modules()]
    saved = {name: b.detach().clone() for name, b in model.named_buffers()
             if not handle.owns_buffer(name)}
    try:
        with torch.random.fork_rng(devices=_cuda_devices(device)), torch.enable_grad(), \
                torch.autocast(device.type, enabled=False):
            model.train()
            yield
    finally:
        buffers = dict(model.named_buffers())
        with torch.no_grad():
            for name, value in saved.items():
                buffers[name].copy_(value)
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _signal_hooks(layers: dict[str, nn.Module], on_dx, on_dy) -> Iterator[None]:
    """Forward (pre-)hooks that put tensor hooks on each layer's input alias and output."""
    def pre_hook(name):
        def hook(module, args):
            x = args[0]
            index = on_dx(name, None)  # counts the call (and gives depth) even without a δx
            if not (isinstance(x, torch.Tensor) and x.requires_grad):
                return None
            alias = x.view_as(x)
            alias.register_hook(lambda grad: on_dx(name, (index, grad)))
            return (alias, *args[1:])
        return hook

    def post_hook(name):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(lambda grad: on_dy(name, grad))
        return hook

    handles = []
    try:
        for name, module in layers.items():
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(post_hook(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _backward_pass(model, layers, images, labels, on_dx, on_dy) -> dict[str, torch.Tensor]:
    """Forward and backward once with the hooks on; return each layer's weight gradient.

    The images need no gradient, as in training: the first layer sends no δx (and rules that
    plan their feedback at the first forward, such as dfa, see the inputs training gives them).
    """
    _seed_generators(images.device)
    with _signal_hooks(layers, on_dx, on_dy):
        logits = model(images)
        # summed, not averaged: each image's δ is its own loss gradient (norms per image)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        weights = [module.weight for module in layers.values()]
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
    return {name: g for name, g in zip(layers, grads, strict=True) if g is not None}


def _rule_pass(model, layers, images, labels, signals: dict[str, _LayerSignals]) -> dict[str, torch.Tensor]:
    """The rule's pass: store each δx, sum ‖δy‖², record forward order as depth."""
    def on_dx(name, event):
        if event is None:  # forward: the layer is called
            if name not in signals:
                signals[name] = _LayerSignals(depth=len(signals))
            signals[name].calls += 1
            return signals[name].calls - 1
        _, grad = event
        signals[name].rule_dx.append(grad.detach())
        return None

    def on_dy(name, grad):
        signals[name].dy_sq += norm(grad) ** 2

    return _backward_pass(model, layers, images, labels, on_dx, on_dy)


def _true_pass(model, handle, layers, images, labels, signals: dict[str, _LayerSignals]) -> dict[str, torch.Tensor]:
    """Backprop's pass: compare each δx with the rule's, in the same call order."""
    calls: dict[str, int] = {}

    def on_dx(name, event):
        if event is None:
            calls[name] = calls.get(name, 0) + 1
            return calls[name] - 1
        index, grad = event
        layer = signals.get(name)
        if layer is not None and index < len(layer.rule_dx) and layer.rule_dx[index] is not None:
            layer.dx.add(layer.rule_dx[index], grad)
            layer.rule_dx[index] = None  # free it: only the sums are needed from here
        return None

    with handle.exact_backprop():
        return _backward_pass(model, layers, images, labels, on_dx, lambda name, grad: None)


def _weight_metrics(handle, name: str, module: nn.Module) -> dict[str, float]:
    """B against W for one layer; only ‖W‖ where B cannot be set against W entry by entry (a
    direct-feedback matrix, or a layer whose forward transforms W: see handle.shares_weight_shape)."""
    weight = module.weight.detach()
    values = {"w_norm": norm(weight)}
    if not handle.shares_weight_shape(name):
        return values
    feedback = handle.feedback(name)
    if feedback.shape != weight.shape:
        return values
    values.update(bw_angle=angle_deg(feedback, weight), bw_norm_ratio=norm_ratio(feedback, weight),
                  sign_concordance=sign_concordance(feedback, weight))
    return values


def measure(model: nn.Module, handle, images: torch.Tensor, labels: torch.Tensor) -> list[LayerDiagnostics]:
    """Probe every layer that carries ``handle``'s rule; rows come in depth order.

    Leaves parameters, ``.grad``, buffers other than feedback buffers, module modes and torch's
    random streams as they were.
    """
    layers = dict(handle.layers)
    device = images.device
    signals: dict[str, _LayerSignals] = {}
    with undisturbed(model, device, handle):
        rule_dw = _rule_pass(model, layers, images, labels, signals)
        true_dw = _true_pass(model, handle, layers, images, labels, signals)
        _seed_generators(device)
        weight_values = {name: _weight_metrics(handle, name, layers[name]) for name in signals}
    per_image = math.sqrt(images.shape[0])
    rows = []
    for name, layer in sorted(signals.items(), key=lambda item: item[1].depth):
        values = {"dx_angle": layer.dx.angle_deg(), "dw_angle": math.nan,
                  "dy_norm": math.sqrt(layer.dy_sq) / per_image,
                  "dx_norm": math.sqrt(layer.dx.aa) / per_image if layer.rule_dx else math.nan}
        if name in rule_dw and name in true_dw:
            values["dw_angle"] = angle_deg(rule_dw[name], true_dw[name])
        values.update(weight_values[name])
        rows.append(LayerDiagnostics(name, layer.depth, values))
    return rows
