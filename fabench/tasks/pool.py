"""The grid's worker pool: cells handed one at a time to worker processes, crash-isolated.

Workers are ``spawn``-ed processes, each with its own pipe to the parent (no shared queue a
killed worker could leave locked). GPU workers get ``CUDA_VISIBLE_DEVICES`` before torch is
imported (the worker module imports no torch at import time); CPU workers split the cores
between them (``OMP_NUM_THREADS``). A worker that dies is noticed through its sentinel, its
cell recorded as ``failed`` ("worker process died"), and a fresh worker takes the next cell.
Ctrl-C reaches the parent only (workers run in their own process group): the parent stops
handing out cells and asks each busy worker to stop with SIGTERM, which :mod:`fabench.train`
turns into "finish this step, checkpoint, record ``interrupted``"; a second Ctrl-C kills them.
SIGTERM to the parent (a scheduler's) stops the grid the same way. The parent installs its
own handlers, so a grid started where SIGINT is ignored (a background job of a script) still
stops on Ctrl-C or ``kill -INT``; a worker holds its stop flag from the moment it starts, so a
SIGTERM that arrives while a cell is still being set up stops that cell at its first step.
On Linux a worker also dies with its parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass

from fabench._allocator import keep_freed_memory
from fabench.tasks._spec import Cell
from fabench.tasks.cell_run import CellOutcome, record_failure, run_cell
from fabench.train.interrupt import StopFlag, stop_on_signals

#: Seconds the parent waits for busy workers to checkpoint after Ctrl-C before killing them.
STOP_GRACE_S = 120.0


@dataclass
class GridOptions:
    """How to run a grid: worker processes, GPU placement, rerun policy, display."""

    workers: int = 1
    gpus: tuple[str, ...] = ()
    per_gpu: int = 1
    force: bool = False
    progress: bool = True


def _die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker_main(conn, env: dict[str, str], force: bool) -> None:
    """A worker: set its environment before torch loads, then run the cells the parent sends."""
    if "CUDA_VISIBLE_DEVICES" in env and "torch" in sys.modules:
        raise RuntimeError("torch was imported before the worker could pin its GPU")
    os.environ.update(env)
    keep_freed_memory()
    os.setpgrp()  # Ctrl-C goes to the parent, which stops workers in order
    _die_with_parent()
    with stop_on_signals():  # a stop before a cell's run installs its own flag is not lost
        _serve_cells(conn, force)


def _serve_cells(conn, force: bool) -> None:
    """Run the cells the parent sends until it sends None or goes away."""
    parent = os.getppid()

    def send(message: tuple) -> None:
        """Send to the parent; if it is gone, stop the run cleanly instead of training on."""
        try:
            conn.send(message)
        except OSError:  # the parent is gone: stop this run cleanly (checkpoint, interrupted)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if message is None:
            return
        index, cell = message
        outcome = run_cell(cell, force=force, on_event=lambda event, i=index: send(("event", i, event)))
        send(("result", index, outcome.status, outcome.error, outcome.top1, outcome.seconds))


def worker_envs(options: GridOptions, n_cells: int) -> list[dict[str, str]]:
    """One environment per worker: a pinned GPU each, or a share of the CPU cores each."""
    if options.gpus:
        envs = [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in options.gpus for _ in range(options.per_gpu)]
    else:
        count = max(1, min(options.workers, n_cells))
        threads = max(1, (os.cpu_count() or 1) // count)
        user = os.environ.get("OMP_NUM_THREADS", "")
        if user.isdigit() and 0 < int(user) < threads:
            threads = int(user)
        envs = [{"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} for _ in range(count)]
    return envs[:max(1, n_cells)]


class _CountingStop(StopFlag):
    """The grid process's stop flag: counts the SIGINTs and SIGTERMs received while the pool runs.

    Installed with :func:`fabench.train.interrupt.stop_on_signals`, whatever dispositions the
    process inherited; it never raises: the pool acts on the count between its waits, never
    half-way through a pipe write.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def _handle(self, signum: int, frame: object) -> None:
        self.count += 1
        self.requested, self.signal_name = True, signal.Signals(signum).name


@dataclass
class _Slot:
    """A worker process, its pipe, and the index of the cell it is running."""

    env: dict[str, str]
    process: object = None
    conn: object = None
    current: int | None = None
    started: float = 0.0


