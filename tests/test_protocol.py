"""The comparison protocol, for real: tuning with one budget per rule, tuned grids, no-learning runs.

Every command runs through the installed entry point on a small dataset the test writes: four
classes of 12x12 grey images, each class a bar at its own place plus noise, learnable in a few
epochs by an MLP under backprop.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CLASSES = 4


def fabench(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("fabench")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "fabench"]
    environment = {k: v for k, v in os.environ.items() if k != "FABENCH_FAULT"}
    environment.update({"OMP_NUM_THREADS": "1", **(env or {})})
    return subprocess.run([*command, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def write_bars(path: Path, n_train: int = 800, n_test: int = 200, seed: int = 0) -> Path:
    """A learnable 4-class dataset: class k is a bright horizontal bar in rows 3k..3k+2, plus noise."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, CLASSES, n)
        images = rng.normal(60, 40, (n, 12, 12))
        for i, label in enumerate(labels):
            images[i, 3 * label:3 * label + 3, :] += 90
        return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


TASK = """\
task: bars
version: "1"
description: a tuned comparison on a dataset no recipe was set for
rules: [bp, fa]
archs: [mlp]
datasets: [{data}]
seeds: [0, 1]
overrides: {{epochs: 3, batch_size: 32, schedule: none}}
tune:
  trials: {trials}
  epochs: 3
  val_split: 160
  space:
    lr: {{scale: [0.3, 30]}}
  families:
    random: {{weight_init_scale: {{low: 0.1, high: 1.0, log: true}}}}
"""


def rows(results: Path) -> list[dict]:
    with (results / "runs.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def studies(results: Path, task: str) -> dict:
    import optuna

    storage = f"sqlite:///{results / 'tune' / (task + '.db')}"
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


@pytest.fixture
def bars_task(tmp_path) -> Path:
    data = write_bars(tmp_path / "bars.npz")
    task = tmp_path / "bars.yaml"
    task.write_text(TASK.format(data=data, trials=3))
    return task


@pytest.mark.slow
def test_tune_then_tuned_grid_gives_every_rule_a_result_above_chance(bars_task, tmp_path):
    results = tmp_path / "results"
    tuned = fabench("tune", str(bars_task), "--results-dir", str(results), cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stdout + tuned.stderr
    assert "each 3 trials x 1 seed(s) x 3 epochs (the same budget for every rule; pruning from epoch 1)" in tuned.stdout
    for study in studies(results, "bars").values():
        states = [t.state.name for t in study.trials]
        assert len(states) == 3 and set(states) <= {"COMPLETE", "PRUNED"}, states
        assert study.trials[0].params.get("lr_scale") == 1.0  # the recipe is the first trial

    grid = fabench("grid", str(bars_task), "--results-dir", str(results), "--tuned", "--no-progress", cwd=tmp_path)
    assert grid.returncode == 0, grid.stdout + grid.stderr
    recorded = rows(results)
    assert len(recorded) == 4 and all(r["tuned"].startswith("bars/mlp/") for r in recorded)
    assert {r["seed"] for r in recorded} == {"0", "1"}  # the task's seeds, not the tuning seed
    chance = 100 / CLASSES
    for row in recorded:
        assert row["status"] == "no-learning" or float(row["final_top1"]) > 2 * chance, row
    assert all(float(r["final_top1"]) > 2 * chance for r in recorded if r["rule"] == "fa")  # fa learns, tuned

    shown = fabench("tune", str(bars_task), "--results-dir", str(results), "--show", cwd=tmp_path)
    assert shown.returncode == 0 and "bars/mlp/fa/" in shown.stdout and "3 complete" in shown.stdout.replace("pruned", "")


@pytest.mark.slow
def test_a_tune_killed_mid_trial_resumes_that_trial_and_spends_the_budget_exactly(tmp_path):
    data = write_bars(tmp_path / "bars.npz")
    task = tmp_path / "bars.yaml"
    task.write_text(TASK.format(data=data, trials=2).replace("rules: [bp, fa]", "rules: [bp]"))
    results = tmp_path / "results"
    killed = fabench("tune", str(task), "--results-dir", str(results), cwd=tmp_path,
                     env={"FABENCH_FAULT": "sigkill@epoch=1"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    resumed = fabench("tune", str(task), "--results-dir", str(results), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    (study,) = studies(results, "bars").values()
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 1 and sum(s in ("COMPLETE", "PRUNED") for s in states) == 2, states
    killed_trial = next(t for t in study.trials if t.state.name == "FAIL")
    retried = next(t for t in study.trials if t.number > killed_trial.number and t.params == killed_trial.params)
    assert retried.user_attrs["run_id"] == killed_trial.user_attrs["run_id"]
    curves = results / "tune" / "bars" / retried.user_attrs["run_id"] / "curves.csv"
    with curves.open(newline="") as handle:
        epochs = [r["epoch"] for r in csv.DictReader(handle) if (r["split"], r["metric"]) == ("train", "loss")]
    assert epochs == ["1", "2", "3"]  # epoch 1 was not trained twice: the run resumed


def test_a_run_at_chance_is_recorded_no_learning(tmp_path):
    data = write_bars(tmp_path / "bars.npz", n_train=256, n_test=128)
    done = fabench("run", "--rule", "fa", "--arch", "mlp", "--dataset", str(data), "--epochs", "2", "--lr", "1e-7",
                   "--results-dir", str(tmp_path / "results"), "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = rows(tmp_path / "results")
    assert row["status"] == "no-learning", row
    assert "within 1.5x chance" in row["error"]


def test_the_no_learning_rule_needs_both_chance_accuracy_and_a_flat_loss():
    from fabench.train.epochs import learning

    flat = [{"train_loss": 2.30, "test_top1": 13.1}, {"train_loss": 2.25, "test_top1": 13.1}]
    assert learning(flat, 10)[0] == "no-learning"
    fell = [{"train_loss": 2.30, "test_top1": 13.1}, {"train_loss": 1.9, "test_top1": 13.1}]
    assert learning(fell, 10)[0] == "finished"  # the loss fell clearly below ln(10): it learns something
    above = [{"train_loss": 2.30, "test_top1": 16.0}, {"train_loss": 2.25, "test_top1": 16.0}]
    assert learning(above, 10)[0] == "finished"
    assert math.isclose(0.9 * math.log(10), 2.0723, abs_tol=1e-4)


@pytest.mark.slow
def test_kp_default_recipe_brings_b_to_w(tmp_path):
    """Kolen–Pollack's mechanism under its default recipe: δx angle to backprop below half of fa's
    (mlp on mnist-mini, 5 epochs)."""
    angles = {}
    for rule in ("fa", "kp"):
        results = tmp_path / rule
        done = fabench("run", "--rule", rule, "--arch", "mlp", "--dataset", "mnist-mini", "--epochs", "5",
                       "--results-dir", str(results), "--no-progress", cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        (curves,) = results.glob("adhoc/*/curves.csv")
        with curves.open(newline="") as handle:
            probe = [r for r in csv.DictReader(handle) if r["metric"] == "dx_angle" and r["value"] != "nan"]
        last = max(int(r["epoch"]) for r in probe)
        angles[rule] = [float(r["value"]) for r in probe if int(r["epoch"]) == last]
    assert max(angles["kp"]) < 0.5 * min(angles["fa"]), angles
