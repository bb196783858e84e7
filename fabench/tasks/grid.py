"""Running a grid: cells in worker processes, crash-isolated, interrupt-safe, one progress display.

How it works:

- The parent skips cells whose run_id already has a ``finished`` row in ``runs.csv`` (unless
  ``force``), then hands the rest, one at a time, to worker processes (``spawn``). Each worker
  calls :func:`fabench.train.run`, which writes the run's folder and its ``runs.csv`` row
  (under train's file lock) and resumes from the run's checkpoint if one exists.
- GPU workers get ``CUDA_VISIBLE_DEVICES`` before torch is imported (the worker module imports
  no torch at import time); CPU workers split the cores between them (``OMP_NUM_THREADS``).
- Each worker talks to the parent over its own pipe (no shared queue a killed worker could
  leave locked). A cell that raises is recorded as ``failed`` with its error; a worker process
  that dies is noticed through its sentinel, its cell recorded as ``failed`` ("worker process
  died"), and a fresh worker takes the next cell. Only the parent draws progress.
- Ctrl-C (or SIGTERM) reaches the parent only (workers run in their own process group); the
  parent stops handing out cells and asks each busy worker to stop with SIGTERM, which
  :mod:`fabench.train` turns into "finish this step, checkpoint, record ``interrupted``". A
  second Ctrl-C kills the workers at once; their last checkpoints remain. Rerunning the grid
  skips finished cells and resumes the others. On Linux a worker also dies with its parent
  (``PR_SET_PDEATHSIG``), so killing the grid never leaves orphans training.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fabench.errors import FabenchError
from fabench.tasks._spec import Cell, Task
from fabench.train.schema import DONE_STATUSES

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


@dataclass
class CellOutcome:
    """What became of one cell in this invocation."""

    cell: Cell
    status: str
    error: str = ""
    top1: float | None = None
    seconds: float = 0.0


@dataclass
class GridSummary:
    """The cells selected, skipped as already finished, and the outcome of each one run."""

    task: str
    selected: int
    skipped: int
    outcomes: list[CellOutcome] = field(default_factory=list)
    interrupted: bool = False

    @property
    def finished(self) -> int:
        return sum(o.status in DONE_STATUSES for o in self.outcomes)

    @property
    def failed(self) -> int:
        return sum(o.status in ("failed", "diverged") for o in self.outcomes)

    def line(self) -> str:
        unstable = sum(o.status == "unstable" for o in self.outcomes)
        text = (f"grid {self.task}: {self.selected} cells selected, {self.skipped} already finished, "
                f"{self.finished} finished now{f' ({unstable} of them unstable)' if unstable else ''}, "
                f"{self.failed} failed or diverged")
        busy = sum(o.status == "busy" for o in self.outcomes)
        if busy:
            text += f", {busy} left to another process training them"
        elsewhere = sum(o.status == "skipped" for o in self.outcomes)
        if elsewhere:
            text += f", {elsewhere} finished meanwhile by another process"
        left = self.selected - self.skipped - len(self.outcomes)
        if self.interrupted:
            text += f"; interrupted ({left} not started). Rerun the same command to resume"
        return text


# --- what is already done ----------------------------------------------------------------------

def parse_gpus(text: str | None) -> tuple[str, ...]:
    """``"0,1"`` -> ``("0", "1")``; None or empty -> ``()``."""
    if not text:
        return ()
    ids = tuple(part.strip() for part in text.split(","))
    if any(not i or " " in i for i in ids) or len(set(ids)) != len(ids):
        raise FabenchError(f"--gpus takes distinct device ids separated by commas, e.g. 0,1; got '{text}'")
    return ids


def check_placement(device: str, gpu_ids: tuple[str, ...]) -> None:
    """Refuse, before any cell runs, a device or GPU list this machine does not have."""
    from fabench.train.device import resolve_device

    if not gpu_ids:
        resolve_device(device)
    else:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        missing = [i for i in gpu_ids if not i.isdigit() or int(i) >= count]
        if missing:
            have = f"cuda 0..{count - 1}" if count else "no CUDA device"
            raise FabenchError(f"--gpus {','.join(gpu_ids)}: GPU {missing[0]} is not here ({have}); "
                               "drop --gpus to run on the CPU with --workers")


def recorded_status(results_dir: Path) -> dict[str, str]:
    """run_id -> status of its row in ``results_dir/runs.csv`` (empty if there is none yet).

    Malformed rows are reported on stderr and ignored; a runs.csv of another schema is an error.
    """
    from fabench.report.runs import read_runs

    path = Path(results_dir) / "runs.csv"
    if not path.is_file():
        return {}
    runs = read_runs(path)
    for problem in runs.problems:
        print(f"fabench: warning: {problem}", file=sys.stderr)
    return {row["run_id"]: row["status"] for row in runs.rows}


def run_dir(cell: Cell) -> Path:
    """The folder fabench.train uses for this cell's run."""
    return Path(cell.config.results_dir) / cell.config.task / cell.run_id


