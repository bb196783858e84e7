"""How a run is spread over processes: one small interface, two implementations.

The runner and the epoch loop call a :class:`Strategy` at the few points where several
processes must act as one, and never ask which one they have:

- ``agree(value)``: one process decides (rank 0), all get its value;
- ``on_main(fn, ...)``: work done once (a runs.csv row of a skipped run);
- ``lock(path)``: the run folder's lock, held by one process for all;
- ``prepare(session)``: make a built session train this process's share;
- ``check_replicas(session, when)``: every process holds the same state;
- ``records(session, run_dir)``: who writes the run's files;
- ``stop_on_signals(device)``: a stop flag every process reads alike;
- ``gather_epoch(session, outcome)``, ``combine_eval(result, device)``: sums over processes.

:class:`SingleProcess` is the identity of all of these; :class:`fabench.train.parallel.ddp.DDP`
is PyTorch's DistributedDataParallel under torchrun or SLURM; :func:`fabench.train.parallel.join`
picks one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from fabench.train.interrupt import StopFlag, stop_on_signals
from fabench.train.records import file_lock
from fabench.train.run_record import RunRecords


class Strategy:
    """A lone process: every method is the identity (this class is also the interface)."""

    is_main = True

    def agree(self, value):
        return value

    def on_main(self, fn: Callable, *args, **kwargs) -> None:
        fn(*args, **kwargs)

    def emitter(self, on_event: Callable[[dict], None] | None) -> Callable[[dict], None]:
        """Where progress events go: ``on_event`` on the process that reports, nowhere elsewhere."""
        return on_event if (on_event is not None and self.is_main) else (lambda event: None)

    @contextlib.contextmanager
    def lock(self, path: Path) -> Iterator[bool]:
        with file_lock(path, blocking=False, remove=True) as mine:
            yield mine

    def prepare(self, session):
        return session

    def check_replicas(self, session, when: str) -> None:
        pass

    def records(self, session, run_dir: Path) -> RunRecords:
        return RunRecords(session, run_dir)

    @contextlib.contextmanager
    def stop_on_signals(self, device) -> Iterator[StopFlag]:
        with stop_on_signals() as flag:
            yield flag

    def gather_epoch(self, session, outcome):
        return outcome

    def combine_eval(self, result: dict, device) -> dict:
        return result


class SingleProcess(Strategy):
    """The usual case: one process trains the whole run."""
