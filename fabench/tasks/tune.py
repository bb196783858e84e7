"""``fabench tune``: every cell's settings searched with the same budget, on validation images.

One Optuna study per tuning cell (rule x arch x dataset x variant; the task's seeds are not
searched over): a TPE sampler, a Hyperband pruner on each epoch's validation top-1, and the
task's ``tune:`` space (:mod:`fabench.tasks._tune_spec`). Each trial is a real
:func:`fabench.train.run` on the task's settings with the trial's values, trained for the
tuning epochs on the training images less a held-out validation split, once per tuning seed,
and recorded under ``RESULTS/tune/`` like any run. A trial scores the validation top-1 of its
final epoch on its worst seed, and a run that ends unstable, at chance or diverged scores 0,
so the search never picks a setting at the edge of stability for one lucky seed or epoch.
The pruner watches the first seed's epochs and never stops a trial in its first third
(:func:`grace_epochs`). The cell's own settings (its recipe) are always its first trial.

The studies live in ``RESULTS/tune/TASK.db`` (SQLite; readable with Optuna's own tools), or in
the storage ``--storage`` names (an SQLAlchemy URL, or ``journal:PATH`` for Optuna's journal
file, which works on shared file systems). A trial whose process was killed is failed and its
settings queued again when tuning is next started, so its run resumes from its checkpoint and
the budget is met exactly: ``trials`` counts completed and pruned trials and trials that failed
on their own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from fabench._allocator import keep_freed_memory
from fabench.errors import FabenchError
from fabench.tasks._spec import Cell, Task
from fabench.tasks._tune_spec import Param, TuneSpec

#: Results sub-folder of the trials' runs and of the default study database.
TUNE_FOLDER = "tune"
#: Trial user attribute: the run id of the trial's run (to find its folder lock).
RUN_ID_ATTR = "run_id"
#: Trial user attribute of a trial stopped from outside (Ctrl-C, kill -9): queued again, not counted.
RETRY_ATTR = "retry"


@dataclass(frozen=True)
class TuneJob:
    """Some trials of one study, for one worker process."""

    storage: str
    study: str
    cell: Cell
    params: tuple[Param, ...]
    spec: TuneSpec
    results_dir: str
    trials: int
    #: which of the study's concurrent jobs this is (each samples with its own seed)
    index: int = 0


def study_name(task: Task, cell: Cell) -> str:
    """The study of a tuning cell: ``TASK/arch/rule/dataset`` (``/variant``)."""
    parts = [task.name, cell.arch, cell.rule, cell.dataset]
    return "/".join([*parts, cell.variant] if cell.variant else parts)


def trial_results_dir(results_dir: str | Path) -> Path:
    """The results folder of the trials' runs (and of the default study database)."""
    return Path(results_dir) / TUNE_FOLDER


def tuning_cells(cells: list[Cell]) -> list[Cell]:
    """One cell per rule x arch x dataset x variant (the first seed's), in grid order."""
    seen, out = set(), []
    for cell in cells:
        key = (cell.rule, cell.arch, cell.dataset, cell.variant)
        if key not in seen:
            seen.add(key)
            out.append(cell)
    return out


def storage_url(results_dir: Path, task: Task, given: str | None) -> str:
    """The study storage: ``given``, or an SQLite file under ``RESULTS/tune/``."""
    if given:
        return given
    folder = trial_results_dir(results_dir).resolve()
    return f"sqlite:///{folder / (task.name + '.db')}"


def open_storage(url: str, *, create: bool = True):
    """An Optuna storage for ``url`` (``journal:PATH`` for a journal file); with ``create`` False a
    study file that does not exist yet is an error instead of a new empty file."""
    import optuna

    local = url.removeprefix("journal:") if url.startswith("journal:") else url.removeprefix("sqlite:///")
    if local != url and not create and not Path(local).is_file():
        raise FabenchError(f"no tuning studies at {local}; run `fabench tune` on the task first")
    if local != url:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(local))
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # an unreachable or malformed URL
        raise FabenchError(f"--storage {url}: cannot open it ({type(err).__name__}: {str(err).splitlines()[0]})") from None


