"""Fixed random matrices defined tile by tile, and the memory policy that decides whether to hold them.

``dfa`` and ``dense-fa`` need one fixed random matrix per layer whose size grows with the
feature maps (RULES.md, "Memory, the paper's warning"): ResNet-18 at 224 px with 1000 classes
needs ≈ 8 GB of DFA matrices, and one dense-fa matrix for a 56×56 conv is ≈ 160 GB. A
:class:`RandomMatrix` is therefore *defined* by its tiles: tile ``t`` holds rows
``[t·R, (t+1)·R)`` (``R = tile_rows``, all columns) and is drawn from its own generator,
seeded from ``(seed, layer name, purpose, t)`` exactly as :func:`fabench.rules._init.layer_generator`
seeds per-layer draws. So

- the *materialised* matrix is the concatenation of its tiles, drawn once and held;
- the *tiled* form redraws one tile at a time inside backward and multiplies it at once, so
  feedback memory is bounded by one tile (:data:`TILE_ELEMENTS` entries) while the matrix
  is bit-for-bit the same at every step;
- both forms hold the same numbers, whatever the order layers or tiles are visited in.

The tile height depends only on the matrix's width (``R = max(1, TILE_ELEMENTS // cols)``),
never on a memory budget, so changing ``feedback_memory`` never changes the matrices.
Draws are made in float32 and then cast, so float64 tests see the same matrices.

Devices: on CPU a tile comes from torch's CPU generator; on an accelerator from a generator of
that device seeded with the same integer (drawing 10⁹ numbers per step on the CPU and copying
them over would dominate the step). The same seed gives the same matrices across processes on
the same kind of device; a CUDA draw differs from the CPU draw of the same seed (another
generator algorithm).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fabench.errors import FabenchError
from fabench.rules._init import layer_generator

#: Entries per tile: 4 Mi floats = 16 MiB in float32. Part of the matrices' definition.
TILE_ELEMENTS = 1 << 22
#: ``feedback_memory="auto"`` materialises the matrices when they total at most this.
AUTO_BUDGET_BYTES = 1 << 30
MEMORY_FORMS = ("auto", "materialised", "tiled")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class RandomMatrix:
    """A fixed ``[rows, cols]`` matrix of i.i.d. N(0, std²) entries, defined by its row tiles."""

    seed: int
    name: str
    purpose: str
    rows: int
    cols: int
    std: float

    @property
    def tile_rows(self) -> int:
        """Rows per tile: as many full rows as fit in :data:`TILE_ELEMENTS` (at least one, at most all)."""
        return min(self.rows, max(1, TILE_ELEMENTS // self.cols))

    @property
    def num_tiles(self) -> int:
        return math.ceil(self.rows / self.tile_rows)

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    def nbytes(self, element_size: int = 4) -> int:
        """Bytes the materialised matrix takes at ``element_size`` bytes per entry."""
        return self.numel * element_size

    def tile_bounds(self, tile: int) -> tuple[int, int]:
        """The row range ``[start, stop)`` that tile ``tile`` covers."""
        start = tile * self.tile_rows
        return start, min(self.rows, start + self.tile_rows)

    def _generator(self, tile: int, device: torch.device) -> torch.Generator:
        """Tile ``tile``'s generator: seeded from (seed, layer, purpose, tile), on ``device``."""
        return layer_generator(self.seed, self.name, f"{self.purpose}/tile{tile}", device)

    def draw_tile_into(self, tile: int, out: torch.Tensor) -> torch.Tensor:
        """Fill float32 ``out`` (shaped like the tile, contiguous) with tile ``tile``; return it."""
        torch.randn(out.shape, generator=self._generator(tile, out.device), out=out)
        return out.mul_(self.std)

    def draw_tile(self, tile: int, *, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Tile ``tile`` as a new ``[rows_in_tile, cols]`` tensor."""
        start, stop = self.tile_bounds(tile)
        out = torch.empty((stop - start, self.cols), device=device, dtype=torch.float32)
        return self.draw_tile_into(tile, out).to(dtype)

    def materialise(self, *, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole matrix: every tile drawn into its rows of one tensor."""
        matrix = torch.empty((self.rows, self.cols), device=device, dtype=torch.float32)
        for tile in range(self.num_tiles):
            start, stop = self.tile_bounds(tile)
            self.draw_tile_into(tile, matrix[start:stop])
        return matrix.to(dtype)

    def tiles(self, *, device, dtype: torch.dtype) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(start, stop, tile)`` for every tile, drawn one at a time into one reused buffer."""
        buffer = torch.empty((self.tile_rows, self.cols), device=device, dtype=torch.float32)
        for tile in range(self.num_tiles):
            start, stop = self.tile_bounds(tile)
            drawn = self.draw_tile_into(tile, buffer[: stop - start])
            yield start, stop, drawn if dtype == torch.float32 else drawn.to(dtype)

    def times_transposed(self, v: torch.Tensor, held: torch.Tensor | None) -> torch.Tensor:
        """``v @ Mᵀ`` for ``v`` of shape ``[n, cols]``: from ``held`` if given, else tile by tile."""
        if held is not None:
            return v.matmul(held.t())
        out = v.new_empty((v.shape[0], self.rows))
        for start, stop, tile in self.tiles(device=v.device, dtype=v.dtype):
            out[:, start:stop] = v.matmul(tile.t())
        return out

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
