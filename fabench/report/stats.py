"""How sure a number is: 95 % confidence intervals over seeds (Student's t) and paired differences.

A table cell of n runs shows ``mean ± h (n)`` where h is the half-width of the 95 % interval of
the mean, t(0.975, n − 1) · s / √n. Two cells are *separated* when their intervals do not
overlap (a conservative test); a paired difference over matched seeds is separated from zero
when its own interval excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: t(0.975, df) for df = 1..30 (standard tables, e.g. NIST/SEMATECH e-Handbook, table 1.4.2.3.2).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
_Z975 = 1.959964


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError("a t quantile needs at least one degree of freedom")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975  # Cornish-Fisher expansion, within 1e-3 of the exact value beyond df = 30
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def interval(values: Sequence[float]) -> tuple[float, float, int]:
    """``(mean, half-width, n)`` of the 95 % interval of the mean; half-width nan for n < 2."""
    values = [float(v) for v in values if v == v]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan"), n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t975(n - 1) * std / math.sqrt(n), n


def separated(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool:
    """True when two cells' intervals (``interval`` results) do not overlap; False when either has
    no interval (fewer than two runs): one run cannot separate anything."""
    (mean_a, half_a, _), (mean_b, half_b, _) = a, b
    if half_a != half_a or half_b != half_b:
        return False
    return abs(mean_a - mean_b) > half_a + half_b


def paired(values: dict, reference: dict) -> tuple[float, float, int]:
    """The interval of ``values[seed] − reference[seed]`` over the seeds both have."""
    seeds = sorted(set(values) & set(reference))
    return interval([values[s] - reference[s] for s in seeds])
