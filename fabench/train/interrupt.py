"""Stopping a run cleanly: Ctrl-C (SIGINT) or SIGTERM finish the current step, then save.

A signal only sets a flag that the loop reads between steps, so a checkpoint is never taken
half-way through an optimizer update. A second Ctrl-C raises KeyboardInterrupt at once, for
a user who does not want to wait. Handlers are installed only in the main thread (Python
allows no other) and the previous ones come back when the run ends. Flags nest: a block
entered while an outer flag (a grid worker's) is already raised starts raised, and a stop that
reaches the inner block is handed to the outer flag when the block ends, so no signal is lost
in the gaps between runs.

For tests, ``FABENCH_FAULT`` injects real faults at exact points: ``sigint@step=N`` sends the
process SIGINT after its N-th optimizer step of this invocation, ``sigkill@epoch=N`` kills it
with SIGKILL right after the checkpoint of epoch N is written, and ``hold@process-step=N``
makes the process wait after its N-th optimizer step (counted over every run it trains) until
a stop is requested, so a test can interrupt a run at a known point without racing it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator

FAULT_ENV = "FABENCH_FAULT"
#: The longest a ``hold@process-step`` fault waits for a stop before training on (seconds).
HOLD_LIMIT_S = 600.0
_process_steps = itertools.count(1)


class StopRun(Exception):
    """Raised by an ``on_event`` observer of a single-process run at an ``epoch`` event to end the
    run there, recorded with ``status`` (one of fabench.train.schema.STATUSES, e.g. ``pruned``)."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class StopFlag:
    """Set by a signal handler; read by the training loop between steps."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag | None = None) -> Iterator[StopFlag]:
    """``flag`` (a new StopFlag by default) raised by SIGINT/SIGTERM for the duration of the block;
    outside the main thread, where no handler can be installed, the flag is handed out as is."""
    flag = StopFlag() if flag is None else flag
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.signal(sig, flag._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    outer = _outer_flags(previous.values())
    for raised in (f for f in outer if f.requested):
        flag.requested, flag.signal_name = True, flag.signal_name or raised.signal_name
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for enclosing in outer if flag.requested else ():
            enclosing.requested, enclosing.signal_name = True, enclosing.signal_name or flag.signal_name


def _outer_flags(handlers) -> list[StopFlag]:
    """The StopFlags whose handlers were installed before this block's (an enclosing block's)."""
    flags = [getattr(h, "__self__", None) for h in handlers]
    return list({id(f): f for f in flags if isinstance(f, StopFlag)}.values())


def _fault(kind: str) -> int | None:
    """N for ``FABENCH_FAULT=<kind>=N`` (e.g. kind ``sigint@step``), else None."""
    spec = os.environ.get(FAULT_ENV, "")
    name, _, value = spec.partition("=")
    return int(value) if name == kind and value.isdigit() else None


def inject_after_step(steps_this_invocation: int, stop: StopFlag | None = None) -> None:
    """The step faults: ``sigint@step`` and ``hold@process-step`` (see the module docstring)."""
    if _fault("sigint@step") == steps_this_invocation:
        os.kill(os.getpid(), signal.SIGINT)
    if _fault("hold@process-step") == next(_process_steps) and stop is not None:
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.02)


def inject_after_checkpoint(epoch: int) -> None:
    if _fault("sigkill@epoch") == epoch:
        os.kill(os.getpid(), signal.SIGKILL)
