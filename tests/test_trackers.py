"""``--log tensorboard|wandb|mlflow``: what a short run logged, read back with each tool's own reader.

Every tracker must hold the run's curves (per-epoch train/test metrics, per-layer alignment
angles) at their steps and the resolved settings as hyper-parameters; a run killed with
SIGKILL and resumed continues the same tracker run without a duplicated or missing step.
"""

from __future__ import annotations

import csv
import glob
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fabench.data._factory import EMBEDDED_DIR
from fabench.train.schema import DONE_STATUSES

REPO = Path(__file__).resolve().parents[1]
TRACKERS = ("tensorboard", "wandb", "mlflow")
#: Blocks one package's import in a child process, as if it were not installed.
NO_PACKAGE = """import sys
class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {name!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, _Missing())
"""


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def needs(name: str):
    return pytest.mark.skipif(not _installed(name), reason=f"{name} is not installed (pip install 'fabench[{name}]')")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """100 training and 100 test images of the CIFAR sample: 5 steps of 20 per epoch."""
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    with np.load(EMBEDDED_DIR / "cifar10-mini.npz") as archive:
        np.savez(path, x_train=archive["x_train"][::50], y_train=archive["y_train"][::50],
                 x_test=archive["x_test"][::10], y_test=archive["y_test"][::10])
    return path


