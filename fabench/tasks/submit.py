"""``fabench grid TASK --launcher submitit``: a grid's cells as one SLURM job array, via submitit.

fabench does not talk to SLURM itself: it hands the cells to `submitit
<https://github.com/facebookincubator/submitit>`_ (``pip install 'fabench[slurm]'``), which
writes the sbatch script, submits the array, pickles each cell to its array task and collects
logs and results under ``--slurm-folder`` (default ``<results-dir>/submitit/<array job id>``).

- Cells whose run_id already has a ``finished`` row in ``runs.csv`` are not submitted (unless
  ``--force``). Each array task runs one cell through :func:`fabench.tasks.cell_run.run_cell`, so
  results land in the same ``results/`` layout as a local grid (``runs.csv`` rows under
  fabench.train's file lock, one folder per run) and ``fabench table`` reads them unchanged.
  The results and data folders are passed to the jobs as absolute paths; they must be on a
  filesystem the compute nodes share with the submitting machine.
- ``--slurm-gpus-per-cell G``: each cell gets G GPUs on one node and runs as G SLURM tasks,
  one DistributedDataParallel process per GPU (``--batch-size`` stays the global batch).
  ``0`` runs CPU-only cells.
- By default the command returns once the array is submitted, printing its job id; rerun
  ``fabench grid TASK --dry-run`` to see which cells are done. ``--slurm-wait`` waits for the
  array and prints the usual grid summary.
- A cell that reaches ``--slurm-time`` or is preempted is requeued by submitit and resumes from
  its last epoch checkpoint (:mod:`fabench.tasks._submitit_job`).

The hidden ``--launcher submitit-local`` runs the same path through submitit's own local
executor (one process per cell on this machine, always waited for); the tests use it.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fabench.errors import FabenchError, unknown_choice
from fabench.tasks._spec import Cell, Task
from fabench.tasks.cell_run import CellOutcome, record_failure
from fabench.tasks.grid import GridSummary, cells_to_run

#: ``--launcher`` values; ``submitit-local`` is for tests and is not listed in ``--help``.
LAUNCHERS = ("local", "submitit", "submitit-local")
SUBMITIT_LAUNCHERS = ("submitit", "submitit-local")
INSTALL_HINT = "pip install 'fabench[slurm]'"
_TIME = re.compile(r"(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?")


@dataclass
class SlurmOptions:
    """How the array is submitted: SLURM resources per cell and submitit's folder."""

    partition: str | None = None
    time_min: int = 240
    gpus_per_cell: int = 1
    cpus_per_task: int | None = None
    array_parallelism: int = 16
    folder: Path = Path("results/submitit/%A")
    extra: dict[str, str] = field(default_factory=dict)
    wait: bool = False


def check_launcher(name: str) -> str:
    """``name`` if it is a launcher, else a FabenchError listing ``local`` and ``submitit``."""
    if name not in LAUNCHERS:
        raise unknown_choice("launcher", name, ("local", "submitit"))
    return name


