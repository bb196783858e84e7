"""Run settings that must decide a run's identity, be visible in tables, or be refused.

Issue 19: a data folder's files in the run id; every run-id option in runs.csv (and an older
runs.csv still read); options a run would ignore, non-finite numbers, out-of-range seeds and
sizes, unknown or weight-loading arch options, and datasets with fewer than two classes.
"""

from __future__ import annotations

import csv
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fabench.errors import FabenchError
from fabench.train.config import RunConfig

REPO = Path(__file__).resolve().parents[1]

#: The runs.csv header of schema version 2 (fabench before gamma, step_size, milestones and
#: exclude had columns), as such files exist on disk.
V2_COLUMNS = (
    "schema_version", "run_id", "task", "task_version", "rule", "arch", "arch_options", "dataset", "seed",
    "subset", "image_size", "val_split", "recipe", "epochs", "batch_size", "optimizer", "lr",
    "momentum", "nesterov", "weight_decay", "label_smoothing", "schedule", "warmup_epochs",
    "grad_clip", "weight_init", "weight_init_scale", "feedback_scale", "feedback_init", "sn_norm",
    "ei_mode", "mirror_lr", "mirror_decay", "mirror_steps", "mirror_every", "mirror_warmup", "amp", "channels_last",
    "compile", "deterministic",
    "status", "epochs_done", "final_top1", "final_top5", "best_top1", "best_top5",
    "best_epoch", "best_val_top1", "best_val_epoch", "test_top1_at_best_val", "final_test_loss",
    "first_train_loss", "final_train_loss", "train_time_s", "images_per_s",
    "arch_source", "num_params", "feedback_form", "device", "fabench_version", "torch_version",
    "timm_version", "git_commit", "started_at", "finished_at", "error",
)


def _fabench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FABENCH_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "fabench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


# --- 1. the files of a data folder are part of the run id --------------------------------------


def _idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, the format of MNIST's raw files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _mnist_folder(root: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    for prefix, count in (("train", 20), ("t10k", 10)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)
    return root


def _mnist_config(data_dir: Path) -> RunConfig:
    return RunConfig(rule="bp", arch="mlp", dataset="mnist", data_dir=str(data_dir), epochs=1)


def test_two_mnist_folders_with_different_images_are_two_runs(tmp_path):
    a, b = _mnist_folder(tmp_path / "a", 0), _mnist_folder(tmp_path / "b", 1)
    assert _mnist_config(a).run_id != _mnist_config(b).run_id


def test_a_copy_of_a_data_folder_keeps_its_run_id(tmp_path):
    a = _mnist_folder(tmp_path / "a", 0)
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)  # new paths and modification times, same bytes
    assert _mnist_config(a).run_id == _mnist_config(copy).run_id


