"""What a SLURM array task (or submitit's local stand-in) runs: one grid cell.

This module imports submitit at import time, so it is imported only after
:func:`fabench.tasks.submit.import_submitit` has checked that the package is there. The job's
callable is pickled by reference to :class:`CellJob`, which the job process imports again.

A cell with ``gpus_per_cell > 1`` is one DistributedDataParallel run over that many SLURM tasks
(one process per GPU): each task turns submitit's job environment into the variables
``torch.distributed`` reads (``MASTER_ADDR``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...) and
:func:`fabench.train.run` joins the process group. Rank 0 runs the cell through the grid's
:func:`fabench.tasks.cell_run.run_cell` (which records a failure the way local workers do); the
other ranks train alongside it and write nothing.

Timeouts and preemption: submitit sends the job USR2 before SLURM's time limit and calls
:meth:`CellJob.checkpoint`, which requeues the same cell; the requeued job resumes from the run's
last checkpoint (``last.pt``, written at every epoch's end). ``force`` is dropped on requeue so
that the resumed job continues instead of starting again.
"""

from __future__ import annotations

import submitit

from fabench._allocator import keep_freed_memory
from fabench.tasks._spec import Cell
from fabench.tasks.cell_run import CellOutcome, busy_elsewhere, run_cell


def _export_distributed_env() -> int:
    """Export torch.distributed's variables from the SLURM job if it has several tasks; return the rank."""
    job = submitit.JobEnvironment()
    if job.num_tasks > 1:
        # Each task keeps every GPU of its node visible; fabench picks cuda:LOCAL_RANK.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return job.global_rank


def _log_event(event: dict) -> None:
    """Progress as plain lines in the job's log (epoch lines, the end message and summary)."""
    from fabench.train.display import RunDisplay

    RunDisplay(live=False)(event)


class CellJob(submitit.helpers.Checkpointable):
    """Run one cell; picklable; requeued by submitit (without ``force``) on timeout or preemption."""

    def __init__(self, force: bool = False) -> None:
        self.force = force

    def __call__(self, cell: Cell) -> CellOutcome | None:
        """Train ``cell`` in this task; rank 0 returns its outcome, other ranks None."""
        keep_freed_memory()
        rank = _export_distributed_env()
        if rank == 0:
            return run_cell(cell, force=self.force, on_event=_log_event)
        if busy_elsewhere(cell):  # rank 0 sees the same lock and skips the cell too
            return None
        from fabench.diagnostics import run_hooks
        from fabench.train import run

        run(cell.config, force=self.force, hooks=run_hooks(cell.config))
        return None

    def checkpoint(self, cell: Cell) -> submitit.helpers.DelayedSubmission:
        """Requeue the same cell; it resumes from its last checkpoint (never from scratch)."""
        return submitit.helpers.DelayedSubmission(CellJob(force=False), cell)