def cell_params(spec: TuneSpec, cell: Cell) -> tuple[Param, ...]:
    """The cell's search space: shared settings plus its rule family's own."""
    from fabench.rules import rule_family

    return spec.params_for(rule_family(cell.rule), cell.rule)


def _base_values(cell: Cell, params: tuple[Param, ...]) -> dict:
    """The cell's own (recipe-resolved) value of each searched setting."""
    resolved = cell.config.resolved()
    values = {p.name: getattr(resolved, p.name) for p in params}
    for p in params:
        if p.relative and not (isinstance(values[p.name], (int, float)) and values[p.name] > 0):
            raise FabenchError(f"tune: '{p.name}: {{scale: ...}}' needs a positive value of {p.name} for "
                               f"{cell.label}, which has {values[p.name]!r}; give {{low, high}} instead")
    return values


def trial_config(cell: Cell, spec: TuneSpec, values: dict, results_dir: str, seed: int):
    """The RunConfig of one seed of a trial: the cell's settings, the trial's values, the protocol."""
    config = dataclasses.replace(
        cell.config, **values, seed=seed, epochs=spec.epochs or cell.config.epochs,
        val_split=spec.val_split, results_dir=str(trial_results_dir(results_dir)), progress=False,
        diagnostics="off")
    return config.validate()


def _objective(job: TuneJob, base: dict):
    """The Optuna objective of ``job``'s study: one real run, pruned on validation top-1."""
    import optuna

    from fabench.train import run
    from fabench.train.interrupt import StopRun

    def on_event(trial):
        def report(event: dict) -> None:
            if event.get("kind") == "epoch" and "val_top1" in event:
                trial.report(event["val_top1"], event["epoch"])
                if trial.should_prune():
                    raise StopRun("pruned", f"pruned by tuning after epoch {event['epoch']} (validation top-1 "
                                            f"{event['val_top1']:.2f}%)")
        return report

    def objective(trial) -> float:
        values = {p.name: p.suggest(trial, base[p.name]) for p in job.params}
        scores = []
        for seed in job.spec.trial_seeds:
            config = trial_config(job.cell, job.spec, values, job.results_dir, seed)
            trial.set_user_attr(RUN_ID_ATTR, config.run_id)
            first = seed == job.spec.seed
            result = run(config, on_event=on_event(trial) if first else None)
            if result.status == "pruned":
                raise optuna.TrialPruned()
            if result.status == "interrupted":
                trial.set_user_attr(RETRY_ATTR, True)
                trial.study.enqueue_trial(trial.params, skip_if_exists=False)
                raise KeyboardInterrupt
            trial.set_user_attr(f"status_seed{seed}", result.status)
            if result.status != "finished":
                return 0.0  # diverged, unstable or at chance: the search moves away from it
            scores.append(final_val_top1(Path(result.run_dir)))
        return min(scores)
    return objective


def final_val_top1(run_dir: Path) -> float:
    """The validation top-1 of a run's last epoch, from its curves.csv."""
    import csv

    with (run_dir / "curves.csv").open(newline="", encoding="utf-8") as handle:
        values = [(int(r["epoch"]), float(r["value"])) for r in csv.DictReader(handle)
                  if (r["split"], r["metric"]) == ("val", "top1")]
    if not values:
        raise FabenchError(f"tune: the run in {run_dir} logged no validation accuracy")
    return max(values)[1]


def _spent(study) -> int:
    """Trials that count against the budget: completed, pruned, failed on their own, running."""
    from optuna.trial import TrialState

    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(t.state in counted or (t.state == TrialState.FAIL and not t.user_attrs.get(RETRY_ATTR))
               for t in study.get_trials(deepcopy=False))


