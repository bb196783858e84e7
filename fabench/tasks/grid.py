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

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fabench.errors import FabenchError
from fabench.tasks._spec import Cell, Task
from fabench.tasks.cell_run import CellOutcome, run_cell, run_dir
from fabench.tasks.pool import GridOptions, WorkerPool, worker_envs
from fabench.train.schema import DONE_STATUSES


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
        marked = [f"{n} of them {status}" for status in ("unstable", "no-learning")
                  if (n := sum(o.status == status for o in self.outcomes))]
        marks = f" ({', '.join(marked)})" if marked else ""
        text = (f"grid {self.task}: {self.selected} cells selected, {self.skipped} already finished, "
                f"{self.finished} finished now{marks}, "
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
    from fabench.train.device import cuda_device_count, resolve_device

    if not gpu_ids:
        resolve_device(device)
    else:
        count = cuda_device_count()
        missing = [i for i in gpu_ids if not i.isdigit() or int(i) >= count]
        if missing:
            have = f"cuda 0..{count - 1}" if count else "no CUDA device"
            raise FabenchError(f"--gpus {','.join(gpu_ids)}: GPU {missing[0]} is not here ({have}); "
                               "drop --gpus to run on the CPU with --workers")


def recorded_status(results_dir: Path) -> dict[str, str]:
    """run_id -> status of its row in ``results_dir/runs.csv``, brought up to date with the run
    folders' records (empty if there is none yet).

    Malformed rows are reported on stderr and ignored; a runs.csv of another schema is an error.
    """
    from fabench.train.run_index import scan_records
    from fabench.train.runs_csv import read_runs

    path = Path(results_dir) / "runs.csv"
    if not path.is_file() and not scan_records(Path(results_dir)):  # a lost index is rebuilt by read_runs
        return {}
    runs = read_runs(path)
    for problem in runs.problems:
        print(f"fabench: warning: {problem}", file=sys.stderr)
    return {row["run_id"]: row["status"] for row in runs.rows}


def cells_to_run(cells: list[Cell], results_dir: Path, force: bool) -> list[Cell]:
    """The cells not yet done in ``results_dir`` (all of them with ``force``), after checking the folder."""
    from fabench.train.runs_csv import check_results_dir
    from fabench.train.trackers import require_trackers

    check_results_dir(results_dir)
    require_trackers(sorted({name for cell in cells for name in cell.config.log}))
    statuses = recorded_status(results_dir)
    return [c for c in cells if force or statuses.get(c.run_id) not in DONE_STATUSES]


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


def dry_run_report(task: Task, cells: list[Cell], results_dir: Path, *, force: bool = False,
                   estimate: tuple[str, Callable] | None = None) -> None:
    """Print every selected cell with its run_id and state; run nothing.

    ``estimate``: a column title and a function of a cell's config giving its text (the CLI
    passes the work model's GPU-hours, which this layer may not import)."""
    statuses = recorded_status(results_dir)
    states = [cell_state(c, statuses, force) for c in cells]
    print("state\trun_id\tcell\t" + (f"{estimate[0]}\t" if estimate else "") + "settings")
    for cell, state in zip(cells, states, strict=True):
        c = cell.config.resolved()
        settings = f"epochs={c.epochs} bs={c.batch_size} {c.optimizer} lr={c.lr:g} wd={c.weight_decay:g} {c.schedule}"
        extra = f"{estimate[1](cell.config)}\t" if estimate else ""
        print(f"{state}\t{cell.run_id}\t{cell.label}\t{extra}{settings}")
    done = states.count("done")
    print(f"task {task.name} v{task.version}: {len(cells)} cells, {done} done, {len(cells) - done} to run "
          f"({sum(s == 'resume' for s in states)} resume from a checkpoint); results in {results_dir}")


def _sequential(cells: list[Cell], force: bool, display) -> tuple[list[CellOutcome], bool]:
    """``--workers 0``: run cells one after another in this process (for debugging).

    One stop flag spans the whole grid: a signal between two runs, or while a run is being set
    up, stops the grid as one during a run does (each run's own flag nests inside it).
    """
    from fabench.train.interrupt import stop_on_signals

    outcomes = []
    with stop_on_signals() as stop:
        for cell in cells:
            if stop():
                return outcomes, True
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

    results_dir = Path(results_dir)
    todo = cells_to_run(cells, results_dir, options.force)
    summary = GridSummary(task.name, len(cells), len(cells) - len(todo))
    display = make_display(task.name, total=len(todo), skipped=summary.skipped, rich=options.progress)
    try:
        if not todo:
            pass
        elif options.workers == 0 and not options.gpus:
            summary.outcomes, summary.interrupted = _sequential(todo, options.force, display)
        else:
            pool = WorkerPool(todo, worker_envs(options, len(todo)), options.force, display)
            summary.interrupted = pool.run()
            summary.outcomes = pool.outcomes
    finally:
        display.close(summary)
    from fabench.train.run_index import refresh_index

    refresh_index(results_dir)  # runs.csv holds every record, even where the file system has no working lock
    return summary
