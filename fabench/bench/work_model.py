"""The work one training step of a rule must do: FLOPs, bytes and random numbers, from the layers' shapes.

This is the physical limit a rule's measured step time is held against (``fabench bench rules``
prints both as ratios to bp). Counted for the covered layers (Conv2d, Linear), where the rules
differ; BatchNorm, activations and pooling cost every rule the same and are left out, so the
model's ratio to bp is an upper bound on how different two rules can be made to run.

Per covered layer with ``M`` multiply-adds in its forward (``batch · out positions · C_out ·
C_in/groups · k²`` for a conv, ``batch · in · out`` for a Linear), the step runs these kernels,
one after another:

- forward: ``2M`` FLOPs, reading the input map and W, writing the output map;
- weight gradient: ``2M`` (every rule), reading both maps, writing ∂L/∂W;
- δx, when the layer's input needs one (not for the first layer): ``2M`` for backprop and every
  rule that sends δy back through a W-shaped B (the FA family, kp, wm), reading δy and W (or B);
  for the direct rules their product with their matrix as the layer's feedback object counts it
  (``product_flops``, fabench.rules._direct: ``2·batch·classes·d_in`` for ``dfa``, ``dfa-conv``'s
  taps and depthwise spreading, ``dfa-wht``'s sign flips and transform, ``2·batch·d_out·d_in``
  for ``dense-fa``), reading that matrix (or signs) and e (or δy); every δx kernel writes the
  input's map. Direct matrices count as materialised (held); the tiled form's redrawing is what
  ``fabench bench feedback-memory`` measures;
- what the rule itself adds, as its class counts it (``Rule.step_work``): random numbers drawn
  (``fa-brsf``'s fresh magnitudes ``|W|``, the weight mirror's noise ξ per layer and mirror
  step) and extra kernels (the mirror's response and correlation, from its own noise shape).

All in float32. :func:`roofline_seconds` turns a :class:`Work` into time with this machine's
measured rates: per *kernel*, ``max(FLOPs / matmul rate, bytes / copy bandwidth)``, summed, plus
``draws · time per draw``. Kernels run one after another, so a kernel bound by memory (DFA's
``D_l e`` at a small batch streams its matrix at a few FLOPs per byte) cannot hide under the
compute of the layer's convolutions; the first version of this model took the maximum per
layer and so under-counted such a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from fabench.bench.timing import median_seconds


@dataclass
class LayerWork:
    """One covered layer's share of a step: its kernels' ``(FLOPs, bytes)`` and its random draws."""

    name: str
    kernels: list[tuple[float, float]] = field(default_factory=list)
    draws: float = 0.0

    @property
    def flops(self) -> float:
        return sum(flops for flops, _ in self.kernels)

    @property
    def bytes(self) -> float:
        return sum(moved for _, moved in self.kernels)


@dataclass
class Work:
    """A step's work, summed over the covered layers, and per layer."""

    layers: list[LayerWork] = field(default_factory=list)

    @property
    def flops(self) -> float:
        return sum(layer.flops for layer in self.layers)

    @property
    def bytes(self) -> float:
        return sum(layer.bytes for layer in self.layers)

    @property
    def draws(self) -> float:
        return sum(layer.draws for layer in self.layers)


@dataclass(frozen=True)
class Rates:
    """This machine's matmul rate, copy bandwidth and random-draw time (measured, not assumed)."""

    flop_per_s: float
    byte_per_s: float
    s_per_draw: float


def _shapes(model: nn.Module, handle, x: torch.Tensor) -> dict[str, tuple]:
    """(input shape, output shape, input needs grad) of every covered layer, from one forward."""
    seen: dict[str, tuple] = {}

    def hook(name):
        def record(module, args, output):
            if name not in seen and isinstance(output, torch.Tensor):
                seen[name] = (tuple(args[0].shape), tuple(output.shape), bool(args[0].requires_grad))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in handle.layers.items()]
    try:
        with torch.enable_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _macs(module: nn.Module, in_shape: tuple, out_shape: tuple) -> float:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return math.prod(out_shape) * (in_shape[1] // module.groups) * kh * kw
    return math.prod(out_shape) * in_shape[-1]


def _dx_kernel(handle, name: str, in_shape: tuple, out_shape: tuple, classes: int, macs: float):
    """``(FLOPs, bytes)`` of layer ``name``'s δx kernel: a direct rule's product with its matrix (or
    signs), as its feedback object counts it, else the transposed conv / matmul with W or B."""
    module, direct = handle.layers[name], handle.direct_feedback(name)
    if direct is None:
        return 2.0 * macs, 4.0 * (module.weight.numel() + math.prod(out_shape) + math.prod(in_shape))
    source = in_shape[0] * classes if direct.state.captures_error else math.prod(out_shape)  # e, or δy
    return direct.product_flops(in_shape[0]), 4.0 * (direct.matrix().numel + source + math.prod(in_shape))


def step_work(model: nn.Module, handle, x: torch.Tensor) -> Work:
    """The work of one training step of ``model`` under ``handle``'s rule on batch ``x``: forward,
    weight gradient and δx per covered layer, plus what the rule itself adds (``handle.step_work``:
    ``fa-brsf``'s fresh magnitudes, the weight mirror's phase, a plugin rule's own kernels)."""
    shapes = _shapes(model, handle, x)
    classes = model(x[:1]).shape[-1]
    work = Work()
    for name, (in_shape, out_shape, needs_dx) in shapes.items():
        module = handle.layers[name]
        macs = _macs(module, in_shape, out_shape)
        maps = 4.0 * (math.prod(in_shape) + math.prod(out_shape) + module.weight.numel())
        layer = LayerWork(name, kernels=[(2.0 * macs, maps), (2.0 * macs, maps)])  # forward, weight gradient
        if needs_dx:
            layer.kernels.append(_dx_kernel(handle, name, in_shape, out_shape, classes, macs))
        kernels, draws = handle.step_work(name, needs_dx)
        layer.kernels += kernels
        layer.draws += draws
        work.layers.append(layer)
    return work


def measure_rates(device: torch.device) -> Rates:
    """Time a matmul, a large copy and a large normal draw on ``device`` (median of 3)."""
    a, b = torch.randn(512, 512, device=device), torch.randn(512, 512, device=device)
    big, out = torch.randn(1 << 23, device=device), torch.empty(1 << 23, device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    matmul = median_seconds(lambda: a @ b, device)
    copy = median_seconds(lambda: out.copy_(big), device)
    draw = median_seconds(lambda: torch.randn(out.shape, generator=gen, out=out, device=device), device)
    return Rates(2 * 512**3 / matmul, 2 * 4 * big.numel() / copy, draw / big.numel())


def roofline_seconds(work: Work, rates: Rates) -> float:
    """The fastest a step with ``work`` could run at ``rates``: per kernel, compute or memory, whichever binds."""
    return sum(max(flops / rates.flop_per_s, moved / rates.byte_per_s)
               for layer in work.layers for flops, moved in layer.kernels) + work.draws * rates.s_per_draw
