"""Showing a run's progress events: a rich progress bar on a terminal, plain lines otherwise.

:func:`fabench.train.run` never draws; it sends events (dicts with ``kind`` = ``start``,
``step``, ``epoch`` or ``end``) to ``on_event``. ``fabench run`` passes a :class:`RunDisplay`.
On a terminal the display shows one bar over the whole run (epoch, loss, accuracy, images/s,
ETA) and prints a line per epoch above it; without a terminal, or with ``--no-progress``, it
prints only the per-epoch lines. A summary table follows the end of the run.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


def epoch_line(event: dict) -> str:
    """One plain line describing a finished epoch."""
    return (
        f"[{event['run_id']}] epoch {event['epoch']}/{event['epochs']}  "
        f"train loss {event['train_loss']:.4f} acc {event['train_top1']:.2f}%  "
        f"test top1 {event['test_top1']:.2f}% top5 {event['test_top5']:.2f}% loss {event['test_loss']:.4f}  "
        f"lr {event['lr']:.3g}  {event['images_per_s']:.0f} img/s  {event['epoch_time_s']:.1f}s"
    )


def summary_table(row: dict) -> Table:
    """A small table of a run's result row (runs.csv columns)."""
    table = Table(title=f"run {row.get('run_id', '')}: {row.get('status', '')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("rule", "arch", "dataset", "seed", "epochs_done", "final_top1", "final_top5",
                "best_top1", "best_epoch", "final_test_loss", "train_time_s", "images_per_s", "device"):
        value = row.get(key, "")
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    if row.get("error"):
        table.add_row("error", str(row["error"]))
    return table


class RunDisplay:
    """An ``on_event`` callback that draws one run's progress."""

    def __init__(self, *, live: bool = True, console: Console | None = None) -> None:
        self.console = console or Console()
        self.live = live and self.console.is_terminal
        self._bar: Progress | None = None
        self._task = None
        self._acc = ""

    def __call__(self, event: dict) -> None:
        getattr(self, f"_on_{event['kind']}", lambda e: None)(event)

    def _on_start(self, event: dict) -> None:
        resumed = f", resuming after epoch {event['start_epoch']}" if event["resumed"] else ""
        self._print(f"[{event['run_id']}] {event['rule']} on {event['arch']} / {event['dataset']}, "
                    f"seed {event['seed']}, {event['epochs']} epochs, {event['device']}{resumed}")
        if event.get("recipe"):
            self._print(f"[{event['run_id']}] {event['recipe']}")
        if not self.live:
            return
        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=self.console, transient=True,
        )
        total = event["epochs"] * event["steps_per_epoch"]
        done = event["start_epoch"] * event["steps_per_epoch"] + event.get("start_step", 0)
        self._task = self._bar.add_task(f"epoch {event['start_epoch'] + 1}/{event['epochs']}", total=total,
                                        completed=done, stats="")
        self._steps_per_epoch = event["steps_per_epoch"]
        self._bar.start()

    def _on_step(self, event: dict) -> None:
        if self._bar is None:
            return
        done = (event["epoch"] - 1) * self._steps_per_epoch + event["step_in_epoch"]
        stats = f"loss {event['loss']:.3f}{self._acc}  {event['images_per_s']:.0f} img/s"
        self._bar.update(self._task, completed=done, stats=stats,
                         description=f"epoch {event['epoch']}/{event['epochs']}")

    def _on_epoch(self, event: dict) -> None:
        self._acc = f"  test {event['test_top1']:.1f}%"
        if self._bar is not None:
            self._bar.update(self._task, completed=event["epoch"] * self._steps_per_epoch)
        self._print(epoch_line(event))

    def _on_end(self, event: dict) -> None:
        self.close()
        if event.get("message"):
            self._print(event["message"])
        if event.get("row"):
            self.console.print(summary_table(event["row"]))

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
