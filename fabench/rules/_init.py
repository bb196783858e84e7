"""Deterministic, order-independent random draws for feedback tensors, and init scales.

Every random tensor a rule needs is drawn from a generator seeded by ``(seed, layer name,
purpose)`` through a cryptographic hash, on the CPU, then moved to the layer's device. So the
same seed gives the same feedback in every process, on every device, whatever order the
modules are visited in, and adding or removing one layer leaves every other layer's draw as it
was.
"""

from __future__ import annotations

import hashlib
import math

import torch

from fabench.setting_values import FEEDBACK_INITS

#: Names accepted for the ``init`` option, each a way to pick a per-layer standard deviation.
INIT_CHOICES = FEEDBACK_INITS


def layer_key(seed: int, name: str, purpose: str) -> int:
    """A 64-bit integer fixed by ``seed``, the module's name and what the draw is for (a blake2b hash)."""
    digest = hashlib.blake2b(f"{seed}\x00{name}\x00{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def layer_generator(seed: int, name: str, purpose: str, device: torch.device | None = None) -> torch.Generator:
    """A generator seeded from ``seed``, the module's name and what the draw is for.

    On the CPU unless ``device`` names another device, whose own generator gets the same seed
    (drawing there avoids copying large draws over; its numbers differ from the CPU's).
    """
    seed_value = layer_key(seed, name, purpose) & (2**63 - 1)
    on_cpu = device is None or torch.device(device).type == "cpu"
    return torch.Generator().manual_seed(seed_value) if on_cpu else torch.Generator(device=device).manual_seed(seed_value)


def draw_normal(weight: torch.Tensor, std: float, seed: int, name: str, purpose: str) -> torch.Tensor:
    """A tensor shaped like ``weight`` with i.i.d. N(0, std²) entries, identical across processes."""
    sample = torch.randn(weight.shape, generator=layer_generator(seed, name, purpose), dtype=torch.float32)
    return (sample * std).to(device=weight.device, dtype=weight.dtype)


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear or Conv weight, counting the kernel's receptive field."""
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def init_std(weight: torch.Tensor, init: str) -> float:
    """Standard deviation of a layer's feedback under the named ``init`` scheme.

    ``kaiming``: sqrt(2/fan_in), He et al.'s ReLU init, the scale docs/rules.md gives for ``fa``.
    ``xiao``: sqrt(2/(k_h·k_w·C_out)) = sqrt(2/fan_out), the scale Xiao et al. 2018 give uSF.
    ``xavier``: sqrt(2/(fan_in+fan_out)), Glorot's init, the scale BioTorch uses.
    ``weight``: the empirical std of the forward weight when the rule is attached.
    """
    fan_in, fan_out = fans(weight)
    if init == "kaiming":
        return math.sqrt(2.0 / fan_in)
    if init == "xiao":
        return math.sqrt(2.0 / fan_out)
    if init == "xavier":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if init == "weight":
        return float(weight.detach().float().std()) if weight.numel() > 1 else 1.0
    raise ValueError(f"unknown init '{init}'")
