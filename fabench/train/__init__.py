"""One training run: configuration, loop, records and resumption.

Public surface::

    run(config, *, force=False, on_event=None, hooks=()) -> RunResult(status, run_dir, row, skipped)
    evaluate_run(run_dir, dataset, *, data_dir="data", device="auto", batch_size=None) -> dict
    CurveWriter(path, run_id).log(epoch, step, split, metric, value, layer="")
    EpochContext, EpochHook  (the per-epoch hook point, fabench.train.hooks)

Torch is imported when these are first used, so ``import fabench.train`` stays light for
modules that need only :mod:`fabench.train.config` or :mod:`fabench.train.schema`.
"""

from __future__ import annotations

from fabench._lazy import lazy_getattr

_EXPORTS = {
    "run": "fabench.train.runner",
    "RunResult": "fabench.train.runner",
    "evaluate_run": "fabench.train.evaluation",
    "CurveWriter": "fabench.train.curves",
    "EpochContext": "fabench.train.hooks",
    "EpochHook": "fabench.train.hooks",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
