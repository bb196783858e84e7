"""The grid runner, for real: worker processes, a dying worker, Ctrl-C, rerun and resume.

Every grid here runs through the real CLI in a subprocess on a tiny cifar10-mini subset. Worker
deaths are real (``FABENCH_FAULT=sigkill@epoch=1`` makes fabench.train SIGKILL its own process
right after the epoch-1 checkpoint); the interrupt is a real SIGINT to the grid process.
"""

from __future__ import annotations

import csv
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fabench.tasks import load_task
from fabench.train.schema import DONE_STATUSES

REPO = Path(__file__).resolve().parent.parent

TASK = """\
task: grid-test
version: "1"
description: a tiny grid for the grid runner's tests
rules: {rules}
archs: [arch1]
datasets: [cifar10-mini]
seeds: [0]
overrides: {{subset: 100, epochs: {epochs}, batch_size: 50, optimizer: adam, lr: 1.0e-3,
            schedule: none, weight_decay: 0.0, image_size: 24}}
"""


def make_task(folder: Path, epochs: int, rules: str) -> tuple[Path, list[str]]:
    """Write the task file; return it and its cells' run_ids."""
    path = folder / "grid-test.yaml"
    path.write_text(TASK.format(epochs=epochs, rules=rules))
    results = folder / "results"
    return path, [c.run_id for c in load_task(path).cells(results_dir=str(results))]