def cell_state(cell: Cell, statuses: dict[str, str], force: bool) -> str:
    """``done``, ``resume`` (a checkpoint exists), ``retry (<last status>)`` or ``todo``."""
    status = statuses.get(cell.run_id)
    done = status in DONE_STATUSES
    if done and not force:
        return "done"
    if (run_dir(cell) / "last.pt").is_file() and not done:
        return "resume"
    if status and not done:
        return f"retry ({status})"
    return "rerun" if done else "todo"


def dry_run_report(task: Task, cells: list[Cell], results_dir: Path, *, force: bool = False) -> None:
    """Print every selected cell with its run_id and state; run nothing."""
    statuses = recorded_status(results_dir)
    states = [cell_state(c, statuses, force) for c in cells]
    print("state\trun_id\tcell\tsettings")
    for cell, state in zip(cells, states, strict=True):
        c = cell.config.resolved()
        settings = f"epochs={c.epochs} bs={c.batch_size} {c.optimizer} lr={c.lr:g} wd={c.weight_decay:g} {c.schedule}"
        print(f"{state}\t{cell.run_id}\t{cell.label}\t{settings}")
    done = states.count("done")
    print(f"task {task.name} v{task.version}: {len(cells)} cells, {done} done, {len(cells) - done} to run "
          f"({sum(s == 'resume' for s in states)} resume from a checkpoint); results in {results_dir}")


# --- one cell, in whatever process runs it -----------------------------------------------------

def _row_of(cell: Cell) -> dict | None:
    """The cell's current runs.csv row, if any (read without the writer's lock: a snapshot)."""
    from fabench.report.runs import read_runs

    path = Path(cell.config.results_dir) / "runs.csv"
    if not path.is_file():
        return None
    return next((r for r in read_runs(path).rows if r["run_id"] == cell.run_id), None)


