"""Pure tensor measures used by the probe: angles, norms, sign agreement.

Angles are computed from float64 sums as ``atan2(sqrt(|a|²|b|² - (a·b)²), a·b)``, which is
exactly 0 for bitwise-equal tensors and well conditioned near 0° and 90° alike (``acos`` of a
rounded cosine is not: a cosine of 1 - 1e-7 already reads as 0.03°).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class DotSums:
    """Running ``a·b``, ``|a|²`` and ``|b|²`` over pieces of two flattened tensors."""

    ab: float = 0.0
    aa: float = 0.0
    bb: float = 0.0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add one matching pair of pieces (any shapes with equal element counts)."""
        a64, b64 = a.detach().reshape(-1).double(), b.detach().reshape(-1).double()
        self.ab += float(torch.dot(a64, b64))
        self.aa += float(torch.dot(a64, a64))
        self.bb += float(torch.dot(b64, b64))

    def angle_deg(self) -> float:
        """The angle between the two tensors in degrees (NaN if either is all zeros)."""
        if self.aa == 0.0 or self.bb == 0.0:
            return math.nan
        cross = math.sqrt(max(self.aa * self.bb - self.ab * self.ab, 0.0))
        return math.degrees(math.atan2(cross, self.ab))


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle between two tensors, flattened, in degrees."""
    sums = DotSums()
    sums.add(a, b)
    return sums.angle_deg()


def norm(tensor: torch.Tensor) -> float:
    """The Frobenius (flattened L2) norm, accumulated in float64."""
    return float(torch.linalg.vector_norm(tensor.detach().double()))


def norm_ratio(feedback: torch.Tensor, weight: torch.Tensor) -> float:
    """``‖B‖ / ‖W‖`` (NaN for an all-zero W)."""
    denominator = norm(weight)
    return norm(feedback) / denominator if denominator > 0 else math.nan


def sign_concordance(feedback: torch.Tensor, weight: torch.Tensor) -> float:
    """The fraction of entries where ``sign(B) == sign(W)`` (zeros agree only with zeros)."""
    return float((torch.sign(feedback) == torch.sign(weight)).double().mean())
