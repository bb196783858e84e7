"""The grid's progress display, drawn by the parent process only.

Two forms with one interface (``started``, ``event``, ``finished``, ``note``, ``refresh``,
``close``): a rich progress bar on a terminal (overall done/running/failed with ETA, plus one
line per running cell with its epoch), and plain log lines for CI and cluster logs
(``--no-progress``, or whenever stderr is not a terminal). Events come from
:func:`fabench.train.run`'s ``on_event`` callback, forwarded by the workers.
"""

from __future__ import annotations

import sys


def _epoch_of(event: dict) -> tuple[int | None, int | None]:
    """(epoch, total epochs) of a train event, if it carries them."""
    epoch, total = event.get("epoch"), event.get("epochs")
    return (epoch if isinstance(epoch, int) else None), (total if isinstance(total, int) else None)


def _top1_of(event: dict) -> float | None:
    """The test top-1 accuracy an event reports, under the names train uses."""
    for key in ("test_top1", "top1", "final_top1"):
        value = event.get(key)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _result_text(outcome) -> str:
    """Status, accuracy, time and (if not finished) the error of one cell."""
    text = outcome.status
    if outcome.top1 is not None:
        text += f", top-1 {outcome.top1:.2f}%"
    text += f", {outcome.seconds:.0f}s"
    if outcome.error and outcome.status != "finished":
        text += f": {outcome.error}"
    return text


class PlainDisplay:
    """One line per start, epoch and result, flushed at once (for logs)."""

    def __init__(self, task: str, total: int, skipped: int) -> None:
        self.task, self.total, self.done = task, total, 0
        if skipped:
            self._print(f"skipping {skipped} already finished cell(s)")

    def _print(self, text: str) -> None:
        print(f"[grid {self.task}] {text}", flush=True)

    def started(self, cell) -> None:
        self._print(f"start {cell.label} (run {cell.run_id})")

    def event(self, cell, event: dict) -> None:
        if event.get("kind") == "start" and event.get("resumed"):
            self._print(f"resume {cell.label} from epoch {event.get('start_epoch')}")
        if event.get("kind") != "epoch":
            return
        epoch, total = _epoch_of(event)
        top1 = _top1_of(event)
        extra = f", test top-1 {top1:.2f}%" if top1 is not None else ""
        self._print(f"epoch {epoch}/{total or cell.config.epochs} {cell.label}{extra}")

    def finished(self, outcome) -> None:
        self.done += 1
        self._print(f"[{self.done}/{self.total}] {outcome.cell.label}: {_result_text(outcome)}")

    def note(self, text: str) -> None:
        self._print(text)

    def refresh(self) -> None:
        pass

    def close(self, summary) -> None:
        print(summary.line(), flush=True)


class RichDisplay:
    """An overall bar (cells done of total, running, failed, ETA) and a line per running cell."""

    def __init__(self, task: str, total: int, skipped: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.task, self.total = task, total
        self.done = self.failed = 0
        self.running: dict[str, tuple[int, float]] = {}  # run_id -> (progress task id, fraction)
        self.overall = self.progress.add_task(f"grid {task}", total=max(total, 1), info="", count="")
        self.progress.start()
        if skipped:
            self.console.print(f"skipping {skipped} already finished cell(s)")
        self._update()

    def _update(self) -> None:
        partial = sum(fraction for _, fraction in self.running.values())
        info = f"{len(self.running)} running, {self.failed} failed"
        self.progress.update(self.overall, completed=min(self.done + partial, self.total), info=info,
                             count=f"{self.done}/{self.total} done")

    def started(self, cell) -> None:
        task_id = self.progress.add_task(f"  {cell.label}", total=cell.config.epochs, info="starting", count="")
        self.running[cell.run_id] = (task_id, 0.0)
        self._update()

    def event(self, cell, event: dict) -> None:
        if cell.run_id not in self.running:
            return
        task_id, fraction = self.running[cell.run_id]
        epoch, total = _epoch_of(event)
        if event.get("kind") == "step" and epoch is not None:
            total = total or cell.config.epochs
            within = event.get("step_in_epoch", 0) / max(event.get("steps_per_epoch") or 1, 1)
            done = epoch - 1 + min(within, 1.0)
            self.progress.update(task_id, completed=done, total=total, info=f"epoch {epoch}/{total}, loss {event.get('loss', float('nan')):.3f}")
            fraction = min(done / max(total, 1), 1.0)
        elif event.get("kind") == "start" and event.get("resumed"):
            self.progress.update(task_id, completed=event.get("start_epoch", 0), info=f"resumed at epoch {event.get('start_epoch', 0)}")
        elif event.get("kind") == "epoch" and epoch is not None:
            total = total or cell.config.epochs
            top1 = _top1_of(event)
            info = f"epoch {epoch}/{total}" + (f", top-1 {top1:.1f}%" if top1 is not None else "")
            self.progress.update(task_id, completed=epoch, total=total, info=info)
            fraction = min(epoch / max(total, 1), 1.0)
        self.running[cell.run_id] = (task_id, fraction)
        self._update()

    def finished(self, outcome) -> None:
        entry = self.running.pop(outcome.cell.run_id, None)
        if entry is not None:
            self.progress.remove_task(entry[0])
        self.done += 1
        if outcome.status in ("failed", "diverged"):
            self.failed += 1
        if outcome.status != "finished":
            self.console.print(f"{outcome.cell.label}: {_result_text(outcome)}")
        self._update()

    def note(self, text: str) -> None:
        self.console.print(text)

    def refresh(self) -> None:
        self.progress.refresh()

    def close(self, summary) -> None:
        self._update()
        self.progress.stop()
        print(summary.line(), flush=True)


def make_display(task: str, *, total: int, skipped: int, rich: bool):
    """A rich display if asked and stderr is a terminal, else plain lines."""
    if rich and sys.stderr.isatty():
        return RichDisplay(task, total, skipped)
    return PlainDisplay(task, total, skipped)