def _exit_text(code: int | None) -> str:
    """A process exit code in words: 'killed by SIGKILL', 'exit code 1'."""
    if code is None:
        return "no exit code"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class WorkerPool:
    """Worker processes fed one cell at a time; a dead worker's cell is recorded, a new one starts."""

    def __init__(self, cells: list[Cell], envs: list[dict[str, str]], force: bool, display) -> None:
        import multiprocessing

        self.ctx = multiprocessing.get_context("spawn")
        self.cells = cells
        self.force = force
        self.display = display
        self.queue: deque[int] = deque(range(len(cells)))
        self.slots = [_Slot(env) for env in envs]
        self.outcomes: list[CellOutcome] = []
        self.stopping = False

    def _start(self, slot: _Slot) -> None:
        """Start a worker process for ``slot`` with its own pipe."""
        parent_end, child_end = self.ctx.Pipe()
        slot.process = self.ctx.Process(target=_worker_main, args=(child_end, slot.env, self.force), daemon=False)
        slot.process.start()
        child_end.close()
        slot.conn = parent_end

    def _dispatch(self, slot: _Slot) -> None:
        """Give the slot's worker the next cell, or tell it to exit."""
        if self.queue and not self.stopping:
            if slot.process is None:
                self._start(slot)
            slot.current = self.queue.popleft()
            slot.started = time.monotonic()
            self.display.started(self.cells[slot.current])
            slot.conn.send((slot.current, self.cells[slot.current]))
        elif slot.process is not None:
            slot.current = None
            with contextlib.suppress(OSError):
                slot.conn.send(None)

    def _handle(self, slot: _Slot, message: tuple) -> None:
        """Act on one worker message: forward an event, or record a result and dispatch again."""
        if message[0] == "event" and slot.current == message[1]:
            self.display.event(self.cells[message[1]], message[2])
        elif message[0] == "result":
            _, index, status, error, top1, seconds = message
            outcome = CellOutcome(self.cells[index], status, error, top1, seconds)
            self.outcomes.append(outcome)
            self.display.finished(outcome)
            if status == "interrupted":
                self.stopping = True
            slot.current = None
            self._dispatch(slot)

    def _drain(self, slot: _Slot) -> None:
        """Handle every message waiting on the slot's pipe."""
        with contextlib.suppress(EOFError, OSError):
            while slot.conn.poll():
                self._handle(slot, slot.conn.recv())

    def _reap(self, slot: _Slot) -> None:
        """A worker exited: record its cell if it had one, then start a replacement if needed."""
        self._drain(slot)
        slot.process.join()
        code = slot.process.exitcode
        slot.conn.close()
        slot.process = slot.conn = None
        if slot.current is not None:
            cell = self.cells[slot.current]
            if self.stopping:
                error = f"stopped by the interrupt ({_exit_text(code)}) before its first checkpoint, or after its last"
            else:
                error = f"worker process died ({_exit_text(code)}) while running this cell"
            if not self.stopping:
                record_failure(cell, error)
            outcome = CellOutcome(cell, "interrupted" if self.stopping else "failed", error, None, time.monotonic() - slot.started)
            self.outcomes.append(outcome)
            self.display.finished(outcome)
            slot.current = None
            self._dispatch(slot)

    def pump(self, timeout: float = 0.5) -> bool:
        """Wait for messages or exits once; return True while any worker is alive."""
        from multiprocessing.connection import wait

        live = [s for s in self.slots if s.process is not None]
        if not live:
            return False
        handles = {}
        for slot in live:
            handles[slot.conn] = slot
            handles[slot.process.sentinel] = slot
        for ready in wait(list(handles), timeout=timeout):
            slot = handles[ready]
            if slot.process is not None and ready is slot.conn:
                self._drain(slot)
        for slot in live:
            if slot.process is not None and not slot.process.is_alive():
                self._reap(slot)
        self.display.refresh()
        return any(s.process is not None for s in self.slots)

    def stop(self, signum: int) -> None:
        """Stop handing out cells; send ``signum`` to every worker still running a cell."""
        self.stopping = True
        self.queue.clear()
        for slot in self.slots:
            if slot.process is not None:
                if slot.current is None:
                    with contextlib.suppress(OSError):
                        slot.conn.send(None)
                else:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.process.pid, signum)

    def run(self) -> bool:
        """Run every cell; return True if the grid was interrupted.

        The first signal asks busy workers to checkpoint and stop (SIGTERM); a second one, or
        :data:`STOP_GRACE_S` without them stopping, kills them (their last checkpoints remain).
        """
        with stop_on_signals(_CountingStop()) as signals:
            for slot in self.slots:
                self._dispatch(slot)
            deadline = None
            while self.pump(timeout=0.2):
                if signals.count and deadline is None:
                    self.display.note("interrupt: asking running cells to checkpoint and stop (Ctrl-C again to kill them)")
                    self.stop(signal.SIGTERM)
                    deadline = time.monotonic() + STOP_GRACE_S
                if deadline is not None and (signals.count > 1 or time.monotonic() > deadline):
                    self.stop(signal.SIGKILL)
                    deadline = float("inf")
            return bool(signals.count) or self.stopping
