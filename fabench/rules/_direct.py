"""Rules that replace a layer's δx wholesale: ``dfa``, ``dfa-conv`` and ``dense-fa``.

The FA family forms δx by a weight-shared transposed convolution with B (``_functions``).
These rules form it otherwise, from a fixed random matrix per layer (:mod:`._tiles`):

- ``dfa``: δx = D_l e, ``e = ∂L/∂logits`` (caught as :mod:`._dfa` explains), ``D_l`` of shape
  ``[d_in, classes]`` with ``d_in`` the layer's input size per sample (C·H·W for a conv);
- ``dfa-conv``: DFA whose conv feedback is a random kernel ``[classes, C_in, k_h, k_w]`` shared
  across positions (BioTorch's DFA conv layer, see :class:`StructuredDFA`):
  ``classes·C_in·k²`` numbers per layer instead of ``classes·C_in·H·W``; Linear layers get
  dense ``dfa`` matrices;
- ``dfa-wht``: DFA whose ``D_l`` is structured, random signs and a fast Walsh–Hadamard
  transform (see :class:`HadamardDFA`): the same role as ``dfa``'s matrix at ``d_in`` numbers
  per layer instead of ``classes·d_in``, and ``log2`` of the classes in work per entry of δx
  instead of the classes;
- ``dense-fa``: a conv's δx = Bᵀ δy with a dense ``[d_out, d_in]`` B over the flattened maps
  (no weight sharing); its Linear layers are exactly ``fa`` (same draws).

Which δx is replaced: every covered layer's, each from its own matrix, so each layer's input
receives ``D_l e``; the nonlinearity, BatchNorm, pooling and residual additions between layers
keep their exact gradients, and the weight gradient of every layer is the usual one from the δy
that reaches it. A tensor read by several covered layers (a residual block's input feeds conv1
and the shortcut conv) receives the sum of their ``D_l e``, plus what reaches it along uncovered
paths (the identity shortcut), as autograd sums any tensor's gradients. The output layer
receives e itself as its δy. The first layer's δx would go to the input image, which needs no
gradient: autograd does not ask for it, and no matrix is drawn (a layer whose input needs no
gradient at the first training step is left out of the plan).

Scale: each matrix is treated as the weight of a Linear layer (``[classes, d_in]`` for dfa,
``[d_out, d_in]`` for dense-fa) and drawn with ``apply``'s ``init`` (``auto`` = ``kaiming``,
std = sqrt(2/d_in), as ``fa``) unless ``scale`` gives the std. Then ‖D_l e‖² ≈ 2‖e‖²: every
layer's error has the output error's size, as ``fa`` keeps ‖δx‖ ≈ √2‖δy‖. ``dfa-conv``'s
kernel counts as fan-in the (position, tap) pairs its transposed conv sums, so its δx has the
same expected size as ``dfa``'s.

Memory: the matrices' shapes are known only once a forward has shown the feature-map sizes. The
*plan* (which form to use, how many bytes the matrices take) is made at the first forward with
gradients enabled, or at once when ``apply`` is given ``input_shape`` (it then runs one
batch-1 probe forward in eval mode). The form follows ``feedback_memory`` (:class:`MemoryPolicy`):
*materialised* matrices are drawn at their first backward and held as non-persistent buffers
(they are reproducible from the seed, so checkpoints do not carry gigabytes of them);
*tiled* matrices are redrawn tile by tile inside every backward.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fabench.errors import FabenchError
from fabench.rules import _dfa, _init, _tiles
from fabench.rules._base import Rule
from fabench.rules._functions import RuleConv2d, RuleLinear
from fabench.rules._layers import DIRECT_ATTR
from fabench.rules._options import FEEDBACK_INIT, FEEDBACK_SCALE, feedback_std
from fabench.rules._tiles import MemoryPolicy, RandomMatrix, parse_feedback_memory

#: The buffer key of a materialised matrix (``feedback_matrix``, not persistent).
MATRIX_KEY = "matrix"
MATRIX_BUFFER = "feedback_matrix"
#: Longest Walsh–Hadamard transform done as one product with the whole ``H_n`` (see walsh_hadamard).
DENSE_HADAMARD_MAX = 64
#: Root-model attribute holding the handle's :class:`DirectState`. The root hooks look it up
#: there (not in a closure), so a deep copy of the model carries a consistent copy of it.
STATE_ATTR = "_fabench_direct_state"


def _virtual_std(weight_shape: tuple[int, int], module: nn.Module, scale: float | None, init: str) -> float:
    """Std of a matrix viewed as a Linear weight ``[fan_out, fan_in]``, under ``init``."""
    if scale is not None:
        return scale
    if init == "weight":
        return _init.init_std(module.weight, "weight")
    return _init.init_std(torch.empty(weight_shape, device="meta"), "kaiming" if init == "auto" else init)


def _available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: free device memory; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as info:
            return int(re.search(r"MemAvailable:\s+(\d+)", info.read()).group(1)) * 1024
    except (OSError, AttributeError):
        return None


@dataclass
class DirectState:
    """What the layers of one handle share: the memory policy, the plan and the open error slot."""

    rule: str
    model_type: str
    policy: MemoryPolicy
    captures_error: bool
    #: what the layers receive in place of the output error e (the rule's ``output_signal``)
    signal: object = None
    form: str | None = None
    num_classes: int | None = None
    slot: _dfa.ErrorSlot | None = None
    feedbacks: dict[str, LayerFeedback] = field(default_factory=dict)

    def planned(self) -> list[LayerFeedback]:
        """Layers with a matrix in the plan: seen in training, with an input that needs a gradient."""
        return [fb for fb in self.feedbacks.values() if fb.in_shape is not None and fb.input_needs_grad]

    def matrix_bytes(self) -> int:
        """Bytes all planned matrices take when materialised (computed, never allocated)."""
        return sum(fb.matrix().nbytes(fb.module.weight.element_size()) for fb in self.planned())

    def plan(self, output) -> None:
        """Decide the form from the matrices' total size, once the layers have shown their shapes.

        Called after a forward with gradients; a forward in which no covered layer ran through
        its feedback (e.g. inside ``handle.exact_backprop()``) shows nothing and decides nothing.
        """
        if not any(fb.in_shape is not None for fb in self.feedbacks.values()):
            return
        if self.captures_error:
            self.num_classes = _dfa.check_logits(output, self.model_type).shape[1]
        self.form = self.policy.form_for(self.matrix_bytes())


class LayerFeedback:
    """One layer's replaced δx: its shapes as training shows them, its matrix, its product."""

    purpose = "abstract"

    def __init__(self, name: str, module: nn.Module, state: DirectState, seed: int,
                 scale: float | None, init: str, layer=None) -> None:
        self.name, self.module, self.state, self.layer = name, module, state, layer
        self.seed, self.scale, self.init = seed, scale, init
        self.in_shape: tuple[int, ...] | None = None
        self.out_shape: tuple[int, ...] | None = None
        self.input_needs_grad = False
        self._matrix: RandomMatrix | None = None

    # -- forward side -------------------------------------------------------------------
    def observe(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """Record per-sample shapes at the first forward with gradients (the plan needs them)."""
        if self.in_shape is None and torch.is_grad_enabled():
            self.in_shape, self.out_shape = tuple(x.shape[1:]), tuple(out.shape[1:])
            self.input_needs_grad = x.requires_grad

    def conv2d(self, x, weight, bias, stride, padding, dilation, groups) -> torch.Tensor:
        """The layer's conv call, with δx from this feedback (called by the engine's layer forward)."""
        out = RuleConv2d.apply(x, weight, bias, None, self, self.state.slot, stride, padding, dilation, groups)
        self.observe(x, out)
        return out

    def linear(self, x, weight, bias) -> torch.Tensor:
        """The layer's linear call, with δx from this feedback (called by the engine's layer forward)."""
        out = RuleLinear.apply(x, weight, bias, None, self, self.state.slot)
        self.observe(x, out)
        return out

    # -- the matrix ---------------------------------------------------------------------
    def matrix_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of this layer's fixed matrix, from the shapes training showed."""
        raise NotImplementedError

    def matrix(self) -> RandomMatrix:
        """This layer's fixed matrix (its definition; drawing it is :meth:`held`'s or the tiles')."""
        if self._matrix is None:
            if self.in_shape is None:
                raise FabenchError(f"layer '{self.name}' has not run a training forward yet; its "
                                   f"{self.state.rule} feedback shape is unknown")
            rows, cols = self.matrix_shape()
            std = self.std()
            self._matrix = RandomMatrix(self.seed, self.name, self.purpose, rows, cols, std)
        return self._matrix

    def virtual_weight_shape(self) -> tuple[int, int]:
        """The ``[fan_out, fan_in]`` Linear weight whose init gives the matrix's std."""
        raise NotImplementedError

    def std(self) -> float:
        """The matrix entries' standard deviation: ``scale``, else ``init`` on the virtual weight."""
        return _virtual_std(self.virtual_weight_shape(), self.module, self.scale, self.init)

    def draw(self, *, device, dtype) -> torch.Tensor:
        """What the materialised form holds: the whole matrix, drawn tile by tile."""
        return self.matrix().materialise(device=device, dtype=dtype)

    def held(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """What :meth:`draw` gives (drawn at first use and kept), or None when the plan says tiled."""
        if self.state.form != "materialised":
            return None
        buffer = self.module._buffers.get(MATRIX_BUFFER)
        if buffer is None:
            matrix = self.matrix()
            need, free = matrix.nbytes(torch.finfo(dtype).bits // 8), _available_bytes(device)
            if free is not None and need > free:
                raise FabenchError(f"{self.state.rule}: layer '{self.name}' needs {need / 2**20:.0f} MiB of feedback "
                                   f"matrix but {free / 2**20:.0f} MiB is free on {device}; use feedback_memory=tiled")
            buffer = self.draw(device=device, dtype=dtype)
            self.layer.add_buffer(MATRIX_KEY, buffer, persistent=False, saved=False)
        return buffer.to(device=device, dtype=dtype)

    # -- backward side ------------------------------------------------------------------
    def check_shape(self, x: torch.Tensor) -> None:
        """Refuse an input whose per-sample shape differs from the one the matrix was planned for."""
        if tuple(x.shape[1:]) != self.in_shape:
            raise FabenchError(f"layer '{self.name}' was planned for inputs of shape {self.in_shape} per sample and "
                               f"now gets {tuple(x.shape[1:])}: {self.state.rule}'s matrices are fixed to the "
                               "sizes of the first training step; keep the image size fixed while training")

    def error(self, slot, batch: int) -> torch.Tensor:
        """What this layer's feedback multiplies: the output error e of its forward pass, through the
        rule's :meth:`DirectRule.output_signal`."""
        error = _dfa.error_for(slot, self.name, batch)
        return error if self.state.signal is None else self.state.signal(error)

    def input_grad(self, grad_out: torch.Tensor, x: torch.Tensor, slot, geometry=None) -> torch.Tensor:
        """δx for input ``x`` given δy, the error slot and the conv's (stride, padding, dilation, groups)."""
        raise NotImplementedError

    def product_flops(self, batch: int) -> float:
        """FLOPs of one backward's feedback product at ``batch`` samples: one matmul with the matrix."""
        return 2.0 * batch * self.matrix().numel

    def compute_dtype(self) -> torch.dtype:
        """The matrix's dtype: the layer weight's (float32 under autocast, as the weights are)."""
        return self.module.weight.dtype

    def dense(self, *, device, dtype) -> torch.Tensor:
        """The matrix this layer's δx is a product with, drawn whole (for tests and diagnostics)."""
        return self.matrix().materialise(device=device, dtype=dtype)


class DenseDFA(LayerFeedback):
    """``dfa``: δx = D e with D ``[d_in, classes]``."""

    purpose = "dfa"

    def matrix_shape(self):
        return math.prod(self.in_shape), self.state.num_classes

    def virtual_weight_shape(self):
        return self.state.num_classes, math.prod(self.in_shape)

    def input_grad(self, grad_out, x, slot, geometry=None):
        self.check_shape(x)
        error = self.error(slot, x.shape[0])
        dtype = self.compute_dtype()
        flat = self.matrix().times_transposed(error.to(dtype), self.held(dtype, x.device))
        return flat.view(x.shape)


class StructuredDFA(LayerFeedback):
    """``dfa-conv`` on a conv: a random kernel D ``[classes, C_in, k_h, k_w]`` shared across positions.

    δx is the transposed convolution, with the layer's stride, padding and dilation, of D with
    ``e`` repeated at every output position: BioTorch's DFA conv layer, whose published ``dfa``
    numbers use this form. Computed without building that ``[batch, classes, H_out, W_out]``
    map: ``T = e·D`` gives each sample's per-tap values ``[C_in, k_h, k_w]``, and a depthwise
    transposed convolution of a map of ones with T sums, at every input position, the taps
    that cover it. Same result, at the cost of a depthwise conv instead of a ``classes``-wide one.
    Away from the borders every position of channel c receives the same value, ``e`` times the
    sum of D's taps for c.
    """

    purpose = "dfa-conv"

    def matrix_shape(self):
        return self.state.num_classes, self.in_shape[0] * math.prod(self.module.kernel_size)

    def virtual_weight_shape(self):
        # fan-in: the (position, tap) pairs summed into δx, so that ‖δx‖² ≈ 2‖e‖² as for dfa
        return self.state.num_classes, self.matrix_shape()[1] * math.prod(self.out_shape[1:])

    def std(self) -> float:
        """As for every matrix, except ``xavier``: Glorot's std of the kernel tensor itself,
        ``[classes, C_in, k_h, k_w]`` (fan-in C_in·k², fan-out classes·k²), which is what BioTorch's
        DFA layer draws (its published ``dfa`` numbers); its δx is then larger than dfa's."""
        if self.scale is None and self.init == "xavier":
            kernel = (self.state.num_classes, self.in_shape[0], *self.module.kernel_size)
            return _init.init_std(torch.empty(kernel, device="meta"), "xavier")
        return super().std()

    def product_flops(self, batch: int) -> float:
        """The taps' matmul plus the depthwise transposed conv that spreads them over the map."""
        return super().product_flops(batch) + 2.0 * batch * self.matrix().cols * math.prod(self.out_shape[1:])

    def input_grad(self, grad_out, x, slot, geometry=None):
        self.check_shape(x)
        error = self.error(slot, x.shape[0])
        dtype = self.compute_dtype()
        taps = self.matrix().times(error.to(dtype), self.held(dtype, x.device))
        stride, padding, dilation, _ = geometry
        maps = x.shape[0] * x.shape[1]
        ones = torch.ones((), device=x.device, dtype=dtype).expand(1, maps, *grad_out.shape[2:])
        grad = torch.nn.grad.conv2d_input((1, maps, *x.shape[2:]), taps.reshape(maps, 1, *self.module.kernel_size),
                                          ones, stride, padding, dilation, maps)
        return grad.view(x.shape)


@functools.lru_cache(maxsize=64)
def hadamard(n: int, *, device, dtype) -> torch.Tensor:
    """Sylvester's ``n × n`` Hadamard matrix (``n`` a power of two): ``H[i, j] = (-1)^popcount(i & j)``."""
    index = torch.arange(n, device=device)
    bits = (index[:, None] & index[None, :]).to(torch.int64)
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits >>= 1
    return (1 - 2 * parity).to(dtype)


def hadamard_width(classes: int) -> int:
    """``n``: the length of ``dfa-wht``'s transform, the smallest power of two ≥ ``classes``."""
    return 1 << max(0, (classes - 1).bit_length())


def hadamard_blocks(d_in: int, classes: int) -> int:
    """How many blocks of ``n`` rows ``dfa-wht``'s ``D`` takes for ``d_in`` inputs (the last one cut)."""
    return -(-d_in // hadamard_width(classes))


def _hadamard_split(n: int) -> int:
    """``a`` in ``n = a·b`` for the two-product transform: ``a = b`` or ``2a = b``."""
    return 1 << ((n.bit_length() - 1) // 2)


def hadamard_flops(n: int) -> float:
    """FLOPs per entry of :func:`walsh_hadamard` of length ``n``: ``2n``, or ``2(a + b)`` for ``n = a·b``."""
    if n <= DENSE_HADAMARD_MAX:
        return 2.0 * n
    a = _hadamard_split(n)
    return 2.0 * (a + n // a)


def walsh_hadamard(x: torch.Tensor) -> torch.Tensor:
    """``H_n x`` along the last dimension (``n`` a power of two), Sylvester's unnormalised ``H``.

    Up to ``n = 64`` it is one product with ``H_n`` (``n`` multiply-adds per entry). Beyond,
    ``H_n = H_a ⊗ H_b`` for ``n = a·b`` (both powers of two), so viewing each length-``n``
    vector as an ``a × b`` matrix ``X`` (row-major), ``H_n x`` is ``H_a X H_b``: two small
    matrix products, ``a + b`` multiply-adds per entry (64 for n = 1024). Either runs at the
    matmul rate, where the ``log2 n`` butterfly passes of the textbook transform would each
    stream the whole tensor through memory.
    """
    n = x.shape[-1]
    if n <= DENSE_HADAMARD_MAX:
        return torch.matmul(x.reshape(-1, n), hadamard(n, device=x.device, dtype=x.dtype)).view(x.shape)
    a = _hadamard_split(n)
    grid = x.reshape(-1, a, n // a)
    left = hadamard(a, device=x.device, dtype=x.dtype)
    right = hadamard(n // a, device=x.device, dtype=x.dtype)
    return torch.matmul(left, torch.matmul(grid, right)).view(x.shape)


class HadamardDFA(DenseDFA):
    """``dfa-wht``: δx = D e with a structured ``D`` ``[d_in, classes]``: random signs, then a Hadamard transform.

    With ``n`` the smallest power of two ≥ classes, D's rows come in blocks of ``n``; block
    ``b`` is ``std · H_n[:, :classes] · diag(s_b)``, ``s_b`` a fixed random sign vector per
    block (the last block cut at ``d_in``). So ``D e`` is, block by block, ``std · H_n (s_b ⊙ e)``
    with ``e`` zero-padded to ``n``: one sign flip and one fast Walsh–Hadamard transform per
    block and sample (computed as small matrix products, :func:`walsh_hadamard`). Every entry
    of D is ``±std``, the columns within a block are orthogonal, and ``‖D e‖² ≈ d_in·std²·‖e‖²``,
    the same expected size as ``dfa``'s i.i.d. D.
    What it holds is the signs, ``blocks × classes ≈ d_in`` numbers (drawn as the signs of a
    :class:`RandomMatrix`'s entries, so seeding and tiling are ``dfa``'s); what it computes is
    at most ``batch · d_in · 64`` multiply-adds instead of ``dfa``'s ``batch · d_in · classes``.
    The structured random projection is the one of fast Johnson–Lindenstrauss transforms
    (Ailon & Chazelle 2006) and Fastfood (Le, Sarlós & Smola 2013); using it as DFA's feedback is
    fabench's own variant (docs/dfa.md).
    """

    purpose = "dfa-wht"

    @property
    def width(self) -> int:
        """``n``: the transform's length, the smallest power of two ≥ the classes."""
        return hadamard_width(self.state.num_classes)

    def matrix_shape(self):
        return hadamard_blocks(math.prod(self.in_shape), self.state.num_classes), self.state.num_classes

    def product_flops(self, batch: int) -> float:
        """The sign flips, and the transform's small products per block (:func:`walsh_hadamard`)."""
        blocks, classes = self.matrix_shape()
        return batch * blocks * (classes + self.width * hadamard_flops(self.width))

    def draw(self, *, device, dtype) -> torch.Tensor:
        """``s``: ``[blocks, classes]`` of ±1, the signs of the random matrix's entries (never 0)."""
        source = self.matrix().materialise(device=device, dtype=dtype)
        return torch.where(source >= 0, 1.0, -1.0).to(dtype)

    def signs(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``s``, held with the plan's form or drawn now when tiled."""
        held = self.held(dtype, device)
        return held if held is not None else self.draw(device=device, dtype=dtype)

    def project(self, error: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        """``D e`` for ``e`` ``[batch, classes]``: ``[batch, d_in]``."""
        classes = signs.shape[1]
        flipped = error[:, None, :] * signs[None]
        padded = F.pad(flipped, (0, self.width - classes))
        return walsh_hadamard(padded).reshape(error.shape[0], -1)[:, : math.prod(self.in_shape)] * self.std()

    def input_grad(self, grad_out, x, slot, geometry=None):
        self.check_shape(x)
        error = self.error(slot, x.shape[0])
        dtype = self.compute_dtype()
        return self.project(error.to(dtype), self.signs(dtype, x.device)).view(x.shape)

    def dense(self, *, device, dtype) -> torch.Tensor:
        """D itself: the product with each unit vector of the classes."""
        eye = torch.eye(self.state.num_classes, device=device, dtype=dtype)
        return self.project(eye, self.signs(dtype, device)).t().contiguous()


class DenseFA(LayerFeedback):
    """``dense-fa`` on a conv: δx = Bᵀ δy over flattened maps, B ``[d_out, d_in]``."""

    purpose = "dense-fa"

    def matrix_shape(self):
        return math.prod(self.out_shape), math.prod(self.in_shape)

    def virtual_weight_shape(self):
        return self.matrix_shape()

    def input_grad(self, grad_out, x, slot, geometry=None):
        self.check_shape(x)
        dtype = self.compute_dtype()
        flat = grad_out.reshape(grad_out.shape[0], -1).to(dtype)
        return self.matrix().times(flat, self.held(dtype, x.device)).view(x.shape)


class DirectRule(Rule):
    """A rule whose layers form δx from their own fixed random matrix (:class:`LayerFeedback`).

    ``conv_feedback`` / ``linear_feedback``: the :class:`LayerFeedback` subclass each kind of layer
    gets; None gives that kind of layer ``fa``'s fixed B instead (dense-fa's Linear layers).
    Rules of family ``direct`` receive the output error e (``output_signal`` may transform it).
    """

    family = "direct"
    options = (FEEDBACK_SCALE, FEEDBACK_INIT)
    conv_feedback: type[LayerFeedback] | None = None
    linear_feedback: type[LayerFeedback] | None = None

    def __init__(self, settings, seed: int) -> None:
        super().__init__(settings, seed)
        self.state: DirectState | None = None
        self._layers: dict = {}

    def feedback_class(self, layer) -> type[LayerFeedback] | None:
        return self.conv_feedback if layer.is_conv else self.linear_feedback

    def init_layer(self, layer) -> None:
        if self.feedback_class(layer) is None:  # fa's draw and formula
            layer.add_buffer("weight", layer.draw_normal(feedback_std(layer, self.settings), "fa"))

    def feedback(self, layer, weight, buffers):
        return buffers["weight"]

    def output_signal(self, error: torch.Tensor) -> torch.Tensor:
        """What the layers' matrices multiply in place of the output error ``e`` (default: e itself)."""
        return error

    def attach_model(self, model: nn.Module, layers, *, input_shape=None, feedback_memory: str = "auto") -> list:
        """Give each layer its feedback object and the root model its hooks; plan now if ``input_shape``."""
        captures = self.family == "direct"
        signal = None if type(self).output_signal is DirectRule.output_signal else self.output_signal
        self.state = state = DirectState(self.name, type(model).__name__, parse_feedback_memory(feedback_memory),
                                         captures_error=captures, signal=signal)
        self._layers = dict(layers)
        for name, layer in layers.items():
            cls = self.feedback_class(layer)
            if cls is None:
                continue
            feedback = cls(name, layer.module, state, self.seed, self.settings.scale, self.settings.init, layer)
            state.feedbacks[name] = feedback
            layer.direct = feedback
            setattr(layer.module, DIRECT_ATTR, feedback)
        setattr(model, STATE_ATTR, state)
        hooks = [model.register_forward_pre_hook(_open_slot), model.register_forward_hook(_after_forward),
                 _StateRemoval(model)]
        if input_shape is not None:
            _probe(model, tuple(input_shape))
        return hooks

    def describe(self) -> dict:
        """Which form ran and what the matrices take (see docs/dfa.md)."""
        state = self.state
        matrices = [fb.matrix() for fb in state.planned()] if state.form else []
        device = next((layer.weight.device for layer in self._layers.values()), torch.device("cpu"))
        return dict(
            feedback_form=state.form or "pending",
            feedback_memory=state.policy.text,
            feedback_matrices=len(matrices),
            feedback_matrix_mib=round(state.matrix_bytes() / 2**20, 3) if state.form else None,
            feedback_tile_mib=round(max((m.tile_rows(device) * m.cols * 4 for m in matrices), default=0) / 2**20, 3),
            tile_elements=_tiles.tile_elements(device),
        )


class _StateRemoval:
    """A handle whose ``remove()`` takes the shared state off the root model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def remove(self) -> None:
        self.model.__dict__.pop(STATE_ATTR, None)


def _probe(model: nn.Module, input_shape) -> None:
    """One batch-1 forward in eval mode with gradients on, so every layer shows its shapes."""
    try:
        param = next(model.parameters())
    except StopIteration:
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            model(torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype))
    finally:
        for module, mode in modes:
            module.training = mode


def _open_slot(model: nn.Module, args) -> None:
    """Root pre-hook: a fresh error slot for this forward pass (DFA rules only)."""
    state = model.__dict__.get(STATE_ATTR)
    if state is not None and state.captures_error and torch.is_grad_enabled():
        state.slot = _dfa.ErrorSlot()


def _after_forward(model: nn.Module, args, output):
    """Root hook: plan at the first training forward; route the logits through CaptureError."""
    state = model.__dict__.get(STATE_ATTR)
    if state is None or not torch.is_grad_enabled():
        return None
    if state.form is None:
        state.plan(output)
    if state.captures_error:
        return _dfa.CaptureError.apply(_dfa.check_logits(output, state.model_type), state.slot)
    return None
