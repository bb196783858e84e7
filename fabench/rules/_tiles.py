"""Fixed random matrices drawn tile by tile, and the memory policy that decides whether to hold them.

``dfa`` and ``dense-fa`` need one fixed random matrix per layer whose size grows with the
feature maps (docs/rules.md, "Memory: the paper's warning"): ResNet-18 at 224 px with 1000 classes
needs ≈ 8 GB of DFA matrices, and one dense-fa matrix for a 56×56 conv is ≈ 160 GB. A
:class:`RandomMatrix`'s entry ``(r, c)`` is entry ``r·cols + c`` of its own counter-based
stream (:mod:`._counter_rng`), keyed by ``(seed, layer name, purpose)``. Any block of rows can
therefore be drawn alone, and

- the *materialised* matrix is drawn once and held;
- the *tiled* form draws one block of rows (a tile) at a time inside backward and multiplies
  it at once, so feedback memory is bounded by one tile while the matrix is bit-for-bit the
  same at every step;
- both forms hold the same numbers, whatever the device, the tile size or the order
  layers and tiles are visited in.

The tile size is a per-device choice (:func:`tile_elements`): on a CPU a tile of
:data:`TILE_ELEMENTS` entries (1 MiB of float32) stays in cache between its drawing and its
product; an accelerator takes :data:`ACCELERATOR_TILE_ELEMENTS` to amortise kernel launches.
Changing it, or ``feedback_memory``, never changes the matrices. Entries are drawn in float32
and then cast, so float64 tests see the same matrices.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fabench.errors import FabenchError
from fabench.rules import _counter_rng

#: Entries per tile on a CPU: 256 Ki floats = 1 MiB in float32 (drawn and multiplied in cache).
TILE_ELEMENTS = 1 << 18
#: Entries per tile on an accelerator: 16 Mi floats = 64 MiB in float32.
ACCELERATOR_TILE_ELEMENTS = 1 << 24
#: ``feedback_memory="auto"`` materialises the matrices when they total at most this.
AUTO_BUDGET_BYTES = 1 << 30
MEMORY_FORMS = ("auto", "materialised", "tiled")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def tile_elements(device: torch.device | str) -> int:
    """Entries per tile on ``device``: :data:`TILE_ELEMENTS` on a CPU, else :data:`ACCELERATOR_TILE_ELEMENTS`."""
    return TILE_ELEMENTS if torch.device(device).type == "cpu" else ACCELERATOR_TILE_ELEMENTS


@dataclass(frozen=True)
class RandomMatrix:
    """A fixed ``[rows, cols]`` matrix of i.i.d. zero-mean entries of std ``std``, from its counter stream."""

    seed: int
    name: str
    purpose: str
    rows: int
    cols: int
    std: float

    @functools.cached_property
    def key(self) -> int:
        """The 64-bit key of this matrix's stream (:func:`._counter_rng.stream_key`)."""
        return _counter_rng.stream_key(self.seed, self.name, self.purpose)

    def tile_rows(self, device: torch.device | str) -> int:
        """Rows per tile on ``device``: as many full rows as fit in its tile (at least one, at most all)."""
        return min(self.rows, max(1, tile_elements(device) // self.cols))

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    def nbytes(self, element_size: int = 4) -> int:
        """Bytes the materialised matrix takes at ``element_size`` bytes per entry."""
        return self.numel * element_size

    def draw_rows_into(self, start: int, out: torch.Tensor, workspace=None) -> torch.Tensor:
        """Fill float32 ``out`` (``[k, cols]``, contiguous) with rows ``start .. start + k - 1``; return it."""
        return _counter_rng.fill(out, self.key, start * self.cols, self.std, workspace)

    def _row_blocks(self, device) -> Iterator[tuple[int, int]]:
        step = self.tile_rows(device)
        for start in range(0, self.rows, step):
            yield start, min(self.rows, start + step)

    def materialise(self, *, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole matrix, drawn a tile at a time into one tensor (so temporaries stay tile-sized)."""
        matrix = torch.empty((self.rows, self.cols), device=device, dtype=torch.float32)
        workspace = _counter_rng.Workspace(self.tile_rows(device) * self.cols, device)
        for start, stop in self._row_blocks(device):
            self.draw_rows_into(start, matrix[start:stop], workspace)
        return matrix.to(dtype)

    def tiles(self, *, device, dtype: torch.dtype) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(start, stop, tile)`` for every tile of rows, drawn one at a time into buffers reused throughout."""
        buffer = torch.empty((self.tile_rows(device), self.cols), device=device, dtype=torch.float32)
        workspace = _counter_rng.Workspace(buffer.numel(), device)
        cast = None if dtype == torch.float32 else torch.empty(buffer.shape, device=device, dtype=dtype)
        for start, stop in self._row_blocks(device):
            drawn = self.draw_rows_into(start, buffer[: stop - start], workspace)
            yield start, stop, drawn if cast is None else cast[: stop - start].copy_(drawn)

    def times_transposed(self, v: torch.Tensor, held: torch.Tensor | None) -> torch.Tensor:
        """``v @ Mᵀ`` for ``v`` of shape ``[n, cols]``: from ``held`` if given, else tile by tile.

        Computed as ``(M vᵀ)ᵀ`` in both forms: with the large matrix as the product's first
        operand a small ``n`` streams it once at the memory's read rate, where ``v Mᵀ`` runs at
        about half of it (docs/dfa.md). Tiled, each tile's ``M_tile · vᵀ`` goes straight
        into its contiguous rows of ``(v Mᵀ)ᵀ``, so the loop allocates nothing per tile.
        """
        if held is not None:
            return torch.mm(held, v.t().contiguous()).t().contiguous()
        transposed, columns = v.new_empty((self.rows, v.shape[0])), v.t().contiguous()
        for start, stop, tile in self.tiles(device=v.device, dtype=v.dtype):
            torch.mm(tile, columns, out=transposed[start:stop])
        return transposed.t().contiguous()

    def times(self, v: torch.Tensor, held: torch.Tensor | None) -> torch.Tensor:
        """``v @ M`` for ``v`` of shape ``[n, rows]``: from ``held`` if given, else tile by tile."""
        if held is not None:
            return v.matmul(held)
        out = v.new_zeros((v.shape[0], self.cols))
        for start, stop, tile in self.tiles(device=v.device, dtype=v.dtype):
            out.addmm_(v[:, start:stop], tile)
        return out


@dataclass(frozen=True)
class MemoryPolicy:
    """How much fixed feedback a rule may hold: ``feedback_memory`` parsed.

    ``auto`` materialises when the matrices total at most :data:`AUTO_BUDGET_BYTES` (1 GiB),
    else tiles; ``materialised``/``tiled`` force a form; a size (``512MB``, ``2GiB``,
    a byte count) materialises when the total fits in it, else tiles.
    """

    text: str
    budget_bytes: int | None

    def form_for(self, total_bytes: int) -> str:
        """``"materialised"`` or ``"tiled"`` for matrices totalling ``total_bytes``."""
        if self.text in ("materialised", "tiled"):
            return self.text
        return "materialised" if total_bytes <= self.budget_bytes else "tiled"


def parse_size(text: str | int) -> int | None:
    """Bytes in a size such as ``512MB``, ``2GiB`` or a plain count like ``4096``; None if not a size.

    Decimal units (kB, MB, GB, TB) are powers of 1000, binary ones (KiB, MiB, GiB, TiB) of 1024.
    """
    match = _SIZE.match(str(text).strip().lower())
    if match and match.group(2) in _SIZE_UNITS:
        return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    return None


def parse_feedback_memory(value: str | int) -> MemoryPolicy:
    """Parse ``auto`` | ``materialised`` | ``tiled`` | a size such as ``512MB``; else FabenchError."""
    text = str(value).strip().lower().replace("materialized", "materialised")
    if text in MEMORY_FORMS:
        return MemoryPolicy(text, AUTO_BUDGET_BYTES if text == "auto" else None)
    size = parse_size(text)
    if size is not None:
        return MemoryPolicy(text, size)
    raise FabenchError(f"feedback memory must be auto, materialised, tiled or a size such as 512MB or 2GiB, "
                       f"got '{value}'", setting="feedback_memory")
