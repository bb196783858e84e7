"""Stopping together: a Ctrl-C or SIGTERM on any rank stops every rank after the same step.

torchrun forwards signals to every rank; each sets a local flag that the ranks compare every
:data:`STOP_SYNC_EVERY` steps and at each epoch's end (folded into the epoch's reduction), so
all stop after the same step and rank 0 checkpoints. A repeated signal does not abort a rank
mid-step (torchrun's own escalation to SIGKILL does).
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from fabench.train import interrupt
from fabench.train.interrupt import StopFlag

#: Steps between the ranks' comparisons of their stop flags (one small all-reduce each).
STOP_SYNC_EVERY = 16


class SyncedStop(StopFlag):
    """A stop flag that all ranks read alike: local signals are compared every few calls."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.calls = 0
        self.agreed = False

    def _handle(self, signum: int, frame: object) -> None:
        """Never raise mid-step (that would leave the other ranks waiting); torchrun escalates."""
        import signal

        self.requested = True
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def agree_to_stop(self) -> None:
        """Every rank has learnt that one of them was asked to stop."""
        self.agreed = True
        self.signal_name = self.signal_name or "a signal to another rank"

    def __call__(self) -> bool:
        self.calls += 1
        if not self.agreed and self.calls % STOP_SYNC_EVERY == 0:
            flag = torch.tensor([1.0 if self.requested else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item():
                self.agree_to_stop()
        return self.agreed


def stop_on_signals(device: torch.device) -> contextlib.AbstractContextManager[StopFlag]:
    """:func:`fabench.train.interrupt.stop_on_signals` with a flag the ranks agree on."""
    return interrupt.stop_on_signals(SyncedStop(device))
