"""Optimizers and learning-rate schedules, built from a :class:`RunConfig`.

Choices (documented in docs/settings-and-records.md):

- Weight decay applies to weights with two or more dimensions (conv kernels, linear weights);
  biases and normalisation parameters are not decayed, as in timm and most CNN recipes.
  Feedback tensors are buffers, never parameters, so no optimizer touches them.
- ``momentum`` and ``nesterov`` apply to SGD only; Adam and AdamW use PyTorch's default betas.
- The schedule is evaluated every optimizer step (so warmup can be a fraction of an epoch);
  ``step`` and ``multistep`` change the rate at epoch boundaries, ``cosine`` decays smoothly
  from the end of warmup to zero at the last step. Warmup ramps linearly from lr/warmup_steps.
- Values a user leaves unset are filled before this module sees the config, by the recipe and
  the per-optimizer defaults of :mod:`fabench.train.recipes`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from fabench.errors import FabenchError
from fabench.train.config import RunConfig

#: Schedule settings and the schedules that use them.
SCHEDULE_SETTINGS = {"gamma": ("step", "multistep"), "step_size": ("step",)}


def _unused_setting(config: RunConfig) -> tuple[str, str] | None:
    """A setting that differs from its default but that the optimizer or schedule ignores, as
    ``(field, what uses it)``: it would change the run id and nothing else."""
    from fabench.train.recipes import resolve

    if config.optimizer != "sgd" and config.momentum is not None:
        unset = resolve(dataclasses.replace(config, momentum=None)).config.momentum
        if config.momentum != unset:
            return "momentum", "--optimizer sgd only"
    for name, schedules in SCHEDULE_SETTINGS.items():
        default = RunConfig.__dataclass_fields__[name].default
        if config.schedule not in schedules and getattr(config, name) != default:
            return name, f"--schedule {' or '.join(schedules)} only"
    return None


def check_optimization(config: RunConfig) -> None:
    """Reject optimizer and schedule settings that cannot mean what the user wants."""
    if config.nesterov and config.optimizer != "sgd":
        raise FabenchError(f"--nesterov applies to --optimizer sgd only, got --optimizer {config.optimizer}", setting="nesterov")
    if config.nesterov and config.momentum <= 0:
        raise FabenchError("--nesterov needs a positive --momentum", setting="nesterov")
    if config.schedule == "multistep" and not config.milestones:
        raise FabenchError("--schedule multistep needs --milestones, e.g. --milestones 30,60", setting="schedule")
    unused = _unused_setting(config)
    if unused:
        name, where = unused
        given = f"--optimizer {config.optimizer}" if name == "momentum" else f"--schedule {config.schedule}"
        raise FabenchError(f"--{name.replace('_', '-')} applies to {where}, got {given}; leave it out", setting=name)
    if config.milestones and config.schedule != "multistep":
        raise FabenchError(f"--milestones applies to --schedule multistep only, got --schedule {config.schedule}", setting="milestones")
    if any(m < 1 for m in config.milestones):
        raise FabenchError(f"--milestones must be positive epoch numbers, got {config.milestones}", setting="milestones")
    if config.schedule == "step" and config.step_size < 1:
        raise FabenchError(f"--step-size must be at least 1, got {config.step_size}", setting="step_size")
    if config.gamma <= 0:
        raise FabenchError(f"--gamma must be positive, got {config.gamma}", setting="gamma")
    if config.warmup_epochs >= config.epochs and config.warmup_epochs > 0:
        raise FabenchError(f"--warmup-epochs ({config.warmup_epochs}) must be less than --epochs ({config.epochs})", setting="warmup_epochs")


def build_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """The run's optimizer over ``model``'s trainable parameters, decaying weights only."""
    config = config.resolved()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


@dataclass
class LrFactor:
    """The multiplier of the base learning rate at a given optimizer step (picklable)."""

    schedule: str
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    gamma: float
    step_size: int
    milestones: tuple[int, ...]

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        epoch = step // self.steps_per_epoch
        if self.schedule == "step":
            return self.gamma ** (epoch // self.step_size)
        if self.schedule == "multistep":
            return self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.schedule == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - self.warmup_steps) / span)))
        return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: RunConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler for ``config.schedule`` with ``config.warmup_epochs`` of warmup."""
    factor = LrFactor(
        schedule=config.schedule,
        steps_per_epoch=steps_per_epoch,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        gamma=config.gamma,
        step_size=config.step_size,
        milestones=tuple(config.milestones),
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
