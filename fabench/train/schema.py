"""The fixed, versioned column schema of ``results/runs.csv``.

One definition, used by every writer and reader: config columns (from :class:`RunConfig`),
then metrics, then provenance. A row is built by :func:`make_row`, which fills exactly these
columns and nothing else, never from whatever keys a dict happens to hold. Readers check
``schema_version`` and the header, and report foreign or malformed rows instead of mixing
them in. Bump ``SCHEMA_VERSION`` whenever the columns change.
"""

from __future__ import annotations

import json

SCHEMA_VERSION = 3

#: Config columns, in order; each is a field of RunConfig (plus run_id and schema_version).
#: Every field in a run's id has one, so that ``fabench table`` never averages two experiments.
CONFIG_COLUMNS = (
    "schema_version", "run_id", "task", "task_version", "rule", "arch", "arch_options", "dataset", "data_files",
    "seed", "subset", "image_size", "val_split", "recipe", "epochs", "batch_size", "optimizer", "lr",
    "momentum", "nesterov", "weight_decay", "label_smoothing", "schedule", "milestones", "gamma", "step_size",
    "warmup_epochs", "grad_clip", "weight_init", "weight_init_scale", "feedback_scale", "feedback_init", "sn_norm",
    "ei_mode", "mirror_lr", "mirror_decay", "mirror_steps", "mirror_every", "mirror_warmup", "exclude", "amp",
    "channels_last", "compile", "deterministic", "tuned",
)
#: Config columns that are not RunConfig fields: ``data_files`` is what in the data folder decides
#: the data (see :func:`fabench.data.dataset_identity`), "" when the name alone does.
DERIVED_COLUMNS = ("data_files",)
#: Config columns holding a list or a mapping: one JSON cell, keys sorted ("" when empty).
JSON_COLUMNS = ("arch_options", "milestones", "exclude")

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

#: Columns schema 3 added, with the cell a row of schema 2 gets: the setting's default, the only
#: value those runs could have had without it in their row (RunConfig's defaults: 0.1 and 30).
ADDED_IN_3 = {"data_files": "", "milestones": "", "gamma": "0.1", "step_size": "30", "exclude": "", "tuned": ""}
#: Headers of older runs.csv files, by schema version; their rows are read and upgraded.
OLDER_HEADERS = {2: tuple(column for column in COLUMNS if column not in ADDED_IN_3)}


def upgrade_record(header: tuple[str, ...], record: list[str]) -> list[str]:
    """A record of the runs.csv with ``header`` (this schema's or an older one), in this schema.

    Older rows get the added columns' defaults and this ``schema_version``. A record of the
    wrong length is returned as it is, for the reader to report.
    """
    if header == COLUMNS or len(record) != len(header):
        return record
    row = dict(zip(header, record, strict=True))
    version = next(v for v, columns in OLDER_HEADERS.items() if columns == header)
    if row["schema_version"] == str(version):
        row["schema_version"] = str(SCHEMA_VERSION)
    return [row[column] if column in row else ADDED_IN_3[column] for column in COLUMNS]


def known_header(header) -> bool:
    """True for this schema's header or an older one that :func:`upgrade_record` reads."""
    return tuple(header) == COLUMNS or tuple(header) in OLDER_HEADERS.values()

#: Statuses a row may carry. "unstable": trained to the end, but the loss rose; "no-learning":
#: trained to the end at chance (see fabench.train.epochs.stability); "pruned": a tuning trial
#: ended early by the search (fabench.tasks.tune). Those in DONE_STATUSES are results: a rerun
#: skips them.
STATUSES = ("finished", "unstable", "no-learning", "diverged", "failed", "interrupted", "pruned")
DONE_STATUSES = ("finished", "unstable", "no-learning")
#: A run ends "no-learning" when its final test top-1 is below this multiple of chance (100/classes
#: percent) and its training loss never fell below NO_LEARNING_LOSS_FRACTION · ln(classes).
NO_LEARNING_ACCURACY_FACTOR = 1.5
NO_LEARNING_LOSS_FRACTION = 0.9
#: A final training loss above this multiple of ln(classes) marks a run unstable
#: (fabench.train.epochs.stability): half again the loss of predicting every class equally.
UNSTABLE_LOSS_FACTOR = 1.5
#: An epoch's mean training loss above this multiple of ln(classes) is a blow-up: unstable.
UNSTABLE_PEAK_FACTOR = 3.0
#: A final training loss above the first epoch's by more than this factor is a rise: unstable
#: (2 %: a run that stays flat near ln(classes) is "not learning", not unstable).
UNSTABLE_RISE_FACTOR = 1.02


def data_files(config: dict) -> str:
    """The fingerprint of the files a registered dataset was read from, "" when its name says it all
    (an embedded sample, official files) or when it is a ``.npz`` path (the path is its column)."""
    from fabench.data import DATASETS, dataset_identity

    name = config.get("dataset", "")
    if name not in DATASETS:
        return ""
    identity = dataset_identity(name, config.get("data_dir", "data"))
    return identity.removeprefix(name).strip()


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
    merged = {**config, "schema_version": SCHEMA_VERSION, "data_files": data_files(config), **metrics, **provenance}
    for column in JSON_COLUMNS:  # one cell: JSON, keys sorted ("" when empty)
        if isinstance(merged.get(column), (dict, list, tuple)):
            merged[column] = json.dumps(merged[column], sort_keys=True) if merged[column] else ""
    return {column: merged.get(column, "") for column in COLUMNS}
