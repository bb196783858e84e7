"""The outer loop of a run: epochs of training, a test evaluation after each, checkpoints.

Order at the end of an epoch: evaluate on the test split, log the epoch's curves, call the
epoch hooks, save the checkpoint, report the epoch. A stop request (Ctrl-C, SIGTERM) ends the
run after the current step with a mid-epoch checkpoint; one that arrives during evaluation
takes effect once that epoch's checkpoint is written.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable

from fabench.train.checkpoint import Progress
from fabench.train.device import synchronize
from fabench.train.hooks import EpochContext, EpochHook
from fabench.train.interrupt import StopFlag, inject_after_checkpoint, inject_after_step
from fabench.train.loop import EpochOutcome, evaluate, train_epoch
from fabench.train.run_record import RunRecords
from fabench.train.schema import (
    NO_LEARNING_ACCURACY_FACTOR,
    NO_LEARNING_LOSS_FRACTION,
    UNSTABLE_LOSS_FACTOR,
    UNSTABLE_PEAK_FACTOR,
    UNSTABLE_RISE_FACTOR,
)
from fabench.train.session import Session

Emit = Callable[[dict], None]


def call_hooks(hooks: list[EpochHook], session: Session, records: RunRecords, progress: Progress) -> None:
    if not hooks:
        return
    ctx = EpochContext(session.config, session.model, session.handle, session.data, session.device,
                       records.curves, progress.epoch, progress.global_step)
    for hook in hooks:
        hook(ctx)


def call_step_hooks(hooks: list[EpochHook], session: Session, records: RunRecords, progress: Progress,
                    steps_done: int) -> None:
    """Call hooks that have ``every_steps`` after each such step (integration: fabench/diagnostics).

    ``steps_done`` counts this call's steps of the epoch; ``ctx.epoch`` is the number of epochs
    completed. An epoch's last step is left to the epoch-end call, which sees the same weights.
    """
    step = progress.global_step + steps_done
    if progress.step_in_epoch + steps_done >= session.data.steps_per_epoch:
        return
    due = [h for h in hooks if getattr(h, "every_steps", None) and step % h.every_steps == 0]
    if due:
        ctx = EpochContext(session.config, session.model, session.handle, session.data, session.device,
                           records.curves, progress.epoch, step)
        for hook in due:
            hook(ctx)


def _after_step(hooks: list[EpochHook], session: Session, records: RunRecords, progress: Progress, steps_now,
                stop: StopFlag):
    def after_step(steps_done: int) -> None:
        inject_after_step(next(steps_now), stop)
        call_step_hooks(hooks, session, records, progress, steps_done)
    return after_step


def _start_epoch(session: Session, progress: Progress) -> None:
    """Remember (fresh epoch) or restore (resumed mid-epoch) the data generator's epoch state."""
    if progress.step_in_epoch == 0:
        progress.epoch_data_state = session.generator.get_state()
        progress.partial = {"loss_sum": 0.0, "correct": 0.0, "seen": 0, "time_s": 0.0,
                            "lr": session.trainer.optimizer.param_groups[0]["lr"]}
    else:
        session.generator.set_state(progress.epoch_data_state)


def _merge(progress: Progress, outcome: EpochOutcome, seconds: float) -> None:
    part = progress.partial
    part["loss_sum"] += outcome.loss_sum
    part["correct"] += outcome.correct
    part["seen"] += outcome.seen
    part["time_s"] += seconds
    progress.step_in_epoch += outcome.steps
    progress.global_step += outcome.steps
    progress.train_time_s += seconds
    progress.train_images += outcome.seen


def _finish_epoch(session: Session, progress: Progress, epoch: int) -> dict:
    """Evaluate, and turn the epoch's sums into its history entry."""
    part = progress.partial
    test = evaluate(session.trainer.model, session.data.test(), device=session.device, amp=session.config.amp)
    test = session.strategy.combine_eval(test, session.device)  # DDP: each rank saw its share
    val = {}
    if session.data.n_val:
        val = evaluate(session.trainer.model, session.data.val(), device=session.device, amp=session.config.amp)
        val = session.strategy.combine_eval(val, session.device)
    entry = {
        "epoch": epoch, "step": progress.global_step,
        "train_loss": part["loss_sum"] / part["seen"], "train_top1": 100.0 * part["correct"] / part["seen"],
        "test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"], "lr": part["lr"],
        "epoch_time_s": part["time_s"], "images_per_s": part["seen"] / max(part["time_s"], 1e-9),
    }
    if val:
        entry.update(val_top1=val["top1"], val_loss=val["loss"])
    progress.history.append(entry)
    progress.epoch, progress.step_in_epoch, progress.partial = epoch, 0, {}
    return entry


def _step_reporter(session: Session, progress: Progress, epoch: int, started: float, emit: Emit):
    def report(steps: int, loss: float, images: int) -> None:
        emit({"kind": "step", "run_id": session.config.run_id, "epoch": epoch, "epochs": session.config.epochs,
              "step_in_epoch": progress.step_in_epoch + steps, "steps_per_epoch": session.data.steps_per_epoch,
              "loss": loss, "images_per_s": images / max(time.perf_counter() - started, 1e-9)})
    return report


