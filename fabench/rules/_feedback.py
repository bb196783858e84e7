"""Random draws shared by feedback formulas.

Each rule's formula for B lives in its class (:mod:`fabench.rules.library`); B is computed
inside backward from the forward weight and the layer's buffers and freed straight after use, so
a rule allocates nothing per step beyond B itself.
"""

from __future__ import annotations

import torch


def draw_magnitudes(weight: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """|M_t| for ``fa-brsf``: fresh half-normal magnitudes with scale ``std`` (torch's global generator)."""
    return torch.randn_like(weight).abs_().mul_(std)
