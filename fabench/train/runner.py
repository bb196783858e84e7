"""``run(config)``: one training run, end to end, with skip, resume and clean failure.

1. Resolve the config (the recipe, the precision: :mod:`fabench.train.recipes`), check
   everything (names, values, device, results folder) and build data, model, rule, optimizer:
   any problem is a :class:`FabenchError` and nothing has been written.
2. An identical finished run (same ``run_id``, status ``finished``) is skipped unless
   ``force``; its runs.csv row is restored if missing.
3. Otherwise the run folder is created and locked against a second process running the same
   run. An unfinished (running, interrupted, failed) run with a checkpoint resumes from it;
   ``force``, a diverged run or no checkpoint start from scratch. A checkpoint whose checksum
   does not match the manifest's is refused (``force`` starts over).
4. Epochs run (:mod:`fabench.train.epochs`); the result is recorded as ``finished``,
   ``diverged`` (non-finite loss: a result, not a crash) or ``interrupted`` (Ctrl-C/SIGTERM,
   resumable). Any other exception is recorded as ``failed`` and re-raised. A full disk or a
   refused write is one line (:func:`fabench.train.records.disk_errors`), and a run folder the
   failed attempt created and left empty is removed.

``run`` draws nothing; progress goes to ``on_event`` (see :mod:`fabench.train.display`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fabench.errors import FabenchError
from fabench.train import parallel
from fabench.train.checkpoint import Progress, load_checkpoint, restore_training
from fabench.train.config import RunConfig
from fabench.train.device import numerics
from fabench.train.epochs import Emit, call_hooks, run_epochs
from fabench.train.hooks import EpochHook
from fabench.train.interrupt import StopRun
from fabench.train.parallel import Strategy
from fabench.train.recipes import decide_precision, pin_precision, resolve
from fabench.train.records import (
    CHECKPOINT,
    CURVES,
    RECORD,
    RUN_LOCK,
    TASK_NAME,
    check_writable_file,
    check_writable_folder,
    disk_errors,
    load_manifest,
)
from fabench.train.run_index import INDEX_LOCK, INDEX_STATE
from fabench.train.run_record import RunRecords, manifest_row
from fabench.train.runs_csv import RUNS_CSV, upsert_run_row
from fabench.train.schema import DONE_STATUSES
from fabench.train.session import Session, build_session, preflight
from fabench.train.trackers import require_trackers

#: Statuses from which a run continues from its checkpoint rather than starting again
#: ("running": the process died; "failed": an exception, e.g. out of memory, after the last
#: checkpoint). A diverged run starts again: its checkpoint would only lead to the same NaN.
RESUMABLE = ("running", "interrupted", "failed")


@dataclass
class RunResult:
    """What became of a run: its status, folder and runs.csv row; ``skipped`` if already done."""

    status: str
    run_dir: Path
    row: dict
    skipped: bool = False


def run_dir_of(config: RunConfig) -> Path:
    return Path(config.results_dir) / config.task / config.run_id


def _finished_manifest(run_dir: Path, run_id: str) -> dict | None:
    """The folder's manifest if it records this run as done; one line if it belongs to another run."""
    manifest = load_manifest(run_dir)
    if manifest is not None and manifest["run_id"] != run_id:
        raise FabenchError(f"{run_dir} holds the records of run {manifest['run_id']}, not {run_id}; move it aside "
                           "or rerun with --force")
    return manifest if manifest and manifest["status"] in DONE_STATUSES else None


def check_writable(run_dir: Path, results_dir: Path) -> None:
    """Fail before training, in one line, where the run's records could not be written afterwards."""
    check_writable_folder(run_dir, "run folder")
    for path in (results_dir / RUNS_CSV, results_dir / INDEX_LOCK, results_dir / INDEX_STATE, run_dir / CURVES,
                 run_dir / RECORD):
        check_writable_file(path, "results file")


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its ancestors that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path.parent != path:
        missing.append(path)
        path = path.parent
    return missing


@contextlib.contextmanager
def _remove_if_left_empty(folders: list[Path]):
    """Remove the ``folders`` (deepest first) that are still empty when the block fails."""
    try:
        yield
    except BaseException:
        for folder in folders:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _skip(manifest: dict, config: RunConfig, run_dir: Path, strategy: Strategy, emit: Emit) -> RunResult:
    """Report an identical finished run instead of rerunning it; make sure its row exists."""
    row = manifest_row(manifest)
    strategy.on_main(upsert_run_row, Path(config.results_dir), row)
    emit({"kind": "end", "run_id": config.run_id, "status": manifest["status"], "skipped": True, "row": row,
          "run_dir": str(run_dir), "message": f"[{config.run_id}] already finished in {run_dir}; --force reruns it"})
    return RunResult(manifest["status"], run_dir, row, skipped=True)


