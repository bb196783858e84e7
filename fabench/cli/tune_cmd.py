"""``fabench tune TASK``: search each cell's settings with the same budget, on validation images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fabench.cli import app
from fabench.cli.single_use import SingleUseCommand
from fabench.cli.tasks_cmd import StorageOption, TasksDirOption


@app.command("tune", cls=SingleUseCommand)
def tune(
    task: Annotated[str, typer.Argument(help="Task name (see `fabench ls tasks`) or path to a task file.")],
    trials: Annotated[int | None, typer.Option(help="Trials per cell (default: the task's tune.trials).", min=1)] = None,
    workers: Annotated[int, typer.Option(help="Trials run in parallel, one process each (1: in this process).", min=1)] = 1,
    storage: StorageOption = None,
    show: Annotated[bool, typer.Option("--show", help="Print each cell's best settings, its validation score and the trials spent; run nothing.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the budget and search space of each cell; run nothing.")] = False,
    results_dir: Annotated[Path, typer.Option("--results-dir", help="Where runs.csv, run folders and tune/ go.")] = Path("results"),
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where datasets are found.")] = Path("data"),
    device: Annotated[str, typer.Option(help="Device for each trial: auto, cpu, cuda or cuda:N.")] = "auto",
    rule: Annotated[list[str] | None, typer.Option(help="fnmatch filter on rule (repeatable).")] = None,
    arch: Annotated[list[str] | None, typer.Option(help="fnmatch filter on arch (repeatable).")] = None,
    dataset: Annotated[list[str] | None, typer.Option(help="fnmatch filter on dataset (repeatable).")] = None,
    variant: Annotated[list[str] | None, typer.Option(help="fnmatch filter on variant (repeatable).")] = None,
    tasks_dir: TasksDirOption = None,
) -> None:
    """Tune every cell of a task with Optuna: the same trials x epochs for every rule, scored on
    held-out validation images; then `fabench grid TASK --tuned` runs the task's seeds with the result."""
    from fabench.tasks import load_task, select_cells, task_dirs
    from fabench.tasks import tune as tuning

    loaded = load_task(task, task_dirs(tasks_dir))
    spec = loaded.tune.with_trials(trials)
    placement = {"results_dir": str(results_dir), "data_dir": str(data_dir), "device": device, "progress": False}
    cells = select_cells(loaded.cells(**placement), rule=rule, arch=arch, dataset=dataset, variant=variant)
    if not cells:
        typer.echo(f"fabench: no cell of task '{loaded.name}' matches the filters", err=True)
        raise SystemExit(1)
    url = tuning.storage_url(results_dir, loaded, storage)
    tuning.open_storage(url, create=not show)  # a storage that cannot be opened: one line, before anything runs
    if show:
        _show(loaded, cells, spec, url)
        return
    for line in tuning.describe(loaded, cells, spec):
        typer.echo(line)
    if dry_run:
        return
    jobs = tuning.plan_jobs(loaded, cells, spec, results_dir, url, workers)
    typer.echo(f"studies in {url}; {sum(j.trials for j in jobs)} trials to run", err=False)
    tuning.run_jobs(jobs, workers)
    _show(loaded, cells, spec, url)


def _show(task, cells, spec, url: str) -> None:
    """Each tuning cell's best settings, validation top-1 and trials spent, as a table."""
    from rich.console import Console
    from rich.table import Table

    from fabench.tasks import tune as tuning

    table = Table(title=f"{task.name}: tuned settings ({spec.trials} trials per cell; {url})")
    for column in ("cell", "score (val top-1)", "trial", "trials", "settings"):
        table.add_column(column)
    for cell in tuning.tuning_cells(cells):
        best = tuning.best_settings(url, task, cell, spec)
        name = tuning.study_name(task, cell)
        if best is None:
            table.add_row(name, "-", "-", "not tuned", "")
            continue
        spent = ", ".join(f"{n} {state}" for state, n in sorted(best.trials.items()))
        settings = ", ".join(f"{k}={tuning.format_value(v)}" for k, v in best.values.items())
        table.add_row(name, f"{best.val_top1:.2f}", str(best.trial), spent, settings)
    Console(width=200).print(table)
