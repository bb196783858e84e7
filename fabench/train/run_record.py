"""One run's folder as it is being written: manifest, curves, checkpoint, and its record (the
runs.csv row, :mod:`fabench.train.run_index`); with ``--log``, its trackers
(:mod:`fabench.train.trackers`) get every curve row at each checkpoint.

:class:`RunRecords` is the only writer of ``results/<task>/<run_id>/``. It creates nothing
until :meth:`RunRecords.begin`, which the run calls only after every input has been checked
and the model and data have been built.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from fabench.train import schema
from fabench.train.checkpoint import Progress, save_checkpoint
from fabench.train.config import SUBSET_SEED
from fabench.train.curves import CurveWriter
from fabench.train.device import describe_device
from fabench.train.provenance import git_commit, now, package_versions
from fabench.train.records import (
    CHECKPOINT,
    CURVES,
    MANIFEST,
    RECORD,
    RUN_ID,
    TASK_NAME,
    load_manifest,
    manifest_problem,
    read_manifest,
    write_manifest,
)
from fabench.train.run_index import RUNS_CSV, row_fields, write_record
from fabench.train.runs_csv import read_runs, upsert_run_row
from fabench.train.trackers import TRACKER_STATE, RunTrackers, TrackedCurves

if TYPE_CHECKING:  # the session is built by fabench.train.session, which needs nothing here
    from fabench.train.session import Session

#: Per-epoch values written to curves.csv: (key in the history entry, split, metric).
EPOCH_CURVES = (
    ("train_loss", "train", "loss"), ("train_top1", "train", "top1"), ("lr", "train", "lr"),
    ("images_per_s", "train", "images_per_s"), ("epoch_time_s", "train", "epoch_time_s"),
    ("test_top1", "test", "top1"), ("test_top5", "test", "top5"), ("test_loss", "test", "loss"),
    ("val_top1", "val", "top1"), ("val_loss", "val", "loss"),
)


def result_metrics(status: str, progress: Progress) -> dict:
    """The runs.csv metric columns from a run's per-epoch history.

    ``best_*`` describe the epoch with the highest test top-1 (top-5 at that same epoch).
    A diverged run has no final accuracy: its last weights are not finite.
    """
    history = progress.history
    metrics = {"status": status, "epochs_done": len(history), "train_time_s": round(progress.train_time_s, 3)}
    if progress.train_time_s > 0:
        metrics["images_per_s"] = round(progress.train_images / progress.train_time_s, 1)
    if history:
        best = max(history, key=lambda e: e["test_top1"])
        metrics.update(best_top1=best["test_top1"], best_top5=best["test_top5"], best_epoch=best["epoch"])
        if "val_top1" in history[0]:  # the first epoch of the best validation accuracy (BioTorch keeps that model)
            best_val = max(history, key=lambda e: e["val_top1"])
            metrics.update(best_val_top1=best_val["val_top1"], best_val_epoch=best_val["epoch"],
                           test_top1_at_best_val=best_val["test_top1"])
        metrics["first_train_loss"] = history[0]["train_loss"]
        if status != "diverged":
            last = history[-1]
            metrics.update(final_top1=last["test_top1"], final_top5=last["test_top5"],
                           final_test_loss=last["test_loss"], final_train_loss=last["train_loss"])
    return metrics


class RunRecords:
    """Writes one run's manifest, curves, checkpoint and record; feeds its trackers."""

    def __init__(self, session: Session, run_dir: Path) -> None:
        self.session = session
        self.config = session.config
        self.run_dir = run_dir
        self.trackers = None
        self.curves = CurveWriter(run_dir / CURVES, self.config.run_id)
        if self.config.log:  # --log: the trackers get every curve row
            self.trackers = RunTrackers(self.config.log, run_dir, self.config.to_dict(), self.config.run_id)
            self.curves = TrackedCurves(run_dir / CURVES, self.config.run_id, self.trackers)
        self.manifest: dict = {}

    def _fresh_manifest(self) -> dict:
        s, c = self.session, self.config
        return {
            "run_id": c.run_id, "status": "running", "config": c.to_dict(),
            "seeds": {"model_init": c.seed, "feedback": c.seed, "data_order": c.seed, "subset": SUBSET_SEED},
            "arch_source": s.arch_source, "num_params": s.num_params, "rule": s.handle.describe(),
            "recipe": s.recipe.describe(),
            "precision": {"amp": c.amp, "channels_last": c.channels_last, "reason": c.precision_reason},
            "data": s.data.summary(),
            "device": describe_device(s.device), "versions": package_versions(), "git_commit": git_commit(),
            "steps_per_epoch": s.data.steps_per_epoch,
            "timings": {"started_at": now(), "finished_at": "", "train_time_s": 0.0, "images_per_s": None},
            "progress": {}, "result": {}, "error": "", "resumed_at": [], "evaluations": [],
            "checkpoint_sha256": [],
        }

    def clear(self) -> None:
        """Remove an earlier attempt's manifest, curves and checkpoint (a run starting afresh).

        A finished run's runs.csv row is marked ``interrupted`` first, so that from the moment
        its files start to go, nothing (a grid above all) takes the run for done; the manifest
        goes first, so an attempt killed half-way is never skipped as finished without its files.
        """
        previous = read_manifest(self.run_dir)
        if previous and previous.get("status") in schema.DONE_STATUSES:
            upsert_run_row(Path(self.config.results_dir), self._restart_row())
        for name in (MANIFEST, CURVES, CHECKPOINT, TRACKER_STATE):
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / name).unlink()

    def _restart_row(self) -> dict:
        """The runs.csv row of a run that is starting again from scratch (``--force``)."""
        manifest = {**self._fresh_manifest(), "result": result_metrics("interrupted", Progress()),
                    "error": "rerun from scratch (--force) started; not finished"}
        return manifest_row(manifest)

    def begin(self, progress: Progress, resumed: bool) -> None:
        """Create the folder's records: a fresh manifest, or the old one marked as resumed."""
        previous = load_manifest(self.run_dir) if resumed else None
        self.manifest = self._fresh_manifest()
        if previous:
            self.manifest["timings"]["started_at"] = previous["timings"].get("started_at", now())
            self.manifest["resumed_at"] = [*previous.get("resumed_at", []), {
                "at": now(), "epoch": progress.epoch, "step": progress.global_step}]
            self.manifest["checkpoint_sha256"] = previous.get("checkpoint_sha256", [])
            self.curves.truncate_after(progress.global_step)
        self._write(progress, "running")
        if self.trackers:
            self.trackers.start(self.run_dir / CURVES, resumed)

    def _write(self, progress: Progress, status: str, error: str = "") -> None:
        self.manifest.update(status=status, error=error, result=result_metrics(status, progress))
        self.manifest["progress"] = {"epochs_done": progress.epoch, "step_in_epoch": progress.step_in_epoch,
                                     "global_step": progress.global_step}
        self.manifest["timings"].update(train_time_s=round(progress.train_time_s, 3),
                                        images_per_s=self.manifest["result"].get("images_per_s"))
        write_manifest(self.run_dir, self.manifest)

    def log_epoch(self, entry: dict) -> None:
        for key, split, metric in EPOCH_CURVES:
            if key in entry:
                self.curves.log(entry["epoch"], entry["step"], split, metric, entry[key])

    def checkpoint(self, progress: Progress) -> None:
        """Flush curves, save ``last.pt`` atomically, then record progress and its checksum in the manifest.

        While the new file is moved into place the manifest accepts both checksums, the new and the
        old, so a process killed at any moment leaves a checkpoint its manifest accepts.
        """
        s = self.session
        self.curves.flush()
        digest = save_checkpoint(self.run_dir / CHECKPOINT, run_id=self.config.run_id, model=s.model,
                                 optimizer=s.trainer.optimizer, scheduler=s.trainer.scheduler,
                                 scaler=s.trainer.scaler, progress=progress, data_generator=s.generator,
                                 before_replace=self._accept_checkpoint)
        self.manifest["checkpoint_sha256"] = [digest]
        self._write(progress, "running")
        if self.trackers:  # the trackers hold what the checkpoint holds
            self.trackers.send()

    def _accept_checkpoint(self, digest: str) -> None:
        """Let the manifest accept the checkpoint about to replace ``last.pt`` as well as the current one."""
        self.manifest["checkpoint_sha256"] = [digest, *self.manifest.get("checkpoint_sha256", [])]
        write_manifest(self.run_dir, self.manifest)

    def finish(self, status: str, progress: Progress, error: str = "") -> dict:
        """Final manifest and the run's runs.csv row (replacing any older row of this run)."""
        self.curves.close()
        self.manifest["timings"]["finished_at"] = now()
        self._write(progress, status, error)
        if self.trackers:  # a run that will resume sends the rest when it does
            self.trackers.close(status, send=status not in ("interrupted", "failed"))
        row = self.row()
        upsert_run_row(Path(self.config.results_dir), row)
        return row

    def row(self) -> dict:
        """This run's runs.csv row, built from the manifest."""
        return manifest_row(self.manifest)


