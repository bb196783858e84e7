"""``fabench bench probe``: the cost of one diagnostics probe as a fraction of a training epoch.

In one process and session (same model, rule, data and device): a warm-up of a few steps and
one probe, then rounds of one full training epoch (``fabench.train.loop.train_epoch``, the loop
``fabench run`` uses; evaluation and checkpoints excluded) followed by ``probes`` probes (the
probe pass and writing its rows, as the run's hook does; the probe batch is fetched once per run
and is left out). The ratio is mean probe time / mean epoch time: the cost of
``--diagnostics epoch``. With ``--diagnostics N`` a run probes ``steps_per_epoch // N`` more
times per epoch.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass

from fabench.train.config import RunConfig

WARMUP_STEPS = 3


@dataclass
class ProbeFigures:
    """Seconds per timed epoch and per timed probe, and what the probe covered."""

    epoch_s: list[float]
    probe_s: list[float]
    steps_per_epoch: int
    probe_images: int
    layers: int
    device: str

    @property
    def ratio(self) -> float:
        return statistics.mean(self.probe_s) / statistics.mean(self.epoch_s)


class _NullCurves:
    """Stands in for a CurveWriter: formats nothing, writes nothing."""

    def log(self, *args, **kwargs) -> None:
        pass


def _timed(device, work) -> float:
    from fabench.train.device import synchronize

    synchronize(device)
    started = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - started


def run_probe_benchmark(config: RunConfig, *, rounds: int = 2, probes: int = 3) -> ProbeFigures:
    """Time ``rounds`` epochs and ``rounds × probes`` probes of ``config``'s run."""
    from fabench.diagnostics.hook import log_diagnostics
    from fabench.diagnostics.probe import measure, probe_batch
    from fabench.train.device import numerics
    from fabench.train.loop import train_epoch
    from fabench.train.session import build_session, preflight

    device = preflight(config)
    with numerics(config.deterministic):
        session = build_session(config, device)
        data, trainer = session.data, session.trainer
        images, labels = probe_batch(data)

        def probe() -> None:
            log_diagnostics(_NullCurves(), 0, 0, measure(session.model, session.handle, images, labels))

        def epoch() -> None:
            train_epoch(trainer, data.train_epoch(), should_stop=lambda: False)

        train_epoch(trainer, itertools.islice(data.train_epoch(), WARMUP_STEPS), should_stop=lambda: False)
        probe()
        epoch_s, probe_s = [], []
        for _ in range(rounds):
            epoch_s.append(_timed(device, epoch))
            probe_s += [_timed(device, probe) for _ in range(probes)]
    return ProbeFigures(epoch_s, probe_s, data.steps_per_epoch, int(labels.shape[0]),
                        len(session.handle.layers), str(device))
