"""The run's side of the probe: a hook the training loop calls, logging rows to curves.csv.

Rows are tidy: ``split="probe"``, ``metric`` one of :data:`fabench.diagnostics.probe.METRICS`,
``layer`` the model's own module name. Every probe also logs a ``depth`` row per layer (its
position in forward order), so the rows of any one probe are enough to draw a layer axis.
``epoch`` is the number of epochs completed when the probe ran (0 before training; a probe
after step s of epoch e carries e - 1), ``step`` the optimizer steps so far; plots place
probes at ``step / steps_per_epoch``.
"""

from __future__ import annotations

from fabench.diagnostics.probe import (
    PROBE_IMAGES,
    PROBE_SPLIT,
    LayerDiagnostics,
    measure,
    probe_batch,
)
from fabench.train.schedule import parse_diagnostics


def log_diagnostics(curves, epoch: int, step: int, rows: list[LayerDiagnostics]) -> None:
    """Write one probe's rows (``depth`` first) through a :class:`fabench.train.CurveWriter`."""
    for row in rows:
        curves.log(epoch, step, PROBE_SPLIT, "depth", row.depth, layer=row.name)
        for metric, value in row.values.items():
            curves.log(epoch, step, PROBE_SPLIT, metric, value, layer=row.name)


class ProbeHook:
    """Called by the loop at step 0, after every epoch and, if ``every_steps``, every N steps.

    The probe batch is taken from the run's data on first use and kept (on the run's device).
    A second call at the same step (an N-step probe that lands on an epoch's end) is skipped.
    """

    def __init__(self, every_steps: int | None = None, images: int | None = None) -> None:
        self.every_steps = every_steps
        self.images = images
        self._batch = None
        self._last_step: int | None = None

    def __call__(self, ctx) -> None:
        if ctx.step == self._last_step:
            return
        if self._batch is None:
            self._batch = probe_batch(ctx.data, self.images or PROBE_IMAGES)
        rows = measure(ctx.model, ctx.handle, *self._batch)
        log_diagnostics(ctx.curves, ctx.epoch, ctx.step, rows)
        self._last_step = ctx.step


def probe_hook(config) -> ProbeHook | None:
    """The hook for a :class:`fabench.train.config.RunConfig`, or None with diagnostics off."""
    schedule = parse_diagnostics(config.diagnostics)
    return ProbeHook(schedule.every_steps) if schedule.enabled else None


def run_hooks(config) -> list:
    """The hooks ``fabench.train.run`` gets for ``config``: the probe, unless diagnostics are off.

    Every entry point that trains (``fabench run``, grid cells, SLURM array tasks) composes its
    run with these, so fabench.train never imports diagnostics.
    """
    hook = probe_hook(config)
    return [hook] if hook is not None else []
