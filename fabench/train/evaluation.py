"""``fabench eval``: a finished (or checkpointed) run's model on another dataset.

The model is rebuilt exactly as the run built it (architecture, rule and its buffers) and its
``last.pt`` weights are loaded. The evaluation data gets the run's preprocessing: the run's
normalisation statistics, its test transform (e.g. ``crop24``'s centre crop) and its input
size, so a dataset of the same kind is seen as the run's own test split would be. An ``.npz``
holding only ``x_test``/``y_test`` is an evaluation set.

The result is appended to the run's record: an entry in the manifest's ``evaluations`` list,
and curves rows with split ``eval:<name>`` at the checkpoint's epoch and step.

A run folder may come from someone else, so nothing in it is trusted: a folder where a file
fabench writes is a symbolic link, a manifest with a malformed run id or fields, or a checkpoint
that does not match its recorded checksum is refused in one line before anything is written.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from types import SimpleNamespace

import torch

from fabench.errors import FabenchError
from fabench.train.checkpoint import load_checkpoint
from fabench.train.config import RunConfig
from fabench.train.curves import CurveWriter
from fabench.train.device import describe_device, resolve_device
from fabench.train.loop import evaluate
from fabench.train.provenance import now
from fabench.train.records import (
    CHECKPOINT,
    CURVES,
    MANIFEST,
    RUN_LOCK,
    disk_errors,
    file_lock,
    load_manifest,
    refuse_links,
    write_manifest,
)

#: The manifest's ``data`` entries evaluation needs, with their types.
TRAINED_ON = {"num_classes": int, "in_chans": int, "mean": list, "std": list}


def _run_manifest(run_dir: Path) -> dict:
    """The run folder's manifest, checked (links, run id, field types); one line if it is not a run folder."""
    refuse_links(run_dir)
    manifest = load_manifest(run_dir)
    if manifest is None:
        raise FabenchError(f"{run_dir} is not a run folder (no readable {MANIFEST}); give results/<task>/<run_id>")
    trained_on = manifest.get("data", {})
    if not (all(isinstance(trained_on.get(k), t) for k, t in TRAINED_ON.items())
            and isinstance(trained_on.get("image_size"), int | None)):
        raise FabenchError(f"{run_dir / MANIFEST} has no usable data entry (num_classes, in_chans, image_size, "
                           "mean, std); it was not written by this fabench")
    return manifest


def _run_files(run_dir: Path) -> tuple[dict, Path]:
    manifest = _run_manifest(run_dir)
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise FabenchError(f"{run_dir} has no checkpoint ({CHECKPOINT}) to evaluate")
    return manifest, checkpoint


def _fits(value: object, hint: object) -> bool:
    """True if a JSON value has the type a RunConfig field is declared with (ints count as floats)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint in (int, float, bool) or isinstance(value, bool):
        return type(value) is hint or (hint is float and type(value) is int)
    if origin is tuple:  # JSON writes a tuple (``plugins``) as a list
        return isinstance(value, list) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    if not isinstance(value, origin or hint):
        return False
    return origin is not list or all(_fits(v, typing.get_args(hint)[0]) for v in value)


def _run_config(manifest: dict, run_dir: Path) -> RunConfig:
    """The run's RunConfig from its manifest; one line if a recorded setting is unknown or of the wrong type."""
    hints = typing.get_type_hints(RunConfig)
    wrong = [k for k, v in manifest["config"].items() if k in hints and not _fits(v, hints[k])]
    if wrong:
        raise FabenchError(f"{run_dir / MANIFEST} records setting {wrong[0]} with a value of the wrong type; "
                           "it was not written by fabench")
    return RunConfig.from_dict(manifest["config"])


def eval_name(dataset: str) -> str:
    """The name an evaluation is recorded under: a file's name for a path, else the dataset name."""
    return Path(dataset).name if dataset.endswith(".npz") or "/" in dataset else dataset