def test_imagenet_trees_with_different_files_are_two_runs(tmp_path):
    from PIL import Image

    for root, shade in ((tmp_path / "a", 0), (tmp_path / "b", 255)):
        for split in ("train", "val"):
            for name in ("cat", "dog"):
                (root / split / name).mkdir(parents=True)
                Image.new("RGB", (8, 8 + shade // 255), (shade, 0, 0)).save(root / split / name / "0.png")
    ids = {RunConfig(dataset="imagenet", data_dir=str(tmp_path / d)).run_id for d in ("a", "b")}
    assert len(ids) == 2


def test_datasets_without_a_data_folder_keep_their_run_ids(tmp_path):
    from fabench.data import dataset_identity
    from fabench.data._fingerprint import file_digest

    # names of what a data folder cannot change, or that is absent (its download is the official files)
    for name in ("mnist-mini", "cifar10-mini", "mnist", "cifar10", "imagenet"):
        assert dataset_identity(name, tmp_path) == name
    path = tmp_path / "d.npz"
    np.savez(path, x_test=np.zeros((2, 4, 4), np.uint8), y_test=np.array([0, 1]))
    assert dataset_identity(str(path), tmp_path / "elsewhere") == f"npz sha256:{file_digest(path)}"
    # the run id of the default run in fp32, as fabench computed it before data folders were fingerprinted
    assert RunConfig(amp="off", channels_last=False).run_id == "7afca3d6a4c5"


# --- 2. every run-id option has a runs.csv column; older files are read and upgraded -----------


def _v2_row(run_id: str, exclude_note: str = "") -> list[str]:
    values = {"schema_version": "2", "run_id": run_id, "task": "old", "task_version": "1", "rule": "fa",
              "arch": "arch1", "dataset": "cifar10-mini", "seed": "0", "recipe": "auto", "epochs": "1",
              "batch_size": "64", "optimizer": "adam", "lr": "0.001", "schedule": "cosine", "status": "finished",
              "epochs_done": "1", "final_top1": "50.0" if not exclude_note else "60.0"}
    return [values.get(column, "") for column in V2_COLUMNS]


def _records(table_csv: str) -> list[dict]:
    """The rows of ``fabench table --format csv`` output."""
    return list(csv.DictReader(table_csv.splitlines()))


def _write_v2(results: Path) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results / "runs.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows([V2_COLUMNS, _v2_row("aaaaaaaaaaaa"), _v2_row("bbbbbbbbbbbb", "x")])
    return path


def test_a_runs_csv_of_the_previous_schema_is_read_with_defaults(tmp_path):
    from fabench.train.runs_csv import read_runs

    table = read_runs(_write_v2(tmp_path))
    assert not table.problems
    assert [r["run_id"] for r in table.rows] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    assert {(r["gamma"], r["step_size"], r["milestones"], r["exclude"]) for r in table.rows} == {("0.1", "30", "", "")}


def test_a_runs_csv_of_the_previous_schema_is_tabulated(tmp_path):
    _write_v2(tmp_path)
    done = _fabench("table", "--results-dir", str(tmp_path), "--format", "csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [r["n"] for r in _records(done.stdout)] == ["2"]  # the two rows, as seeds of one cell


def test_writing_into_a_runs_csv_of_the_previous_schema_upgrades_it_in_place(tmp_path):
    from fabench.train import schema
    from fabench.train.runs_csv import read_runs, upsert_run_row

    path = _write_v2(tmp_path)
    config = RunConfig(rule="bp", dataset="cifar10-mini", task="new")
    upsert_run_row(tmp_path, schema.make_row({**config.to_dict(), "run_id": config.run_id},
                                             {"status": "finished", "final_top1": 40.0}, {}))
    with path.open(newline="") as handle:
        assert tuple(next(csv.reader(handle))) == schema.COLUMNS
    assert sorted(r["run_id"] for r in read_runs(path).rows) == sorted(["aaaaaaaaaaaa", "bbbbbbbbbbbb", config.run_id])


def test_runs_that_differ_only_in_exclude_are_not_averaged_as_seeds(tmp_path):
    from fabench.train import schema
    from fabench.train.runs_csv import upsert_run_row

    for exclude, top1 in (([], 80.0), (["features.*"], 90.0)):
        config = RunConfig(rule="fa-usf", dataset="cifar10-mini", task="t", exclude=exclude)
        upsert_run_row(tmp_path, schema.make_row({**config.to_dict(), "run_id": config.run_id},
                                                 {"status": "finished", "final_top1": top1}, {}))
    done = _fabench("table", "--results-dir", str(tmp_path), "--format", "csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = _records(done.stdout)
    assert sorted((r["exclude"], r["n"]) for r in records) == [("", "1"), ('["features.*"]', "1")]


# --- 3, 4. settings a run would ignore, and numbers it cannot use, in task files ---------------

TASK = """task: t
version: "1"
description: d
rules: [bp]
archs: [arch1]
datasets: [cifar10-mini]
seeds: [0]
overrides:
  {setting}
"""


@pytest.mark.parametrize(("setting", "message"), [
    ("lr: .inf", "--lr must be a finite number"),
    ("weight_decay: .nan", "--weight-decay must be a finite number"),
    ("gamma: 0.5", "--gamma applies to --schedule step or multistep only"),
    ("{optimizer: adam, momentum: 0.5}", "--momentum applies to --optimizer sgd only"),
    ("image_size: 100000", "--image-size must be at most 4096"),
])
def test_task_files_refuse_what_the_command_line_refuses(tmp_path, setting, message):
    text = TASK.format(setting=setting)
    if setting.startswith("{"):
        text = text.replace("overrides:\n  " + setting, "overrides: " + setting)
    (tmp_path / "t.yaml").write_text(text)
    done = _fabench("validate", str(tmp_path / "t.yaml"), cwd=tmp_path)
    assert done.returncode != 0 and message in done.stdout + done.stderr


def test_settings_a_schedule_uses_are_accepted():
    from fabench.train.session import check_config

    check_config(RunConfig(schedule="step", gamma=0.5, step_size=2))
    check_config(RunConfig(optimizer="sgd", momentum=0.5))
    check_config(RunConfig(schedule="cosine", gamma=0.1))  # the default: no other run id


def test_the_largest_seed_is_accepted_and_the_next_refused():
    from fabench.train.config import MAX_SEED

    RunConfig(seed=MAX_SEED).validate()
    with pytest.raises(FabenchError, match="--seed must be an integer from 0 to 2\\*\\*63-1"):
        RunConfig(seed=MAX_SEED + 1).validate()


def test_an_arch_option_that_fits_the_constructor_is_accepted():
    from fabench.archs import check_arch_options

    check_arch_options("resnet18", {"drop_rate": 0.1})
    check_arch_options("tv:resnet18", {"zero_init_residual": True})
    with pytest.raises(FabenchError, match="would load pretrained weights"):
        check_arch_options("resnet18", {"pretrained": True})


# --- 7. classes -------------------------------------------------------------------------------


def _npz(path: Path, y_train, y_test) -> str:
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    np.savez(path, x_train=np.zeros((len(y_train), 4, 4), np.uint8), y_train=y_train,
             x_test=np.zeros((len(y_test), 4, 4), np.uint8), y_test=y_test)
    return str(path)


def test_a_training_split_of_one_class_is_refused(tmp_path):
    from fabench.data import load_dataset

    path = _npz(tmp_path / "one.npz", [0, 0, 0], [0, 0])
    with pytest.raises(FabenchError, match="training split holds 1 class"):
        load_dataset(path)


def test_a_training_split_of_one_class_beside_a_test_split_of_three_is_refused(tmp_path):
    from fabench.data import load_dataset

    path = _npz(tmp_path / "one.npz", [0, 0, 0], [0, 1, 2])
    with pytest.raises(FabenchError, match="training split holds 1 class"):
        load_dataset(path)


def test_train_and_test_classes_that_differ_are_warned_about(tmp_path, capsys):
    from fabench.data import load_dataset

    load_dataset(_npz(tmp_path / "d.npz", [0, 1, 0, 1], [0, 1, 2]))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train and test splits hold different classes (only in test: 2)" in err[0]
    load_dataset(_npz(tmp_path / "same.npz", [0, 1, 2], [2, 1, 0]))
    assert capsys.readouterr().err == ""


def test_an_evaluation_only_set_needs_no_training_classes(tmp_path):
    from fabench.data import load_dataset

    path = tmp_path / "eval.npz"
    np.savez(path, x_test=np.zeros((2, 4, 4), np.uint8), y_test=np.array([0, 0]))
    assert load_dataset(str(path)).num_classes == 1