def fabench_run(results: Path, dataset: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    args = ["run", "--results-dir", str(results), "--no-progress", "--dataset", str(dataset), "--rule", "fa",
            "--epochs", "2", "--batch-size", "20", "--optimizer", "adam", "--lr", "1e-3", "--device", "cpu",
            "--deterministic", *extra]
    return subprocess.run([sys.executable, "-m", "fabench", *args], cwd=results.parent, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def logged_with(results: Path, dataset: Path, *extra: str, env: dict | None = None) -> Path:
    """Run with the installed trackers; return the run folder."""
    logs = [arg for name in TRACKERS if _installed(name) for arg in ("--log", name)]
    done = fabench_run(results, dataset, *logs, *extra, env=env)
    assert done.returncode == 0, done.stderr
    (run_dir,) = results.glob("adhoc/*/")
    return run_dir


def curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """curves.csv as key -> [(step, value)], keyed as the trackers key them."""
    found: dict[str, list[tuple[int, float]]] = {}
    with open(run_dir / "curves.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["metric"] == "depth" or row["value"] == "nan":
                continue
            key = "/".join(part for part in (row["split"], row["metric"], row["layer"]) if part)
            found.setdefault(key, []).append((int(row["step"]), float(row["value"])))
    return found


def assert_holds_curves(logged: dict[str, list[tuple[int, float]]], run_dir: Path) -> None:
    """The tracker holds every curve of the run, each step once, with its value."""
    expected = curves(run_dir)
    assert {"train/loss", "test/top1", "test/loss"} <= set(expected)
    assert any(key.startswith("probe/dx_angle/") for key in expected)
    assert set(logged) >= set(expected), sorted(set(expected) - set(logged))
    for key, points in expected.items():
        assert [step for step, _ in logged[key]] == [step for step, _ in points], key
        assert [value for _, value in logged[key]] == pytest.approx([value for _, value in points], rel=1e-5), key


# --- each tool's own reader ---------------------------------------------------------------------


def tensorboard_scalars(run_dir: Path) -> tuple[dict, dict]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    hparams = {}
    for content in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            hparams = {k: v.string_value or v.number_value for k, v in data.session_start_info.hparams.items()}
    return scalars, hparams


def wandb_records(run_file: Path) -> list:
    """The records of an offline W&B run file (a LevelDB-style log of wandb's own protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, position, payload, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:
            break
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        payload = chunk if kind in (1, 2) else payload + chunk  # full or first; middle and last append
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(payload))
    return records


def wandb_logged(run_dir: Path, last: bool = False) -> tuple[set[str], dict, dict]:
    """Run ids, config and history (key -> [(step, value)]) of the offline W&B runs in the folder
    (``last``: only the newest, what a resumed process wrote)."""
    ids, config, history = set(), {}, {}
    run_files = sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb")))
    for run_file in run_files[-1:] if last else run_files:
        for record in wandb_records(Path(run_file)):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
                config.update({u.key: u.value_json for u in record.run.config.update})
            elif kind == "history":
                items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
                step = int(items["_step"]) if "_step" in items else record.history.step.num
                for key, value in items.items():
                    if not key.startswith("_"):
                        history.setdefault(key, []).append((step, float(value)))
    return ids, config, history


def mlflow_logged(results: Path) -> tuple[list, dict]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results.resolve() / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("adhoc")
    runs = client.search_runs([experiment.experiment_id])
    metrics = {key: [(m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, key)]
               for key in runs[0].data.metrics}
    return runs, metrics


# --- one run, all trackers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, tiny) -> Path:
    results = tmp_path_factory.mktemp("logged") / "results"
    return logged_with(results, tiny)


@needs("tensorboard")
def test_tensorboard_event_files_hold_the_curves_and_settings(logged_run):
    scalars, hparams = tensorboard_scalars(logged_run)
    assert_holds_curves(scalars, logged_run)
    assert hparams["rule"] == "fa" and hparams["lr"] == pytest.approx(1e-3) and hparams["run_id"] == logged_run.name


@needs("wandb")
def test_the_offline_wandb_run_holds_the_curves_and_settings(logged_run):
    ids, config, history = wandb_logged(logged_run)
    assert len(ids) == 1
    assert_holds_curves(history, logged_run)
    assert config["rule"] == '"fa"' and float(config["lr"]) == pytest.approx(1e-3)


@needs("mlflow")
def test_the_mlflow_store_under_results_holds_the_curves_and_settings(logged_run):
    results = logged_run.parents[1]
    runs, metrics = mlflow_logged(results)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert_holds_curves(metrics, logged_run)
    assert runs[0].data.params["rule"] == "fa" and runs[0].data.params["run_id"] == logged_run.name


# --- killed and resumed -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny) -> Path:
    """A run killed with SIGKILL right after epoch 1's checkpoint, then resumed to the end."""
    results = tmp_path_factory.mktemp("resumed") / "results"
    logs = [arg for name in TRACKERS if _installed(name) for arg in ("--log", name)]
    killed = fabench_run(results, tiny, *logs, env={"FABENCH_FAULT": "sigkill@epoch=1"})
    assert killed.returncode == -9, killed.stderr
    return logged_with(results, tiny)


@needs("tensorboard")
def test_a_resumed_run_continues_its_tensorboard_run(resumed_run):
    scalars, _ = tensorboard_scalars(resumed_run)
    assert_holds_curves(scalars, resumed_run)
    assert len(scalars["test/top1"]) == 2


@needs("wandb")
def test_a_resumed_run_continues_its_wandb_run(resumed_run):
    ids, _, _ = wandb_logged(resumed_run)
    assert len(glob.glob(str(resumed_run / "wandb" / "offline-run-*"))) == 2  # one per process
    assert len(ids) == 1  # both under the same run id, which W&B resumes
    _, _, resumed = wandb_logged(resumed_run, last=True)  # every step again: W&B keeps those it lacks
    assert_holds_curves(resumed, resumed_run)


@needs("mlflow")
def test_a_resumed_run_continues_its_mlflow_run(resumed_run):
    runs, metrics = mlflow_logged(resumed_run.parents[1])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert_holds_curves(metrics, resumed_run)


# --- a missing package, the grid ----------------------------------------------------------------


@pytest.mark.parametrize("name", TRACKERS)
def test_a_tracker_without_its_package_is_one_line_before_anything_is_written(tmp_path, tiny, name):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_PACKAGE.format(name=name))
    results = tmp_path / "results"
    done = fabench_run(results, tiny, "--log", name, env={"PYTHONPATH": os.pathsep.join([str(shim), str(REPO)])})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"fabench: error: --log {name} needs the {name} package; install it with pip install 'fabench[{name}]'"]
    assert not results.exists()


@needs("tensorboard")
def test_the_grid_s_workers_log_too(tmp_path, tiny):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "logged.yaml").write_text(
        "task: logged\nversion: 1\ndescription: two logged cells\nrules: [bp, fa]\narchs: [arch1]\n"
        f"datasets: ['{tiny}']\nseeds: [0]\n"
        "overrides: {epochs: 1, batch_size: 20, optimizer: adam, lr: 0.001, log: [tensorboard]}\n")
    done = subprocess.run([sys.executable, "-m", "fabench", "grid", "logged", "--tasks-dir", str(tmp_path / "tasks"),
                           "--results-dir", str(tmp_path / "results"), "--workers", "2", "--no-progress"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run_dirs = sorted((tmp_path / "results" / "logged").glob("*/"))
    assert len(run_dirs) == 2
    for run_dir in run_dirs:
        scalars, hparams = tensorboard_scalars(run_dir)
        assert_holds_curves(scalars, run_dir)
        assert hparams["task"] == "logged"
    with open(tmp_path / "results" / "runs.csv", newline="") as handle:
        assert all(row["status"] in DONE_STATUSES for row in csv.DictReader(handle))


@needs("mlflow")
def test_a_failing_tracker_is_one_warning_and_the_run_goes_on(tmp_path, tiny):
    results = tmp_path / "results"
    done = fabench_run(results, tiny, "--log", "mlflow", env={"MLFLOW_TRACKING_URI": "sqlite:////proc/no/mlflow.db"})
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("fabench: warning: --log mlflow failed")]
    assert len(warnings) == 1 and "Traceback" not in done.stderr
    with open(results / "runs.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert row["status"] in DONE_STATUSES
