"""Stopping a run cleanly: Ctrl-C (SIGINT) or SIGTERM finish the current step, then save.

A signal only sets a flag that the loop reads between steps, so a checkpoint is never taken
half-way through an optimizer update. A second Ctrl-C raises KeyboardInterrupt at once, for
a user who does not want to wait. Handlers are installed only in the main thread (Python
allows no other) and the previous ones come back when the run ends.

For tests, ``FABENCH_FAULT`` injects real faults at exact points: ``sigint@step=N`` sends the
process SIGINT after its N-th optimizer step of this invocation, ``sigkill@epoch=N`` kills it
with SIGKILL right after the checkpoint of epoch N is written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

FAULT_ENV = "FABENCH_FAULT"


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
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fault(kind: str) -> int | None:
    """N for ``FABENCH_FAULT=<kind>=N`` (e.g. kind ``sigint@step``), else None."""
    spec = os.environ.get(FAULT_ENV, "")
    name, _, value = spec.partition("=")
    return int(value) if name == kind and value.isdigit() else None


def inject_after_step(steps_this_invocation: int) -> None:
    if _fault("sigint@step") == steps_this_invocation:
        os.kill(os.getpid(), signal.SIGINT)


def inject_after_checkpoint(epoch: int) -> None:
    if _fault("sigkill@epoch") == epoch:
        os.kill(os.getpid(), signal.SIGKILL)