def record_failure(cell: Cell, error: str) -> None:
    """Write a ``failed`` row for a cell whose run raised before train recorded it, or whose process died.

    Uses fabench.train's own locked writer; never replaces a ``finished`` row (a worker that
    died after recording its result).
    """
    from fabench.train import schema
    from fabench.train.records import upsert_run_row

    row = _row_of(cell)
    if row is not None and row["status"] in DONE_STATUSES:
        return
    results_dir = Path(cell.config.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    config = {**cell.config.to_dict(), "run_id": cell.run_id}
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    metrics = {"status": "failed", "epochs_done": (row or {}).get("epochs_done", "")}
    upsert_run_row(results_dir, schema.make_row(config, metrics, {"error": error[:500], "finished_at": now}))


def _busy_elsewhere(cell: Cell) -> bool:
    """True if another process holds this run's folder lock (another grid is training it)."""
    from fabench.train.records import RUN_LOCK, file_lock

    lock = run_dir(cell) / RUN_LOCK
    if not lock.is_file():
        return False
    with file_lock(lock, blocking=False, remove=True) as mine:
        return not mine


def _top1(row: dict) -> float | None:
    """The row's final top-1 accuracy as a float, or None if empty."""
    with contextlib.suppress(TypeError, ValueError):
        return float(row.get("final_top1"))
    return None


def run_cell(cell: Cell, *, force: bool, on_event: Callable[[dict], None] | None) -> CellOutcome:
    """Run one cell through fabench.train.run; an exception becomes a recorded ``failed`` outcome.

    fabench.train records failures that happen while training; one raised before (bad data
    folder, a model that does not fit in memory) leaves runs.csv untouched, so the grid writes
    the row. A cell another process is training right now is left alone (status ``busy``).
    """
    from fabench.train import run

    started = time.monotonic()
    if _busy_elsewhere(cell):
        return CellOutcome(cell, "busy", "being trained by another process; skipped", None, 0.0)
    before = _row_of(cell)
    try:
        result = run(cell.config, force=force, on_event=on_event)
    except KeyboardInterrupt:
        return CellOutcome(cell, "interrupted", "interrupted", None, time.monotonic() - started)
    except Exception as err:  # crash isolation: the grid records the error and goes on
        error = f"{type(err).__name__}: {err}".strip()
        if _busy_elsewhere(cell):
            return CellOutcome(cell, "busy", "being trained by another process; skipped", None, 0.0)
        if _row_of(cell) == before:
            record_failure(cell, error)
        return CellOutcome(cell, "failed", error, None, time.monotonic() - started)
    row = result.row or {}
    if result.skipped:  # another grid on this folder finished it since this grid looked
        return CellOutcome(cell, "skipped", f"already {result.status} (by another process)", _top1(row), 0.0)
    return CellOutcome(cell, result.status, str(row.get("error", "") or ""), _top1(row), time.monotonic() - started)


# --- worker processes ------------------------------------------------------------------------

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
    os.setpgrp()  # Ctrl-C goes to the parent, which stops workers in order
    _die_with_parent()
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


class _Pool:
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
        """Run every cell; return True if the grid was interrupted."""
        for slot in self.slots:
            self._dispatch(slot)
        try:
            while self.pump():
                pass
        except KeyboardInterrupt:
            self.display.note("interrupt: asking running cells to checkpoint and stop (Ctrl-C again to kill them)")
            self.stop(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            try:
                while self.pump() and time.monotonic() < deadline:
                    pass
            except KeyboardInterrupt:
                pass
            self.stop(signal.SIGKILL)
            while self.pump():
                pass
            return True
        return self.stopping


def _sequential(cells: list[Cell], force: bool, display) -> tuple[list[CellOutcome], bool]:
    """``--workers 0``: run cells one after another in this process (for debugging)."""
    outcomes = []
    for cell in cells:
        display.started(cell)
        outcome = run_cell(cell, force=force, on_event=lambda event, c=cell: display.event(c, event))
        outcomes.append(outcome)
        display.finished(outcome)
        if outcome.status == "interrupted":
            return outcomes, True
    return outcomes, False


def run_grid(task: Task, cells: list[Cell], results_dir: Path, options: GridOptions) -> GridSummary:
    """Run the selected cells (skipping finished ones unless ``force``); return what happened."""
    from fabench.tasks._display import make_display
    from fabench.train.records import check_results_dir

    results_dir = Path(results_dir)
    check_results_dir(results_dir)
    statuses = recorded_status(results_dir)
    todo = [c for c in cells if options.force or statuses.get(c.run_id) not in DONE_STATUSES]
    summary = GridSummary(task.name, len(cells), len(cells) - len(todo))
    display = make_display(task.name, total=len(todo), skipped=summary.skipped, rich=options.progress)
    restore = _sigterm_as_interrupt()
    try:
        if not todo:
            pass
        elif options.workers == 0 and not options.gpus:
            summary.outcomes, summary.interrupted = _sequential(todo, options.force, display)
        else:
            pool = _Pool(todo, worker_envs(options, len(todo)), options.force, display)
            summary.interrupted = pool.run()
            summary.outcomes = pool.outcomes
    finally:
        restore()
        display.close(summary)
    return summary


def _raise_interrupt(signum, frame) -> None:
    """Signal handler: turn SIGTERM into the KeyboardInterrupt path of Ctrl-C."""
    raise KeyboardInterrupt


def _sigterm_as_interrupt() -> Callable[[], None]:
    """Treat SIGTERM to the grid like Ctrl-C (orderly stop); return a function that undoes it."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)
