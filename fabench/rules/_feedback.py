"""The feedback formulas: how each rule turns the forward weight into B when backward runs.

B is computed inside backward, from the forward weight and the layer's fixed buffers, and
freed straight after use: a rule allocates nothing per step beyond B itself (the sign and
scale of W), and nothing is held between forward and backward that backprop would not hold.

Kinds (see :mod:`fabench.rules._spec` for which rule uses which):

- ``fixed``: B = B0, a buffer drawn once.
- ``kp``, ``wm``: B, a buffer that starts as ``fixed``'s draw and is learned between steps
  (:mod:`fabench.rules._learned`).
- ``usf``: B = s · sign(W), ``s`` a scalar buffer.
- ``magnitude``: B = |M| ⊙ sign(W), ``|M|`` a buffer drawn once.
- ``sn``: B = sign(W) · ‖W‖_F / ‖sign(W)‖_F.
- ``sn-spectral``: B = sign(W) · σ(W) / σ(sign(W)), σ the largest singular value of the
  weight viewed as a matrix ``[C_out, rest]``: the literal reading of "spectral norm".
- ``brsf``: B = |M_t| ⊙ sign(W), M_t ~ N(0, s²) drawn from torch's global generator at every
  backward (so resuming from a checkpoint that saved RNG states redraws the same M_t).

``sign`` is ``sign(W_t)``, or a fixed sign buffer when the ``+ei`` modifier fixes the signs.
"""

from __future__ import annotations

import torch

FEEDBACK_KINDS = ("fixed", "usf", "magnitude", "sn", "sn-spectral", "brsf", "kp", "wm")
#: Kinds whose B is a buffer used as it is (fixed, or learned by kp / wm outside backward).
HELD_KINDS = ("fixed", "kp", "wm")


def draw_magnitudes(weight: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """|M_t| for ``fa-brsf``: fresh half-normal magnitudes with scale ``std``."""
    return torch.randn_like(weight).abs_().mul_(std)


def _spectral_norm(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(matrix.reshape(matrix.shape[0], -1).float(), ord=2).to(matrix.dtype)


def _signs(weight: torch.Tensor, fixed_sign: torch.Tensor | None) -> torch.Tensor:
    """A fresh tensor of the feedback's signs, which the caller may scale in place."""
    return torch.sign(weight) if fixed_sign is None else fixed_sign.clone()


def feedback_tensor(
    kind: str, weight: torch.Tensor, buffer: torch.Tensor | None, fixed_sign: torch.Tensor | None
) -> torch.Tensor:
    """B for one layer, given its kind, its current forward weight and its buffers.

    Each formula allocates one weight-sized tensor (two for ``brsf``: its fresh magnitudes
    and their signs), scaled in place, so the transient cost of a rule is one copy of W.
    """
    if kind in HELD_KINDS:
        return buffer
    if kind == "brsf":
        return draw_magnitudes(weight, buffer).mul_(torch.sign(weight) if fixed_sign is None else fixed_sign)
    sign = _signs(weight, fixed_sign)
    if kind == "usf":
        return sign.mul_(buffer)
    if kind == "magnitude":
        return sign.mul_(buffer)
    if kind == "sn":
        return sign.mul_(torch.linalg.vector_norm(weight) / torch.linalg.vector_norm(sign).clamp_min(1e-12))
    if kind == "sn-spectral":
        return sign.mul_(_spectral_norm(weight) / _spectral_norm(sign).clamp_min(1e-12))
    raise ValueError(f"unknown feedback kind '{kind}'")
