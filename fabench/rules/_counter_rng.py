"""Counter-based random numbers: the entries of the fixed direct-feedback matrices.

A *stream* is an endless sequence of numbers fixed by one 64-bit key; entry ``i`` is a pure
function of ``(key, i)``, computed without touching entries ``0 .. i-1``. Definition:

- word ``w`` of the stream is SplitMix64's output function (Steele, Lea & Flood 2014,
  "Fast splittable pseudorandom number generators") applied to its ``(w+1)``-th state
  ``key + (w+1)·γ mod 2⁶⁴``, ``γ = 0x9E3779B97F4A7C15``;
- entry ``i`` is byte ``i mod 8`` (little-endian) of word ``i // 8``, read as a signed byte
  ``b ∈ [−128, 127]``, and its value is ``(2b + 1) / σ`` with ``σ = sqrt((256² − 1) / 3)``:
  256 equally spaced levels, symmetric about zero, mean 0 and variance exactly 1.

Why not torch's generators, which ``fa``'s per-layer draws use: ``dfa``'s tiled form draws its
whole matrix again at every step (2·10⁹ entries for ResNet-18 at 224 px, 1000 classes), and

- *speed*: drawn by tiles, a stream entry took 2.2 ns on this machine against 8.7 ns for torch's
  CPU normal draw (`fabench bench feedback-memory` prints both rates from the same run): a dozen
  integer operations per 8 entries, one conversion, one affine map;
- *any range alone*: a tile is drawn without its predecessors, so the tile size is a choice
  per device (cache-sized on a CPU, large on a GPU) that never changes the matrix;
- *every device*: the same integer operations are meant to give the same numbers on CPU and
  CUDA (``tools/gpu_check_dfa.sh`` checks it), where torch's CPU and CUDA generators give
  different draws from the same seed.

The price is the distribution: 256 uniform levels instead of a Gaussian. DFA needs a fixed
random matrix of i.i.d. zero-mean entries with the chosen std (the rule definitions, docs/rules.md, name no distribution);
the levels give exactly that std, and ``tests/test_counter_rng.py`` checks the words against a
plain Python SplitMix64 and the levels' moments.

torch has no unsigned 64-bit shifts, so words are int64 with two's-complement wrap-around, and
the logical shift ``x >>> k`` is ``(x >> k) & (2^(64-k) - 1)``.
"""

from __future__ import annotations

import math

import torch

from fabench.rules._init import layer_key

_MASK64 = (1 << 64) - 1
#: SplitMix64's increment (the golden ratio's fraction in 64 bits) and its two multipliers.
GAMMA = 0x9E3779B97F4A7C15
_MIX = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB))
_FINAL_SHIFT = 31
BYTES_PER_WORD = 8
#: σ: the standard deviation of ``2b + 1`` over the 256 signed bytes b.
LEVEL_STD = math.sqrt((256**2 - 1) / 3)

_weyl_cache: dict[str, torch.Tensor] = {}


def as_int64(value: int) -> int:
    """``value mod 2⁶⁴`` as the signed 64-bit integer with the same bits (what an int64 tensor holds)."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def stream_key(seed: int, name: str, purpose: str) -> int:
    """The 64-bit key of one matrix's stream: :func:`._init.layer_key` of the purpose marked ``counter``."""
    return layer_key(seed, name, f"{purpose}\x00counter")


def _weyl_steps(count: int, device: torch.device) -> torch.Tensor:
    """``[i·γ mod 2⁶⁴ for i < count]`` as int64 on ``device``, kept and grown per device (a tile's words reuse it)."""
    held = _weyl_cache.get(str(device))
    if held is None or held.numel() < count:
        held = torch.arange(count, dtype=torch.int64, device=device).mul_(as_int64(GAMMA))
        _weyl_cache[str(device)] = held
    return held[:count]


def _xor_shift_right(x: torch.Tensor, shift: int, scratch: torch.Tensor) -> None:
    """``x ^= x >>> shift`` in place (logical shift, by masking the arithmetic one)."""
    torch.bitwise_right_shift(x, shift, out=scratch)
    scratch.bitwise_and_((1 << (64 - shift)) - 1)
    x.bitwise_xor_(scratch)


class Workspace:
    """Two int64 buffers for drawing up to ``max_entries`` entries at a time, reused from tile to tile.

    The tiled backward draws thousands of tiles per step; with its buffers allocated once, a
    tile costs no allocation (on a CPU whose allocator maps large blocks afresh, each one would
    cost page faults).
    """

    def __init__(self, max_entries: int, device: torch.device | str) -> None:
        size = -(-max_entries // BYTES_PER_WORD) + 1  # a range may straddle one extra word
        self.words = torch.empty(size, dtype=torch.int64, device=device)
        self.scratch = torch.empty_like(self.words)


def words(key: int, first: int, count: int, workspace: Workspace) -> torch.Tensor:
    """Words ``first .. first + count - 1`` of stream ``key``, int64, in ``workspace``'s buffer."""
    x, scratch = workspace.words[:count], workspace.scratch[:count]
    torch.add(_weyl_steps(count, x.device), as_int64(key + (first + 1) * GAMMA), out=x)
    for shift, multiplier in _MIX:
        _xor_shift_right(x, shift, scratch)
        x.mul_(as_int64(multiplier))
    _xor_shift_right(x, _FINAL_SHIFT, scratch)
    return x


def signed_bytes(key: int, start: int, count: int, workspace: Workspace) -> torch.Tensor:
    """Entries ``start .. start + count - 1`` of stream ``key`` as their signed bytes b (int8)."""
    first, skip = divmod(start, BYTES_PER_WORD)
    needed = -(-(skip + count) // BYTES_PER_WORD)
    return words(key, first, needed, workspace).view(torch.int8)[skip: skip + count]


def fill(out: torch.Tensor, key: int, start: int, std: float, workspace: Workspace | None = None) -> torch.Tensor:
    """Fill contiguous float32 ``out`` with entries ``start ..`` of stream ``key`` times ``std``; return it.

    Two passes over ``out`` after the words: the byte-to-float conversion, and
    ``b·(2·std/σ) + std/σ`` as a multiply then an add (each rounded, the same on every device).
    """
    flat = out.view(-1)
    workspace = workspace or Workspace(flat.numel(), out.device)
    flat.copy_(signed_bytes(key, start, flat.numel(), workspace))
    return out.mul_(2.0 * std / LEVEL_STD).add_(std / LEVEL_STD)