def run_epochs(session: Session, progress: Progress, records: RunRecords, stop: StopFlag,
               emit: Emit, hooks: list[EpochHook]) -> tuple[str, str]:
    """Train from ``progress`` to the last epoch; return ``(status, error message)``."""
    config = session.config
    steps_now = itertools.count(1)
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        _start_epoch(session, progress)
        batches = session.data.train_epoch(skip=progress.step_in_epoch)
        started = time.perf_counter()
        outcome = train_epoch(session.trainer, batches, should_stop=stop,
                              after_step=_after_step(hooks, session, records, progress, steps_now, stop),
                              on_progress=_step_reporter(session, progress, epoch, started, emit))
        outcome = session.strategy.gather_epoch(session, outcome)  # DDP: sums over ranks, BN statistics averaged
        if not outcome.interrupted and not outcome.diverged:
            session.handle.end_epoch()  # rules with a per-epoch phase (wm --mirror-every epoch)
        synchronize(session.device)
        _merge(progress, outcome, time.perf_counter() - started)
        if outcome.diverged:
            return "diverged", f"training loss became non-finite in epoch {epoch} (step {progress.global_step})"
        if outcome.interrupted and progress.step_in_epoch < session.data.steps_per_epoch:
            records.checkpoint(progress)
            return "interrupted", f"stopped by {stop.signal_name} in epoch {epoch} at step {progress.step_in_epoch}"
        entry = _finish_epoch(session, progress, epoch)
        records.log_epoch(entry)
        call_hooks(hooks, session, records, progress)
        records.checkpoint(progress)
        emit({"kind": "epoch", "run_id": config.run_id, "epochs": config.epochs,
              "best_top1": max(e["test_top1"] for e in progress.history), **entry})
        inject_after_checkpoint(epoch)
        if stop() and epoch < config.epochs:
            return "interrupted", f"stopped by {stop.signal_name} after epoch {epoch}"
    return stability(progress.history, session.data.dataset.num_classes)


def stability(history: list[dict], num_classes: int) -> tuple[str, str]:
    """``("finished", "")``, or ``("unstable", why)`` when training made the loss worse.

    Unstable: the final epoch's training loss is above the first epoch's (by more than
    :data:`UNSTABLE_RISE_FACTOR`, so a flat run is not flagged by its noise), or above
    :data:`UNSTABLE_LOSS_FACTOR` · ln(classes), the loss of predicting every class equally
    (any model reaches it by zeroing its last layer, so ending above it means training moved
    the model somewhere worse than knowing nothing), or some epoch's training loss went above
    :data:`UNSTABLE_PEAK_FACTOR` · ln(classes) (a blow-up, even if the run then collapsed to
    chance or recovered). Such a run is a result, kept with its curves; ``fabench table`` marks it.
    """
    first, last = history[0]["train_loss"], history[-1]["train_loss"]
    ceiling = UNSTABLE_LOSS_FACTOR * math.log(num_classes)
    peak = max(history, key=lambda e: e["train_loss"])
    if last > UNSTABLE_RISE_FACTOR * first:
        return "unstable", f"training loss rose from {first:.3f} (epoch 1) to {last:.3f} (epoch {len(history)})"
    if last > ceiling:
        return "unstable", (f"final training loss {last:.3f} is above {UNSTABLE_LOSS_FACTOR:g}·ln({num_classes}) = "
                            f"{ceiling:.3f}, worse than predicting every class equally")
    if peak["train_loss"] > UNSTABLE_PEAK_FACTOR * math.log(num_classes):
        return "unstable", (f"training loss blew up to {peak['train_loss']:.4g} in epoch {peak['epoch']} (above "
                            f"{UNSTABLE_PEAK_FACTOR:g}·ln({num_classes})) before ending at {last:.3f}")
    return learning(history, num_classes)


def learning(history: list[dict], num_classes: int) -> tuple[str, str]:
    """``("finished", "")``, or ``("no-learning", why)`` for a run that ended at chance.

    No learning: the final test top-1 is below :data:`NO_LEARNING_ACCURACY_FACTOR` times chance
    and no epoch's training loss fell below :data:`NO_LEARNING_LOSS_FRACTION` · ln(classes), the
    loss of predicting every class equally. Such a run (plain FA on its alignment plateau, a rate
    too small) is kept with its curves and marked in tables, never shown as a plain number.
    """
    chance = 100.0 / num_classes
    final = history[-1]["test_top1"]
    lowest = min(e["train_loss"] for e in history)
    floor = NO_LEARNING_LOSS_FRACTION * math.log(num_classes)
    if final < NO_LEARNING_ACCURACY_FACTOR * chance and lowest > floor:
        return "no-learning", (f"final test top-1 {final:.2f}% is within {NO_LEARNING_ACCURACY_FACTOR:g}x chance "
                               f"({chance:.1f}%) and the training loss never fell below {floor:.3f} "
                               f"({NO_LEARNING_LOSS_FRACTION:g}·ln({num_classes})); lowest {lowest:.3f}")
    return "finished", ""