def parse_slurm_time(text: str) -> int:
    """A SLURM time limit in whole minutes: ``240``, ``4:00:00``, ``1-00:00:00``, ``2-12``, ``90:00``.

    The forms are sbatch's own: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``.
    Seconds round up to the next minute.
    """
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise FabenchError(f"--slurm-time takes a SLURM time limit such as 240 (minutes), 4:00:00 or 1-00:00:00; got '{text}'")
    days, a, b, c = (int(v) if v is not None else None for v in match.group("days", "a", "b", "c"))
    if days is None:  # M | M:S | H:M:S
        seconds = a * 60 + (b or 0) if c is None else a * 3600 + b * 60 + c
    else:  # D-H | D-H:M | D-H:M:S
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if seconds <= 0:
        raise FabenchError(f"--slurm-time must be positive, got '{text}'")
    return -(-seconds // 60)


def parse_extra(items: list[str] | None) -> dict[str, str]:
    """``["account=abc", "qos=high"]`` -> ``{"account": "abc", "qos": "high"}`` (sbatch long options)."""
    extra = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key or not value.strip():
            raise FabenchError(f"--slurm-extra takes KEY=VALUE sbatch options such as account=myproj or qos=high; got '{item}'")
        extra[key] = value.strip()
    return extra


def import_submitit():
    """The submitit module, or one FabenchError saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise FabenchError(f"--launcher submitit needs the submitit package, which is not installed; {INSTALL_HINT}") from None
    return submitit


def make_executor(launcher: str, options: SlurmOptions, task_name: str):
    """A submitit executor for ``launcher`` with the cells' resources set."""
    submitit = import_submitit()
    cluster = "local" if launcher == "submitit-local" else "slurm"
    try:
        executor = submitit.AutoExecutor(folder=str(options.folder), cluster=cluster)
    except RuntimeError as err:  # submitit: 'Could not detect "srun", are you indeed on a slurm cluster?'
        raise FabenchError(f"--launcher submitit needs SLURM on this machine ({err}); run fabench grid on the "
                           "cluster's login node, or use --launcher local") from None
    tasks = max(1, options.gpus_per_cell)  # one process per GPU: a DDP run over the cell's GPUs
    parameters = {"name": f"fabench-{task_name}", "timeout_min": options.time_min, "nodes": 1,
                  "tasks_per_node": tasks, "gpus_per_node": options.gpus_per_cell,
                  "slurm_array_parallelism": options.array_parallelism}
    if tasks > 1:  # one failing rank ends the cell's other ranks instead of leaving them waiting
        parameters["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
    if options.cpus_per_task is not None:
        parameters["cpus_per_task"] = options.cpus_per_task
    if options.partition:
        parameters["slurm_partition"] = options.partition
    if options.extra:
        parameters["slurm_additional_parameters"] = dict(options.extra)
    executor.update_parameters(**parameters)
    return executor


def job_cell(cell: Cell, options: SlurmOptions) -> Cell:
    """The cell as a job runs it: absolute results/data folders, CUDA (not auto) when it has GPUs.

    Only placement fields change, none of which is part of the run_id.
    """
    config = cell.config
    placement = {"results_dir": str(Path(config.results_dir).resolve()), "data_dir": str(Path(config.data_dir).resolve())}
    if options.gpus_per_cell > 0 and config.device == "auto":
        placement["device"] = "cuda"  # fail loudly if the job landed on a node without a GPU
    return dataclasses.replace(cell, config=dataclasses.replace(config, **placement))


def _outcome(job, cell: Cell) -> CellOutcome:
    """A finished job's outcome; a job that died (killed, out of memory) is recorded as failed."""
    try:
        result = job.result()
    except Exception as err:  # the job itself failed: no outcome came back
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        error = f"job {job.job_id} failed: {lines[-1] if lines else type(err).__name__}"
        record_failure(cell, error)
        return CellOutcome(cell, "failed", error)
    return result if isinstance(result, CellOutcome) else CellOutcome(cell, "failed", f"job {job.job_id} returned no outcome")


def _wait(jobs: list, cells: list[Cell], local: bool) -> tuple[list[CellOutcome], bool]:
    """Wait for every job; return the outcomes and whether the wait was interrupted."""
    outcomes = []
    try:
        for job, cell in zip(jobs, cells, strict=True):
            outcome = _outcome(job, cell)
            outcomes.append(outcome)
            top1 = f" top1 {outcome.top1:.2f}%" if outcome.top1 is not None else ""
            error = f": {outcome.error}" if outcome.error else ""
            print(f"[{cell.run_id}] {cell.label}: {outcome.status}{top1}{error} (job {job.job_id})", file=sys.stderr)
    except KeyboardInterrupt:
        if local:
            for job in jobs:
                job.cancel(check=False)
        else:
            array_id = jobs[0].job_id.split("_")[0]
            print(f"fabench: stopped waiting; the array keeps running on the cluster (`scancel {array_id}` stops it)",
                  file=sys.stderr)
        return outcomes, True
    return outcomes, False


def submit_grid(task: Task, cells: list[Cell], results_dir: Path, options: SlurmOptions, *,
                launcher: str = "submitit", force: bool = False) -> GridSummary:
    """Submit the cells not yet finished as one job array; wait for it if asked (always for local).

    Prints what was submitted and, after waiting, the grid's summary line (stderr).
    """
    results_dir = Path(results_dir)
    todo = [job_cell(c, options) for c in cells_to_run(cells, results_dir, force)]
    summary = GridSummary(task.name, len(cells), len(cells) - len(todo))
    if not todo:
        print(f"{summary.line()}; nothing to submit", file=sys.stderr)
        return summary
    executor = make_executor(launcher, options, task.name)
    from fabench.tasks._submitit_job import CellJob  # imports submitit, checked by make_executor

    jobs = executor.map_array(CellJob(force=force), todo)
    array_id = jobs[0].job_id.split("_")[0]
    where = Path(str(options.folder).replace("%A", array_id).replace("%j", array_id))
    what = f"{len(todo)} local submitit jobs" if launcher == "submitit-local" else f"job array {array_id}"
    print(f"fabench: submitted {len(todo)} cell(s) of task {task.name} as {what} "
          f"({options.gpus_per_cell} GPU(s) per cell), {summary.skipped} already finished; logs in {where}",
          file=sys.stderr)
    local = launcher == "submitit-local"
    if not (options.wait or local):
        print(f"fabench: follow it with `squeue -j {array_id}` or `fabench grid {task.name} --dry-run`; "
              f"results land in {results_dir}", file=sys.stderr)
        return summary
    summary.outcomes, summary.interrupted = _wait(jobs, todo, local)
    print(summary.line(), file=sys.stderr)
    return summary
