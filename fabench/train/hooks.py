"""The hook point for per-epoch extras such as per-layer diagnostics.

An epoch hook is a callable taking an :class:`EpochContext`. The run calls every hook once
before training starts (``ctx.epoch == 0``, fresh runs only) and after each epoch's test
evaluation, before that epoch's checkpoint is written, so whatever a hook logs to
``ctx.curves`` is on disk with the checkpoint. A hook must not change the model's weights.
If it draws random numbers it should use its own ``torch.Generator``, so that training's
random streams (and hence resumption) are unaffected.

Hooks are given to :func:`fabench.train.run` (``hooks=``) by whoever composes the run: the CLI
and the grid pass :func:`fabench.diagnostics.run_hooks`, the probe of ``--diagnostics``. A hook
with an integer attribute ``every_steps`` is also called after every that-many optimizer
steps (:func:`fabench.train.epochs.call_step_hooks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fabench.train.config import RunConfig
from fabench.train.curves import CurveWriter


@dataclass
class EpochContext:
    """What a hook may look at: the model and its rule handle, the data, and where to log."""

    config: RunConfig
    model: torch.nn.Module
    handle: Any
    data: Any
    device: torch.device
    curves: CurveWriter
    epoch: int
    step: int


EpochHook = Callable[[EpochContext], None]