def grid_command(task: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fabench", "grid", str(task), "--results-dir", str(results), "--no-progress", *extra]


def grid_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FABENCH_FAULT"}
    return {**env, "FABENCH_OFFLINE": "1", **extra}


def run_grid(task: Path, results: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(grid_command(task, results, *extra), cwd=REPO, env=env or grid_env(),
                          capture_output=True, text=True, timeout=240)


def rows(results: Path) -> list[dict]:
    with (results / "runs.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def curve_epochs(results: Path, run_id: str) -> list[int]:
    """Epochs of the run's test top-1 curve, in file order (duplicates would show)."""
    with (results / "grid-test" / run_id / "curves.csv").open(newline="") as handle:
        return [int(r["epoch"]) for r in csv.DictReader(handle) if (r["split"], r["metric"]) == ("test", "top1")]


@pytest.mark.slow
def test_two_workers_survive_dying_workers_then_resume_every_cell_once(tmp_path):
    task, run_ids = make_task(tmp_path, epochs=2, rules="[bp, fa-usf-sn]")
    results = tmp_path / "results"

    crashed = run_grid(task, results, "--workers", "2", env=grid_env(FABENCH_FAULT="sigkill@epoch=1"))
    assert crashed.returncode == 1, crashed.stdout + crashed.stderr
    recorded = rows(results)
    assert sorted(r["run_id"] for r in recorded) == sorted(run_ids)
    assert {r["status"] for r in recorded} == {"failed"}
    assert all("worker process died (killed by SIGKILL)" in r["error"] for r in recorded)
    assert "2 cells selected, 0 already finished, 0 finished now, 2 failed" in crashed.stdout

    resumed = run_grid(task, results, "--workers", "2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("resume arch1/") == 2
    recorded = rows(results)
    assert sorted(r["run_id"] for r in recorded) == sorted(run_ids)  # one row per cell
    assert {r["epochs_done"] for r in recorded} == {"2"} and {r["status"] for r in recorded} <= set(DONE_STATUSES)
    for run_id in run_ids:
        assert curve_epochs(results, run_id) == [1, 2]  # epoch 1 was not trained twice
        manifest = json.loads((results / "grid-test" / run_id / "manifest.json").read_text())
        assert len(manifest["resumed_at"]) == 1


def _lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


def _ignore_sigint() -> None:
    """Start the grid as a background job of a script would: SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "0"])
def test_ctrl_c_stops_the_grid_and_a_rerun_finishes_each_cell_exactly_once(tmp_path, workers):
    """Deterministic: the second cell holds after its first step until it is asked to stop
    (``hold@process-step``: cell 1 is 2 epochs of 2 steps), so the SIGINT sent when the grid
    reports that it started cell 2 always finds cell 2 set up or holding, however loaded the machine is.
    The grid starts with SIGINT ignored, and must still stop on it."""
    task, run_ids = make_task(tmp_path, epochs=2, rules="[bp, fa, fa-usf-sn]")
    results = tmp_path / "results"
    process = subprocess.Popen(grid_command(task, results, "--workers", workers), cwd=REPO,
                               env=grid_env(FABENCH_FAULT="hold@process-step=5"), preexec_fn=_ignore_sigint,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
    output = []
    while (line := lines.get(timeout=240)) is not None:
        output.append(line)
        if "start arch1/fa/" in line:  # the grid handed out cell 2, which holds after its first step
            process.send_signal(signal.SIGINT)
            break
    code = process.wait(timeout=240)
    while (line := lines.get(timeout=10)) is not None:
        output.append(line)
    text = "".join(output)
    assert code == 130, text
    assert "interrupted" in text and "Traceback" not in text
    before = {r["run_id"]: r for r in rows(results)}
    assert before[run_ids[0]]["status"] in DONE_STATUSES  # 100 images, 2 epochs: may end at chance
    assert before[run_ids[1]]["status"] == "interrupted", text
    assert run_ids[2] not in before  # never started

    rerun = run_grid(task, results, "--workers", workers)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "3 cells selected, 1 already finished, 2 finished now" in rerun.stdout
    assert rerun.stdout.count("resume arch1/") == 1  # cell 2 from its checkpoint, cell 3 from scratch
    after = rows(results)
    assert sorted(r["run_id"] for r in after) == sorted(run_ids)
    assert {r["status"] for r in after} <= set(DONE_STATUSES)
    first = next(r for r in after if r["run_id"] == run_ids[0])
    assert first["finished_at"] == before[run_ids[0]]["finished_at"]  # not run again
    for run_id in run_ids:
        assert curve_epochs(results, run_id) == [1, 2]


def test_a_stop_between_runs_reaches_the_next_run_and_a_stop_inside_one_reaches_the_grid():
    """Nested stop flags (a grid worker's around each run's) lose no signal in the gaps."""
    from fabench.train.interrupt import stop_on_signals

    with stop_on_signals() as outer:
        os.kill(os.getpid(), signal.SIGTERM)  # while a cell is being set up
        with stop_on_signals() as inner:
            assert inner() and inner.signal_name == "SIGTERM"
    with stop_on_signals() as outer:
        with stop_on_signals() as inner:
            os.kill(os.getpid(), signal.SIGTERM)  # during a run
        assert inner() and outer() and outer.signal_name == "SIGTERM"
    with stop_on_signals() as outer, stop_on_signals() as inner:
        pass
    assert not outer() and not inner()


def test_gpu_workers_are_pinned_and_cpu_workers_share_the_cores(monkeypatch):
    from fabench.tasks.grid import parse_gpus
    from fabench.tasks.pool import GridOptions, worker_envs

    envs = worker_envs(GridOptions(gpus=parse_gpus("0,1"), per_gpu=2), n_cells=10)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "0", "1", "1"]
    assert len(worker_envs(GridOptions(gpus=("0", "1"), per_gpu=2), n_cells=3)) == 3
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert [e["OMP_NUM_THREADS"] for e in worker_envs(GridOptions(workers=4), n_cells=10)] == ["2"] * 4


def test_worker_module_imports_no_torch_so_cuda_visible_devices_takes_effect():
    """Workers set CUDA_VISIBLE_DEVICES after their module is imported (spawn): it must not load torch."""
    code = "import sys, fabench.tasks.grid, fabench.tasks.pool, fabench.tasks._display; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_bad_gpu_list_is_a_one_line_error(tmp_path, capsys):
    from fabench.cli import main

    task, _ = make_task(tmp_path, epochs=1, rules="[bp]")
    with pytest.raises(SystemExit) as done:
        main(["grid", str(task), "--gpus", "0,0", "--dry-run"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fabench: error: --gpus takes distinct device ids") and "Traceback" not in err