def _print_trial(job: TuneJob, trial) -> None:
    """One line per trial this process finished."""
    settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    if trial.state.name == "COMPLETE":
        score = f"val {trial.value:.2f}%"
    elif trial.state.name == "PRUNED":
        score = f"pruned after epoch {trial.last_step}"
    else:
        score = trial.state.name.lower()
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    print(f"[tune {job.study}] trial {trial.number}: {score} ({settings}) {seconds:.0f}s", flush=True)


def run_job(job: TuneJob) -> None:
    """Run ``job.trials`` trials of its study (in a worker process, or in this one)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=job.study, storage=open_storage(job.storage),
                              sampler=_sampler(job), pruner=_pruner(job))
    objective = _objective(job, base=_base_values(job.cell, job.params))
    for _ in range(job.trials):
        with _ask_lock(job):
            trial = study.ask()
        _run_trial(study, trial, objective)
        _print_trial(job, study.get_trials(deepcopy=False)[trial.number])


def _ask_lock(job: TuneJob):
    """A lock around taking a study's next trial, shared by the processes tuning it.

    A queued trial (the recipe, or a killed one queued again) must go to exactly one process;
    SQLite cannot promise that to two processes asking at once, so they ask in turn. Other
    storages (a database server, Optuna's journal file) hand out queued trials atomically."""
    import contextlib

    from fabench.train.records import file_lock

    if not job.storage.startswith("sqlite:///"):
        return contextlib.nullcontext()
    database = Path(job.storage.removeprefix("sqlite:///"))
    return file_lock(database.with_name(f".{database.name}.ask.lock"))


def _run_trial(study, trial, objective) -> None:
    """Run one asked trial and tell the study how it ended (pruned, its score, or failed)."""
    import optuna
    from optuna.trial import TrialState

    try:
        value = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        study.tell(trial, value)


def _sampler(job: TuneJob):
    import optuna

    startup = min(10, max(3, job.spec.trials // 3))
    digest = hashlib.blake2b(f"{job.study}#{job.index}".encode(), digest_size=4).digest()
    return optuna.samplers.TPESampler(n_startup_trials=startup, seed=int.from_bytes(digest, "little"))


def _pruner(job: TuneJob):
    import optuna

    epochs = max(job.spec.epochs or job.cell.config.epochs, 1)
    return optuna.pruners.HyperbandPruner(min_resource=grace_epochs(epochs), max_resource=epochs, reduction_factor=3)


def grace_epochs(epochs: int) -> int:
    """Epochs every trial trains before the pruner may stop it: a third of the trial.

    Rules with random feedback first align their weights with it, and their validation accuracy
    stays near chance meanwhile; a trial stopped on its first epoch would be judged on that
    plateau, not on the rate it was given.
    """
    return max(1, epochs // 3)


def prepare_study(storage_url_: str, name: str, cell: Cell, params: tuple[Param, ...]):
    """Create the study if new (the cell's own settings queued as its first trial); fail and
    queue again the trials a killed process left running."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url_)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    if not study.trials:
        base = _base_values(cell, params)
        prior = dict(p for p in (param.prior(base[param.name]) for param in params) if p is not None)
        study.enqueue_trial(prior)
        study.set_user_attr("space", [p.describe() for p in params])
    _recover_stale(study, storage, cell)
    return study


def _recover_stale(study, storage, cell: Cell) -> None:
    """Running trials whose run folder nobody holds were killed: fail them, queue them again."""
    from optuna.trial import TrialState

    from fabench.tasks.cell_run import run_dir_busy

    results = trial_results_dir(cell.config.results_dir) / cell.config.task
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id and run_dir_busy(results / run_id):
            continue
        storage.set_trial_user_attr(trial._trial_id, RETRY_ATTR, True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)


def plan_jobs(task: Task, cells: list[Cell], spec: TuneSpec, results_dir: Path, storage: str,
              workers: int) -> list[TuneJob]:
    """Create or resume each cell's study; split the trials still owed among the workers."""
    jobs = []
    for cell in tuning_cells(cells):
        name = study_name(task, cell)
        params = cell_params(spec, cell)
        if not params:
            raise FabenchError(f"tune: the search space of {cell.label} is empty; add 'tune.space' to the task")
        study = prepare_study(storage, name, cell, params)
        owed = max(0, spec.trials - _spent(study))
        shares = [owed // workers + (i < owed % workers) for i in range(max(1, workers))]
        jobs += [TuneJob(storage, name, cell, params, spec, str(results_dir), n, i) for i, n in enumerate(shares) if n]
    return jobs


def describe(task: Task, cells: list[Cell], spec: TuneSpec) -> list[str]:
    """The protocol in words: budget and space per cell (printed before a search)."""
    epochs = spec.epochs or cells[0].config.epochs
    seeds = ", ".join(map(str, spec.trial_seeds))
    lines = [f"tune {task.name}: {len(tuning_cells(cells))} cells, each {spec.trials} trials x {spec.seeds} seed(s) x "
             f"{epochs} epochs (the same budget for every rule; pruning from epoch {grace_epochs(max(epochs, 1))}), scored on {spec.val_split} held-out validation "
             f"images, seed(s) {seeds} (worst seed counts)"]
    for cell in tuning_cells(cells):
        params = cell_params(spec, cell)
        _base_values(cell, params)  # a range around a value the cell does not have is refused here
        space = "; ".join(p.describe() for p in params)
        lines.append(f"  {study_name(task, cell)}: {space}")
    return lines


def _set_threads(threads: int) -> None:
    """A worker's share of the cores, set before torch loads."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    keep_freed_memory()


def run_jobs(jobs: list[TuneJob], workers: int) -> None:
    """Run the jobs: here (``workers`` <= 1) or in that many spawned processes."""
    if workers <= 1:
        for job in jobs:
            run_job(job)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_set_threads, initargs=(threads,)) as pool:
        for future in [pool.submit(run_job, job) for job in jobs]:
            future.result()


@dataclass(frozen=True)
class TunedSettings:
    """A cell's best trial: its values, validation score and the trials spent."""

    study: str
    trial: int
    values: dict
    val_top1: float
    trials: dict


def best_settings(storage: str, task: Task, cell: Cell, spec: TuneSpec) -> TunedSettings | None:
    """The best completed trial of the cell's study, as run settings; None before tuning."""
    import optuna
    from optuna.trial import TrialState

    name = study_name(task, cell)
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage, create=False))
    except KeyError:
        return None
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    best = max(complete, key=lambda t: (t.value, -t.number))
    params = cell_params(spec, cell)
    base = _base_values(cell, params)
    values = {p.name: _value_of(p, best.params, base) for p in params}
    counts = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    return TunedSettings(name, best.number, values, float(best.value), counts)


def _value_of(param: Param, trial_params: dict, base: dict):
    """A setting's value in a trial's Optuna parameters."""
    if param.relative:
        return base[param.name] * trial_params[param.name + "_scale"]
    return trial_params.get(param.name, base[param.name])


def tuned_cells(cells: list[Cell], task: Task, spec: TuneSpec, storage: str) -> list[Cell]:
    """The cells with their tuned settings (``grid --tuned``); FabenchError for an untuned cell."""
    out, best_of = [], {}
    for cell in cells:
        name = study_name(task, cell)  # the task's seeds of one cell share its study: read it once
        if name not in best_of:
            best_of[name] = best_settings(storage, task, cell, spec)
        best = best_of[name]
        if best is None:
            raise FabenchError(f"cell {cell.label} has no tuned settings in {storage}; run `fabench tune {task.name}` first")
        config = dataclasses.replace(cell.config, **best.values, tuned=f"{best.study}#{best.trial}").validate()
        out.append(dataclasses.replace(cell, config=config))
    return out


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return str(value)