def manifest_row(manifest: dict) -> dict:
    """A runs.csv row from a run's manifest (also used to restore a row of a skipped run)."""
    versions = manifest.get("versions", {})
    provenance = {
        "arch_source": manifest.get("arch_source", ""), "num_params": manifest.get("num_params", ""),
        "feedback_form": manifest.get("rule", {}).get("feedback_form", ""), "device": manifest.get("device", ""),
        "fabench_version": versions.get("fabench", ""), "torch_version": versions.get("torch", ""),
        "timm_version": versions.get("timm", ""), "git_commit": manifest.get("git_commit", ""),
        "started_at": manifest["timings"].get("started_at", ""),
        "finished_at": manifest["timings"].get("finished_at", ""), "error": manifest.get("error", ""),
    }
    config = {**manifest["config"], "run_id": manifest["run_id"]}
    return schema.make_row(config, manifest.get("result", {}), provenance)


def record_earlier_runs(results_dir: Path) -> int:
    """Give each run folder of an earlier release (a manifest, no record) its record; return how many.

    The record is the run's runs.csv row where the index has one (as that release wrote it),
    else the row its manifest describes. Folders of runs still running are left alone.
    """
    indexed = {}
    if (results_dir / RUNS_CSV).is_file():
        indexed = {r["run_id"]: r for r in read_runs(results_dir, refresh_records=False).rows}
    added = 0
    for task_dir in sorted(p for p in results_dir.iterdir() if TASK_NAME.fullmatch(p.name) and p.is_dir()):
        for run_dir in sorted(p for p in task_dir.iterdir() if RUN_ID.fullmatch(p.name)):
            manifest = read_manifest(run_dir)
            if (run_dir / RECORD).exists() or manifest_problem(manifest) or manifest["run_id"] != run_dir.name:
                continue
            row = indexed.get(run_dir.name) or (manifest_row(manifest) if manifest["status"] in schema.STATUSES else None)
            if row is not None and row["task"] == task_dir.name:
                write_record(results_dir, row_fields(row))
                added += 1
    return added
