"""The fixed, versioned column schema of ``results/runs.csv``.

One definition, used by every writer and reader: config columns (from :class:`RunConfig`),
then metrics, then provenance. A row is built by :func:`make_row`, which fills exactly these
columns and nothing else, never from whatever keys a dict happens to hold. Readers check
``schema_version`` and the header, and report foreign or malformed rows instead of mixing
them in. Bump ``SCHEMA_VERSION`` whenever the columns change.
"""

from __future__ import annotations

import json

SCHEMA_VERSION = 2

#: Config columns, in order; each is a field of RunConfig (plus run_id and schema_version).
CONFIG_COLUMNS = (
    "schema_version", "run_id", "task", "task_version", "rule", "arch", "arch_options", "dataset", "seed",
    "subset", "image_size", "val_split", "recipe", "epochs", "batch_size", "optimizer", "lr",
    "momentum", "nesterov", "weight_decay", "label_smoothing", "schedule", "warmup_epochs",
    "grad_clip", "weight_init", "weight_init_scale", "feedback_scale", "feedback_init", "sn_norm",
    "ei_mode", "mirror_lr", "mirror_decay", "mirror_steps", "mirror_every", "mirror_warmup", "amp", "channels_last",
    "compile", "deterministic",
)

#: Metric columns: accuracies in percent on the test split, times in seconds.
METRIC_COLUMNS = (
    "status", "epochs_done", "final_top1", "final_top5", "best_top1", "best_top5",
    "best_epoch", "best_val_top1", "best_val_epoch", "test_top1_at_best_val", "final_test_loss",
    "first_train_loss", "final_train_loss", "train_time_s", "images_per_s",
)

#: Provenance columns: where and with what the run was made.
PROVENANCE_COLUMNS = (
    "arch_source", "num_params", "feedback_form", "device", "fabench_version", "torch_version",
    "timm_version", "git_commit", "started_at", "finished_at", "error",
)

COLUMNS = CONFIG_COLUMNS + METRIC_COLUMNS + PROVENANCE_COLUMNS

#: Statuses a row may carry. "unstable": trained to the end, but the loss rose (see
#: fabench.train.epochs.stability). Those in DONE_STATUSES are results: a rerun skips them.
STATUSES = ("finished", "unstable", "diverged", "failed", "interrupted")
DONE_STATUSES = ("finished", "unstable")
#: A final training loss above this multiple of ln(classes) marks a run unstable
#: (fabench.train.epochs.stability): half again the loss of predicting every class equally.
UNSTABLE_LOSS_FACTOR = 1.5
#: An epoch's mean training loss above this multiple of ln(classes) is a blow-up: unstable.
UNSTABLE_PEAK_FACTOR = 3.0
#: A final training loss above the first epoch's by more than this factor is a rise: unstable
#: (2 %: a run that stays flat near ln(classes) is "not learning", not unstable).
UNSTABLE_RISE_FACTOR = 1.02


def make_row(config: dict, metrics: dict, provenance: dict) -> dict:
    """Assemble one runs.csv row with exactly :data:`COLUMNS`, in order.

    ``config`` is ``RunConfig.to_dict()`` plus ``run_id``; missing metric or provenance
    values become empty cells. Unknown keys in ``metrics`` or ``provenance`` are an error,
    so a typo cannot silently drop a value.
    """
    for name, given, allowed in (("metric", metrics, METRIC_COLUMNS), ("provenance", provenance, PROVENANCE_COLUMNS)):
        unknown = set(given) - set(allowed)
        if unknown:
            raise KeyError(f"unknown {name} column(s) for runs.csv: {sorted(unknown)}")
    merged = {**config, "schema_version": SCHEMA_VERSION, **metrics, **provenance}
    if isinstance(merged.get("arch_options"), dict):  # one cell: JSON, keys sorted ("" when none)
        merged["arch_options"] = json.dumps(merged["arch_options"], sort_keys=True) if merged["arch_options"] else ""
    return {column: merged.get(column, "") for column in COLUMNS}
