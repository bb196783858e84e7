"""``fabench ls tasks``, ``fabench validate`` and ``fabench grid``: task files and their grids.

Failures exit with ``SystemExit(code)`` rather than ``typer.Exit``: ``fabench.cli.main`` runs
the app with ``standalone_mode=False``, where click returns a ``typer.Exit`` code instead of
exiting with it.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fabench.cli import app
from fabench.cli.choices import choice_type
from fabench.cli.ls import ls_app
from fabench.cli.single_use import SingleUseCommand
from fabench.tasks.submit import LAUNCHERS

Launcher = choice_type("Launcher", LAUNCHERS)

TasksDirOption = Annotated[
    list[Path] | None,
    typer.Option("--tasks-dir", help="Folder of task files (repeatable); replaces the default ./tasks and the source tree's tasks/."),
]

PluginOption = Annotated[
    list[str] | None,
    typer.Option("--plugin", help="A .py file or module whose rules to load (repeatable); installed packages' rules load by themselves."),
]

StorageOption = Annotated[
    str | None,
    typer.Option("--storage", help="Where the tuning studies live: an SQLAlchemy URL or journal:PATH (Optuna's "
                                    "journal file, for shared file systems) (default: sqlite under RESULTS_DIR/tune/)."),
]


def _echo_problems(problems) -> None:
    """Print each problem (``file:line: message``) on stderr."""
    for problem in problems:
        typer.echo(str(problem), err=True)


@ls_app.command("tasks")
def ls_tasks(
    pattern: Annotated[str, typer.Argument(help="fnmatch pattern on task names, e.g. 'paper-*'.")] = "*",
    tasks_dir: TasksDirOption = None,
) -> None:
    """List tasks: name, version, number of cells, description. Broken task files are reported, exit 1."""
    import fnmatch

    from fabench.tasks import scan, task_dirs, visible_tasks

    reports = scan(task_dirs(tasks_dir))
    rows = [
        (t.name, t.version, str(len(t.cells())), t.description.splitlines()[0])
        for t in visible_tasks(reports)
        if fnmatch.fnmatchcase(t.name, pattern)
    ]
    _print_tasks(rows)
    broken = [r for r in reports if r.problems]
    for report in broken:
        _echo_problems(report.problems)
    if broken:
        typer.echo(f"fabench: {len(broken)} task file(s) have problems (listed above); fix them or run `fabench validate`", err=True)
        raise SystemExit(1)


def _print_tasks(rows: list[tuple[str, str, str, str]]) -> None:
    """A table on a terminal, tab-separated lines otherwise (for scripts)."""
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        for row in rows:
            typer.echo("\t".join(row))
        return
    table = Table(title="tasks (fabench grid NAME runs one)")
    for name in ("name", "version", "cells", "description"):
        table.add_column(name, style="bold" if name == "name" else None, justify="right" if name == "cells" else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command("validate", cls=SingleUseCommand)
def validate(
    files: Annotated[list[str] | None, typer.Argument(help="Task files or task names; default: every file in the task folders.")] = None,
    tasks_dir: TasksDirOption = None,
    plugin: PluginOption = None,
) -> None:
    """Check task files: YAML, keys, rules, archs, datasets, settings, includes. Problems name file:line; exit 1."""
    from fabench.rules import load_plugins
    from fabench.tasks import check_file, duplicate_names, task_dirs, task_files

    load_plugins(plugin)

    paths = _validate_targets(files, tasks_dir) if files else task_files(task_dirs(tasks_dir), fragments=True)
    if not paths:
        typer.echo("fabench: no task files found; pass files or --tasks-dir", err=True)
        raise SystemExit(1)
    reports = [check_file(p) for p in paths]
    by_path = {r.path: r for r in reports}
    for problem in duplicate_names(reports):
        by_path[problem.where.path].problems.append(problem)
    for report in reports:
        if report.problems:
            _echo_problems(report.problems)
        else:
            typer.echo(f"ok\t{_describe(report)}")
    bad = sum(bool(r.problems) for r in reports)
    if bad:
        typer.echo(f"fabench: {bad} of {len(reports)} task file(s) invalid", err=True)
        raise SystemExit(1)


def _validate_targets(files: list[str], tasks_dir) -> list[Path]:
    """Existing paths as given; other arguments are looked up as task names."""
    from fabench.tasks import TaskFileError, read_task_file, task_dirs, task_files

    paths = []
    for item in files:
        if Path(item).is_file():
            paths.append(Path(item))
            continue
        found = []
        for path in task_files(task_dirs(tasks_dir)):
            try:
                if read_task_file(path).data.get("task") == item:
                    found.append(path)
            except TaskFileError:
                continue
        if not found:
            from fabench.errors import FabenchError

            raise FabenchError(f"'{item}' is neither a file nor a task name found in the task folders")
        paths += found
    return paths


def _describe(report) -> str:
    """The 'ok' line of a valid file: path, task, version and number of cells."""
    from fabench._paths import display_path

    where = display_path(report.path)
    if report.task is None:
        return f"{where}\t(fragment)"
    cells = len(report.task.cells())
    return f"{where}\t{report.task.name} v{report.task.version}\t{cells} cells"


@app.command("grid", cls=SingleUseCommand)
def grid(
    task: Annotated[str, typer.Argument(help="Task name (see `fabench ls tasks`) or path to a task file.")],
    results_dir: Annotated[Path, typer.Option("--results-dir", help="Where runs.csv and run folders go.")] = Path("results"),
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where datasets are found or downloaded.")] = Path("data"),
    device: Annotated[str, typer.Option(help="Device for each run: auto, cpu, cuda or cuda:N (with --gpus: cuda).")] = "auto",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and which are done; run nothing.")] = False,
    limit: Annotated[int | None, typer.Option(help="Run at most N of the selected cells (in grid order).", min=1)] = None,
    rule: Annotated[list[str] | None, typer.Option(help="fnmatch filter on rule (repeatable).")] = None,
    arch: Annotated[list[str] | None, typer.Option(help="fnmatch filter on arch (repeatable).")] = None,
    dataset: Annotated[list[str] | None, typer.Option(help="fnmatch filter on dataset (repeatable).")] = None,
    seed: Annotated[list[str] | None, typer.Option(help="fnmatch filter on seed (repeatable).")] = None,
    variant: Annotated[list[str] | None, typer.Option(help="fnmatch filter on variant (repeatable).")] = None,
    workers: Annotated[int, typer.Option(help="CPU worker processes (0: run in this process).", min=0)] = 1,
    gpus: Annotated[str | None, typer.Option(help="GPU ids, e.g. 0,1: one pinned worker group per GPU.")] = None,
    per_gpu: Annotated[int, typer.Option("--per-gpu", help="Worker processes per GPU.", min=1)] = 1,
    force: Annotated[bool, typer.Option(help="Rerun cells that already finished.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Plain log lines instead of a progress bar.")] = False,
    tasks_dir: TasksDirOption = None,
    tuned: Annotated[bool | None, typer.Option("--tuned/--untuned", help="Run each cell with its rule's tuned settings from `fabench tune` (default: the task's 'tuned:').")] = None,
    storage: StorageOption = None,
    launcher: Annotated[Launcher, typer.Option(help="local (worker processes here) or submitit (a SLURM job array; pip install 'fabench\\[slurm]'); submitit-local runs submitit's executor here.")] = Launcher("local"),
    slurm_partition: Annotated[str | None, typer.Option(help="SLURM partition of the array's jobs.", rich_help_panel="SLURM (--launcher submitit)")] = None,
    slurm_time: Annotated[str | None, typer.Option(help="Time limit per cell: minutes or a SLURM time such as 4:00:00 or 1-00:00:00 (default 4:00:00).", rich_help_panel="SLURM (--launcher submitit)")] = None,
    slurm_gpus_per_cell: Annotated[int | None, typer.Option(help="GPUs per cell, one DDP process each (0: CPU-only cells) (default 1).", min=0, rich_help_panel="SLURM (--launcher submitit)")] = None,
    slurm_cpus_per_task: Annotated[int | None, typer.Option(help="CPUs per process (per GPU) (default: the cluster's).", min=1, rich_help_panel="SLURM (--launcher submitit)")] = None,
    slurm_array_parallelism: Annotated[int | None, typer.Option(help="Most cells running at once (default 16).", min=1, rich_help_panel="SLURM (--launcher submitit)")] = None,
    slurm_folder: Annotated[Path | None, typer.Option(help="submitit's folder of scripts, logs and pickles (%A: the array job id) (default RESULTS_DIR/submitit/%A).", rich_help_panel="SLURM (--launcher submitit)")] = None,
    slurm_extra: Annotated[list[str] | None, typer.Option(help="Any other sbatch option as KEY=VALUE, e.g. account=proj, qos=high (repeatable).", rich_help_panel="SLURM (--launcher submitit)")] = None,
    slurm_wait: Annotated[bool, typer.Option("--slurm-wait", help="Wait for the array to finish and print the grid summary.", rich_help_panel="SLURM (--launcher submitit)")] = False,
    plugin: PluginOption = None,
) -> None:
    """Run a task's grid of cells (rules x archs x datasets x seeds), skipping finished ones."""
    from fabench.errors import FabenchError
    from fabench.tasks import load_task, select_cells, task_dirs
    from fabench.tasks.grid import (
        GridOptions,
        check_placement,
        dry_run_report,
        parse_gpus,
        run_grid,
    )
    launcher = launcher.value
    slurm = {"partition": slurm_partition, "time": slurm_time, "gpus_per_cell": slurm_gpus_per_cell,
             "cpus_per_task": slurm_cpus_per_task, "array_parallelism": slurm_array_parallelism,
             "folder": slurm_folder, "extra": slurm_extra, "wait": slurm_wait or None}
    slurm = {key: value for key, value in slurm.items() if value is not None}
    if launcher == "local" and slurm:
        raise FabenchError(f"--slurm-{next(iter(slurm)).replace('_', '-')} needs --launcher submitit")
    if launcher != "local" and gpus:
        raise FabenchError("--gpus places local workers; with --launcher submitit use --slurm-gpus-per-cell")
    slurm_options = _slurm_options(slurm, results_dir) if launcher != "local" else None
    from fabench.rules import absolute_plugins, load_plugins

    plugins = absolute_plugins(plugin)
    load_plugins(plugins)  # before the task's rules are checked
    loaded = load_task(task, task_dirs(tasks_dir))
    gpu_ids = parse_gpus(gpus)
    on_gpus = gpu_ids or (slurm_options is not None and slurm_options.gpus_per_cell > 0 and device == "auto")
    # the cells' device decides their --amp auto: CUDA for GPU workers and GPU jobs, not this machine's
    placement = {"results_dir": str(results_dir), "data_dir": str(data_dir), "device": "cuda" if on_gpus else device, "progress": False}
    if launcher == "local" and not dry_run:
        check_placement(placement["device"], gpu_ids)
    cells = select_cells(loaded.cells(**placement), rule=rule, arch=arch, dataset=dataset, seed=seed, variant=variant, limit=limit)
    if plugins:  # every cell's process loads them (workers, SLURM jobs); they join each run's identity
        cells = [dataclasses.replace(c, config=dataclasses.replace(
            c.config, plugins=tuple(dict.fromkeys((*c.config.plugins, *plugins))))) for c in cells]
    if not cells:
        typer.echo(f"fabench: no cell of task '{loaded.name}' matches the filters", err=True)
        raise SystemExit(1)
    if loaded.tuned if tuned is None else tuned:
        from fabench.tasks.tune import storage_url, tuned_cells

        cells = tuned_cells(cells, loaded, loaded.tune, storage_url(results_dir, loaded, storage))
    elif storage:
        raise FabenchError("--storage names the tuning studies; it needs --tuned")
    if dry_run:
        from fabench.bench.gpu_hours import ESTIMATE_TITLE, gpu_hours_text

        dry_run_report(loaded, cells, results_dir, force=force, estimate=(ESTIMATE_TITLE, gpu_hours_text))
        typer.echo(f"{ESTIMATE_TITLE}: GPU-hours of each cell's training from the work model at an A100's float32 "
                   "peak (covered layers only; an estimate, not a bound; ? where unknown)")
        return
    if launcher != "local":
        from fabench.tasks.submit import submit_grid

        summary = submit_grid(loaded, cells, results_dir, slurm_options, launcher=launcher, force=force)
    else:
        options = GridOptions(workers=workers, gpus=gpu_ids, per_gpu=per_gpu, force=force,
                              progress=not no_progress and sys.stderr.isatty())
        summary = run_grid(loaded, cells, results_dir, options)
    if summary.failed or summary.interrupted:
        raise SystemExit(130 if summary.interrupted else 1)


def _slurm_options(given: dict, results_dir: Path):
    """The ``--slurm-*`` options given, checked, with defaults for the rest (fabench.tasks.submit)."""
    from fabench.tasks.submit import SlurmOptions, parse_extra, parse_slurm_time

    values = dict(given)
    if "time" in values:
        values["time_min"] = parse_slurm_time(values.pop("time"))
    values["extra"] = parse_extra(values.get("extra"))
    values.setdefault("folder", results_dir / "submitit" / "%A")
    return SlurmOptions(**values)