def _eval_data(dataset: str, data_dir: str, trained_on: dict):
    """Load ``dataset`` with the run's test-time preprocessing (statistics, transform, size)."""
    from fabench.data import AUGMENTATIONS, FolderDataset, check_dataset, load_dataset

    check_dataset(dataset)
    data = load_dataset(dataset, data_dir=data_dir, image_size=trained_on["image_size"])
    if isinstance(data, FolderDataset):
        return data
    if data.in_chans != trained_on["in_chans"]:
        raise FabenchError(f"{dataset} has {data.in_chans}-channel images but the run was trained on "
                           f"{trained_on['in_chans']}-channel images")
    if int(data.y_test.max()) >= trained_on["num_classes"]:
        raise FabenchError(f"{dataset} has labels up to {int(data.y_test.max())} but the run's model has "
                           f"{trained_on['num_classes']} classes")
    augment = trained_on.get("augment") if trained_on.get("augment") in AUGMENTATIONS else "none"
    return dataclasses.replace(data, mean=tuple(trained_on["mean"]), std=tuple(trained_on["std"]), augment=augment)


def _load_model(config: RunConfig, trained_on: dict, payload: dict, device: torch.device) -> torch.nn.Module:
    from fabench.train.session import build_model

    shape = SimpleNamespace(num_classes=trained_on["num_classes"], in_chans=trained_on["in_chans"],
                            image_size=trained_on["image_size"])
    try:
        model, _, _ = build_model(config, shape, device)
    except (TypeError, ValueError, KeyError) as err:
        raise FabenchError(f"the run's recorded settings do not build a model ({err.__class__.__name__})") from None
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise FabenchError(f"the checkpoint's weights do not fit the model its manifest describes "
                           f"({err.__class__.__name__}); the run folder is damaged") from None
    return model


def _record(run_dir: Path, manifest: dict, entry: dict, progress: dict) -> None:
    manifest.setdefault("evaluations", []).append(entry)
    write_manifest(run_dir, manifest)
    with CurveWriter(run_dir / CURVES, manifest["run_id"]) as curves:
        for metric in ("top1", "top5", "loss"):
            curves.log(progress["epoch"], progress["global_step"], f"eval:{entry['name']}", metric, entry[metric])


def evaluate_run(run_dir: str | Path, dataset: str, *, data_dir: str = "data", device: str = "auto",
                 batch_size: int | None = None) -> dict:
    """Evaluate run ``run_dir``'s checkpoint on ``dataset``; record and return the result."""
    from fabench.train.batches import RunData

    run_dir = Path(run_dir)
    manifest, checkpoint = _run_files(run_dir)
    config = _run_config(manifest, run_dir)
    trained_on = manifest["data"]
    target = resolve_device(device)
    if batch_size is not None and batch_size < 1:
        raise FabenchError(f"--batch-size must be at least 1, got {batch_size}")
    data = _eval_data(dataset, data_dir, trained_on)
    payload = load_checkpoint(checkpoint, manifest["run_id"], manifest.get("checkpoint_sha256"))
    model = _load_model(config, trained_on, payload, target)
    batches = RunData(data, target, generator=torch.Generator(), batch_size=batch_size or config.batch_size,
                      workers=config.workers, channels_last=config.channels_last).test()
    result = evaluate(model, batches, device=target, amp=config.amp)
    progress = payload["progress"]
    entry = {"name": eval_name(dataset), "dataset": dataset, **result, "epoch": progress["epoch"],
             "step": progress["global_step"], "at": now(), "device": describe_device(target)}
    with disk_errors(run_dir), file_lock(run_dir / RUN_LOCK, blocking=False, remove=True) as mine:
        if not mine:
            raise FabenchError(f"run {manifest['run_id']} is being trained right now; evaluate it when it stops")
        _record(run_dir, _run_manifest(run_dir), entry, progress)
    return entry
