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
``draws · time per draw``. A direct rule's product with its held matrices is priced at the rate
a product of a matrix larger than the last-level cache with ``batch`` vectors reads its matrix
on this machine, when the step's matrices together do not fit in that cache: such a product
does not stream at the copy bandwidth (PyTorch's GEMM repacks the matrix; docs/dfa.md).
Kernels run one after another, so a kernel bound by memory (DFA's
``D_l e`` at a small batch streams its matrix at a few FLOPs per byte) cannot hide under the
compute of the layer's convolutions; the first version of this model took the maximum per
layer and so under-counted such a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fabench.bench.timing import median_seconds


@dataclass
class LayerWork:
    """One covered layer's share of a step: its kernels' ``(FLOPs, bytes)``, its products with a
    held feedback matrix ``(FLOPs, bytes, matrix bytes)`` and its random draws."""

    name: str
    kernels: list[tuple[float, float]] = field(default_factory=list)
    draws: float = 0.0
    products: list[tuple[float, float, float]] = field(default_factory=list)

    @property
    def flops(self) -> float:
        return sum(flops for flops, _ in self.kernels) + sum(flops for flops, _, _ in self.products)

    @property
    def bytes(self) -> float:
        return sum(moved for _, moved in self.kernels) + sum(moved for _, moved, _ in self.products)


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

    @property
    def matrix_bytes(self) -> float:
        """Bytes of the held feedback matrices the step's products read."""
        return sum(matrix for layer in self.layers for _, _, matrix in layer.products)


@dataclass(frozen=True)
class Rates:
    """This machine's matmul rate, copy bandwidth and random-draw time (measured, not assumed);
    the rate a product of a matrix larger than the cache with a few vectors reads the matrix
    (None: the copy bandwidth), and the last-level cache's size (None: not known)."""

    flop_per_s: float
    byte_per_s: float
    s_per_draw: float
    product_byte_per_s: float | None = None
    cache_bytes: float | None = None


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


def _dx_work(layer: LayerWork, handle, in_shape: tuple, out_shape: tuple, classes: int, macs: float) -> None:
    """Add layer's δx to ``layer``: a direct rule's product with its matrix (or signs), as its
    feedback object counts it, else the transposed conv / matmul with W or B."""
    module, direct = handle.layers[layer.name], handle.direct_feedback(layer.name)
    if direct is None:
        layer.kernels.append((2.0 * macs, 4.0 * (module.weight.numel() + math.prod(out_shape) + math.prod(in_shape))))
        return
    source = in_shape[0] * classes if direct.state.captures_error else math.prod(out_shape)  # e, or δy
    matrix = 4.0 * direct.matrix().numel
    layer.products.append((direct.product_flops(in_shape[0]), matrix + 4.0 * (source + math.prod(in_shape)), matrix))


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
            _dx_work(layer, handle, in_shape, out_shape, classes, macs)
        kernels, draws = handle.step_work(name, needs_dx)
        layer.kernels += kernels
        layer.draws += draws
        work.layers.append(layer)
    return work


#: Smallest buffer of the bandwidth probe; it is at least twice the last-level cache.
MIN_STREAM_BYTES = 256 * 2**20
#: Vectors of the product probe: a direct rule's batch of output errors is of this order.
PRODUCT_VECTORS = 16


def last_level_cache_bytes(device: torch.device) -> int | None:
    """The largest cache between the cores (or SMs) and memory: the CPU's L3 (or L2) from sysfs,
    a CUDA device's L2; None where it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes, default=None)


def stream_elements(cache_bytes: int | None) -> int:
    """float32 elements of each buffer of the bandwidth probe: twice the last-level cache (at least
    :data:`MIN_STREAM_BYTES`), so that the copy streams from memory as a step's large operands do."""
    return max(MIN_STREAM_BYTES, 2 * (cache_bytes or 0)) // 4


def measure_rates(device: torch.device) -> Rates:
    """Time a matmul, a copy that streams from memory and a large normal draw on ``device`` (median of 3).

    The copy's buffers are larger than the last-level cache: a copy that fits in it (this machine
    class's L3 holds hundreds of MiB) measures the cache, and the model then prices the matrices
    of ``dfa``, read once per step from memory, at several times their real rate."""
    a, b = torch.randn(512, 512, device=device), torch.randn(512, 512, device=device)
    cache = last_level_cache_bytes(device)
    big = torch.randn(stream_elements(cache), device=device)
    out = torch.empty_like(big)
    gen = torch.Generator(device=device).manual_seed(0)
    draws = out[: 1 << 23]
    matrix = big[: big.numel() // 1024 * 1024].view(-1, 1024)
    vectors = torch.randn(1024, PRODUCT_VECTORS, device=device)

    matmul = median_seconds(lambda: a @ b, device)
    copy = median_seconds(lambda: out.copy_(big), device)
    draw = median_seconds(lambda: torch.randn(draws.shape, generator=gen, out=draws, device=device), device)
    product = median_seconds(lambda: torch.mm(matrix, vectors), device)
    return Rates(2 * 512**3 / matmul, 2 * 4 * big.numel() / copy, draw / draws.numel(),
                 product_byte_per_s=4 * matrix.numel() / product, cache_bytes=cache)


def product_byte_rate(work: Work, rates: Rates) -> float:
    """The byte rate of the step's products with held matrices: the measured product rate when
    the matrices together exceed the last-level cache (each step reads them from memory), else
    the copy bandwidth."""
    from_memory = rates.cache_bytes is None or work.matrix_bytes > rates.cache_bytes
    return rates.product_byte_per_s if rates.product_byte_per_s and from_memory else rates.byte_per_s


def roofline_seconds(work: Work, rates: Rates) -> float:
    """The fastest a step with ``work`` could run at ``rates``: per kernel, compute or memory, whichever binds."""
    product_rate = product_byte_rate(work, rates)
    kernels = sum(max(flops / rates.flop_per_s, moved / rates.byte_per_s)
                  for layer in work.layers for flops, moved in layer.kernels)
    products = sum(max(flops / rates.flop_per_s, moved / product_rate)
                   for layer in work.layers for flops, moved, _ in layer.products)
    return kernels + products + work.draws * rates.s_per_draw
