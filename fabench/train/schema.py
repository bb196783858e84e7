"""The versioned column schema of ``results/runs.csv``.

One definition, used by every writer and reader: config columns (generated from the settings
of :class:`RunConfig` that declare a column), then metrics, then provenance. A row is built by
:func:`make_row`, which fills exactly these columns and nothing else, never from whatever keys a
dict happens to hold. Readers check ``schema_version`` and the header, and report foreign or
malformed rows instead of mixing them in.

Results survive new columns: a runs.csv written by an earlier schema (any header made only of
known columns) is read with each missing column at the value its rows could only have had, the
setting's default, and the next write upgrades the file in place (:func:`upgrade_record`). A
new setting needs no change here; ``SCHEMA_VERSION`` counts the column sets written so far.
"""

from __future__ import annotations

import json

from fabench.train.config import SETTINGS, RunConfig
from fabench.train.settings import field_defaults, field_types

#: Bumped whenever the columns change (4: rule_options and plugins).
SCHEMA_VERSION = 4

#: Config columns that are not RunConfig fields, each after the field it derives from, with the
#: cell of a row written before it existed: ``data_files`` is what in the data folder decides
#: the data (see :func:`fabench.data.dataset_identity`), "" when the name alone does.
DERIVED_COLUMNS = {"data_files": ("dataset", "")}


def _config_columns() -> tuple[str, ...]:
    """``schema_version``, ``run_id``, then each setting with a column, in RunConfig's order."""
    columns = ["schema_version", "run_id"]
    for name, meta in SETTINGS.items():
        if meta.column:
            columns.append(name)
        columns.extend(derived for derived, (source, _) in DERIVED_COLUMNS.items() if source == name)
    return tuple(columns)


#: Config columns, in order. Every field in a run's id has one (RunConfig refuses a setting in
#: the identity without a column), so that ``fabench table`` never averages two experiments.
CONFIG_COLUMNS = _config_columns()
#: Config columns holding a list or a mapping: one JSON cell, keys sorted ("" when empty).
JSON_COLUMNS = tuple(name for name, kind in field_types(RunConfig).items()
                     if name in CONFIG_COLUMNS and kind.startswith(("list[", "dict[", "tuple[")))

#: Config columns of number settings: their cells must hold numbers when not empty.
NUMERIC_CONFIG_COLUMNS = tuple(name for name, kind in field_types(RunConfig).items()
                               if name in CONFIG_COLUMNS and kind.split("|")[0].strip() in ("int", "float"))

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
#: Columns every runs.csv fabench wrote has had; a header without them is not a runs.csv.
REQUIRED_COLUMNS = ("schema_version", "run_id", "status")


def cell(column: str, value) -> str:
    """A value as its runs.csv cell: JSON for lists and mappings ("" when empty), "" for None."""
    if column in JSON_COLUMNS and isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True) if value else ""
    return "" if value is None else str(value)


def absent_cell(column: str) -> str:
    """The cell of ``column`` in a row written before the column existed: the setting's default
    (the only value such a run could have had), "" for metrics and provenance."""
    if column in DERIVED_COLUMNS:
        return DERIVED_COLUMNS[column][1]
    if column in SETTINGS and column in CONFIG_COLUMNS:
        return cell(column, field_defaults(RunConfig)[column])
    return ""


def known_header(header) -> bool:
    """True for this schema's header or an earlier one: known columns only, each once, and the
    columns every runs.csv has had. :func:`upgrade_record` reads its rows."""
    columns = tuple(header)
    return (columns == COLUMNS or (len(set(columns)) == len(columns) and set(columns) <= set(COLUMNS)
                                   and set(REQUIRED_COLUMNS) <= set(columns)))


def upgrade_record(header: tuple[str, ...], record: list[str]) -> list[str]:
    """A record of the runs.csv with ``header`` (this schema's or an earlier one), in this schema.

    An earlier row gets each missing column's :func:`absent_cell` and this ``schema_version``.
    A record of the wrong length, or whose ``schema_version`` is not an earlier one, keeps its
    fields for the reader to report.
    """
    if header == COLUMNS or len(record) != len(header):
        return record
    row = dict(zip(header, record, strict=True))
    version = row["schema_version"]
    if version.isdigit() and int(version) < SCHEMA_VERSION:
        row["schema_version"] = str(SCHEMA_VERSION)
    return [row[column] if column in row else absent_cell(column) for column in COLUMNS]


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
        merged[column] = cell(column, merged.get(column))
    return {column: merged.get(column, "") for column in COLUMNS}
