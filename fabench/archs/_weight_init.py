"""Forward-weight initialisation as a run option, applied to the layers a rule covers.

Every architecture initialises itself (fabench's own nets with Kaiming-normal fan-in, ReLU
gain; timm and torchvision with their own schemes). A run may replace that, because how a
feedback rule behaves depends on where the forward weights start: plain feedback alignment
grows the forward weights while they align with B, and from large (Kaiming) weights that
growth blows the logits up, while from Xavier or smaller weights it does not (docs/reproductions.md, "What
makes plain FA learn").

Schemes (``weight_init``):

- ``default``: the architecture's own initialisation, untouched;
- ``xavier-uniform`` / ``xavier-normal``: Glorot & Bengio 2010, gain 1
  (``torch.nn.init.xavier_*_``), what BioTorch's ``init: xavier`` gives forward weights;
- ``kaiming-normal`` / ``kaiming-uniform``: He et al. 2015, fan-in, ReLU gain
  (``torch.nn.init.kaiming_*_(mode="fan_in", nonlinearity="relu")``).

A re-initialised layer's bias starts at zero (as BioTorch's and fabench's own inits do).
``weight_init_scale`` then multiplies every covered weight, for small-init studies in the manner
of Lillicrap et al. 2016, who start FA networks from small weights; with ``default`` it scales
the architecture's own init. Draws come from torch's global generator, which the run seeds
with its seed just before building the model, so the weights are deterministic per seed.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from fabench.errors import FabenchError
from fabench.setting_values import WEIGHT_INITS

_DRAWS = {
    "xavier-uniform": lambda w: nn.init.xavier_uniform_(w),
    "xavier-normal": lambda w: nn.init.xavier_normal_(w),
    "kaiming-normal": lambda w: nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu"),
    "kaiming-uniform": lambda w: nn.init.kaiming_uniform_(w, mode="fan_in", nonlinearity="relu"),
}


def check_weight_init(scheme: str, scale: float) -> None:
    """Refuse an unknown scheme or a non-positive scale with one line naming what is valid."""
    if scheme not in WEIGHT_INITS:
        raise FabenchError(f"--weight-init must be one of {', '.join(WEIGHT_INITS)}, got '{scheme}'", setting="weight_init")
    if not scale > 0:
        raise FabenchError(f"--weight-init-scale must be positive, got {scale}", setting="weight_init_scale")


@torch.no_grad()
def reinitialise(layers: Iterable[nn.Module], scheme: str, scale: float = 1.0) -> int:
    """Re-draw (unless ``default``) and scale the weights of ``layers``; return how many changed."""
    check_weight_init(scheme, scale)
    changed = 0
    for module in layers:
        if scheme != "default":
            _DRAWS[scheme](module.weight)
            if module.bias is not None:
                module.bias.zero_()
        if scale != 1.0:
            module.weight.mul_(scale)
        changed += scheme != "default" or scale != 1.0
    return changed
