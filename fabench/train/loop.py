"""The inner loops: one training epoch and one evaluation pass.

Both keep their running sums on the device and read them back only at the end (and, for
training, every :data:`FINITE_CHECK_EVERY` steps to catch a diverged loss early), so that
the GPU is never made to wait for the Python side inside an epoch. Progress reports read the
loss at most a few times a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fabench.train.device import autocast

#: Steps between checks that the running loss is finite (one device sync each).
FINITE_CHECK_EVERY = 16
#: Seconds between "step" progress events.
STEP_EVENT_INTERVAL_S = 0.25


@dataclass
class Trainer:
    """What one optimisation step needs."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: str = "off"
    label_smoothing: float = 0.0
    #: max global L2 norm of the gradients (None: no clipping), applied after unscaling
    grad_clip: float | None = None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch; returns the (detached) loss and logits."""
        with autocast(self.amp, self.device):
            logits = self.model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            # the model's own gradients (kp's B, in the optimizer too, shares W's gradient)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach(), logits.detach()


@dataclass
class EpochOutcome:
    """How an epoch (or the part of it run now) ended, with sums to merge into Progress."""

    steps: int
    loss_sum: float
    correct: float
    seen: int
    diverged: bool = False
    interrupted: bool = False


def train_epoch(
    trainer: Trainer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    should_stop: Callable[[], bool],
    after_step: Callable[[int], None] = lambda step: None,
    on_progress: Callable[[int, float, int], None] | None = None,
) -> EpochOutcome:
    """Run ``batches`` through ``trainer``; stop early on a non-finite loss or a stop request.

    ``after_step(i)`` is called after the i-th step of this call (1-based);
    ``on_progress(steps, loss, images)`` at most every :data:`STEP_EVENT_INTERVAL_S` seconds.
    """
    trainer.model.train()
    loss_sum = torch.zeros((), device=trainer.device, dtype=torch.float64)
    correct = torch.zeros((), device=trainer.device, dtype=torch.int64)
    seen = steps = 0
    last_report = time.perf_counter()
    for x, y in batches:
        loss, logits = trainer.step(x, y)
        steps += 1
        seen += y.shape[0]
        loss_sum += loss * y.shape[0]
        correct += (logits.argmax(dim=1) == y).sum()
        after_step(steps)
        if steps % FINITE_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
            return EpochOutcome(steps, float(loss_sum), float(correct), seen, diverged=True)
        if on_progress is not None and time.perf_counter() - last_report > STEP_EVENT_INTERVAL_S:
            last_report = time.perf_counter()
            on_progress(steps, float(loss), seen)
        if should_stop():
            return EpochOutcome(steps, float(loss_sum), float(correct), seen, interrupted=True)
    outcome = EpochOutcome(steps, float(loss_sum), float(correct), seen)
    outcome.diverged = not torch.isfinite(torch.tensor(outcome.loss_sum))
    return outcome


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    amp: str = "off",
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) and mean cross-entropy over ``batches``."""
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    hits = torch.zeros(2, device=device, dtype=torch.int64)
    seen = 0
    for x, y in batches:
        with autocast(amp, device):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        match = top == y[:, None]
        hits[0] += match[:, 0].sum()
        hits[1] += match.any(dim=1).sum()
        seen += y.shape[0]
    if seen == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "n": 0}
    top1, top5 = (100.0 * hits.double() / seen).tolist()
    return {"top1": top1, "top5": top5, "loss": float(loss_sum) / seen, "n": seen}