def _start_or_resume(session: Session, records: RunRecords, run_dir: Path, force: bool) -> tuple[Progress, bool]:
    """Progress from the run's checkpoint if it should resume, else a clean folder and fresh Progress."""
    manifest = None if force else load_manifest(run_dir)
    resumable = manifest is None or manifest["status"] in RESUMABLE
    if session.strategy.agree(not force and resumable and (run_dir / CHECKPOINT).is_file()):
        digests = manifest.get("checkpoint_sha256") if manifest else None
        payload = load_checkpoint(run_dir / CHECKPOINT, session.config.run_id, digests)
        t = session.trainer
        progress = restore_training(payload, model=session.model, optimizer=t.optimizer, scheduler=t.scheduler,
                                    scaler=t.scaler, data_generator=session.generator)
        session.strategy.check_replicas(session, "after loading the checkpoint")
        return progress, True
    records.clear()
    return Progress(), False


def _train(session: Session, run_dir: Path, force: bool, emit: Emit, hooks: list[EpochHook]) -> RunResult:
    """Steps 3-4 for a built session, inside the run folder's lock."""
    config, strategy = session.config, session.strategy
    records = strategy.records(session, run_dir)
    progress, resumed = _start_or_resume(session, records, run_dir, force)
    records.begin(progress, resumed)
    emit({"kind": "start", "run_id": config.run_id, "task": config.task, "rule": config.rule, "arch": config.arch,
          "dataset": config.dataset, "seed": config.seed, "epochs": config.epochs, "start_epoch": progress.epoch,
          "start_step": progress.step_in_epoch, "steps_per_epoch": session.data.steps_per_epoch,
          "device": str(session.device), "run_dir": str(run_dir), "resumed": resumed,
          "recipe": session.recipe.header()})
    with strategy.stop_on_signals(session.device) as stop:
        try:
            if not resumed:
                session.handle.begin_training(session.data.steps_per_epoch)  # e.g. wm's first mirror sweep
                call_hooks(hooks, session, records, progress)
            status, error = run_epochs(session, progress, records, stop, emit, hooks)
        except StopRun as early:  # an observer ended the run at an epoch's end (tuning's pruner)
            status, error = early.status, early.reason
        except Exception as err:
            records.finish("failed", progress, f"{type(err).__name__}: {err}"[:500])
            raise
        row = records.finish(status, progress, error)
    message = f"[{config.run_id}] {status}" + (f": {error}" if error else "") + f"; records in {run_dir}"
    if status == "interrupted":
        message += "; rerun the same command to resume"
    emit({"kind": "end", "run_id": config.run_id, "status": status, "skipped": False, "row": row,
          "run_dir": str(run_dir), "message": message})
    return RunResult(status, run_dir, row)


def run(config: RunConfig, *, force: bool = False, on_event: Emit | None = None,
        hooks: Sequence[EpochHook] = ()) -> RunResult:
    """Train one run described by ``config`` and record it under ``config.results_dir``.

    ``hooks`` are called at step 0, after each epoch and, for hooks with ``every_steps``, every
    that-many steps (:mod:`fabench.train.hooks`); the CLI passes the diagnostics probe here.
    """
    config = dataclasses.replace(config)
    strategy = parallel.join(config)  # several processes (torchrun, srun): DDP; else one process
    emit = strategy.emitter(on_event)
    if not TASK_NAME.fullmatch(config.task):
        raise FabenchError(f"task name '{config.task}' must be letters, digits, '.', '_' or '-' (it names a folder)")
    precision = strategy.agree(decide_precision(config))  # rank 0 decides --amp auto for every process
    resolution = resolve(pin_precision(config, precision))  # the recipe fills what the user left unset
    config = resolution.config
    device = preflight(config)
    require_trackers(config.log)
    run_dir = run_dir_of(config)
    check_writable(run_dir, Path(config.results_dir))
    if not force and (done := strategy.agree(_finished_manifest(run_dir, config.run_id))):
        with disk_errors(Path(config.results_dir)):
            return _skip(done, config, run_dir, strategy, emit)
    with numerics(config.deterministic):
        session = strategy.prepare(build_session(config, device, resolution, strategy))
        with disk_errors(Path(config.results_dir)), _remove_if_left_empty(_missing_folders(run_dir)):
            run_dir.mkdir(parents=True, exist_ok=True)
            return _train_locked(session, run_dir, force, emit, list(hooks))


def _train_locked(session: Session, run_dir: Path, force: bool, emit: Emit, hooks: list[EpochHook]) -> RunResult:
    """Steps 2-4 inside the run folder's lock (the finished check again: another process may have just finished)."""
    config, strategy = session.config, session.strategy
    with strategy.lock(run_dir / RUN_LOCK) as mine:
        if not mine:
            raise FabenchError(f"run {config.run_id} is being trained by another process ({run_dir})")
        if not force and (done := strategy.agree(_finished_manifest(run_dir, config.run_id))):
            return _skip(done, config, run_dir, strategy, emit)
        return _train(session, run_dir, force, emit, hooks)
