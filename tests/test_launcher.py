"""``fabench grid --launcher submitit``: a grid as a SLURM job array through submitit.

Two real paths, no cluster needed:

- submitit's own local executor (``--launcher submitit-local``) runs a two-cell grid in
  submitit's job processes; results land in the usual layout, a rerun submits nothing, and
  ``fabench table`` reads them;
- the SLURM executor with stand-in ``sbatch``/``srun`` commands on PATH: the sbatch script
  submitit writes carries the partition, time, GPUs, array parallelism and extra options, and
  one array task, started the way ``srun`` starts it (two tasks with SLURM's variables), trains
  its cell as a two-process DDP run (gloo, CPU) and records it.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, cli

from fabench.errors import FabenchError
from fabench.tasks import load_task
from fabench.tasks.submit import parse_extra, parse_slurm_time
from fabench.train.schema import DONE_STATUSES

REPO = Path(__file__).resolve().parent.parent

TASK = """\
task: launch-test
version: "1"
description: a tiny grid for the launcher tests
rules: [bp, fa]
archs: [arch1]
datasets: [cifar10-mini]
seeds: [0]
overrides: {subset: 100, epochs: 1, batch_size: 50, optimizer: adam, lr: 1.0e-3, schedule: none,
            weight_decay: 0.0, image_size: 24, diagnostics: "off"}
"""

FAKE_SBATCH = """#!/bin/sh
cp "$1" "$(dirname "$0")/submitted.sh"
echo "Submitted batch job 4242"
"""


def env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_")) and k != "FABENCH_FAULT"}
    return {**clean, "OMP_NUM_THREADS": "1", "FABENCH_OFFLINE": "1", "PYTHONPATH": str(REPO), **extra}


def fabench(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fabench", *args], cwd=REPO, env=env(**extra_env),
                          capture_output=True, text=True, timeout=300)


def rows(results: Path) -> list[dict]:
    with (results / "runs.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def task_file(tmp_path) -> Path:
    path = tmp_path / "launch-test.yaml"
    path.write_text(TASK)
    return path


@pytest.mark.slow
def test_submitit_local_runs_the_grid_into_the_usual_results(task_file, tmp_path):
    results = tmp_path / "results"
    done = fabench("grid", str(task_file), "--results-dir", str(results), "--launcher", "submitit-local",
                   "--slurm-gpus-per-cell", "0", "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted 2 cell(s) of task launch-test" in done.stderr
    recorded = rows(results)
    expected = {c.run_id for c in load_task(task_file).cells(results_dir=str(results))}
    assert {r["run_id"] for r in recorded} == expected
    assert {r["status"] for r in recorded} <= set(DONE_STATUSES)  # 2 steps from init: bp may end "unstable"
    for row in recorded:
        assert (results / "launch-test" / row["run_id"] / "last.pt").is_file()
    assert list((results / "submitit").glob("*/*_0_log.out")), "submitit's logs are kept under results/submitit"

    again = fabench("grid", str(task_file), "--results-dir", str(results), "--launcher", "submitit-local",
                    "--slurm-gpus-per-cell", "0")
    assert again.returncode == 0 and "2 already finished" in again.stderr and "nothing to submit" in again.stderr

    table = fabench("table", "--results-dir", str(results), "--task", "launch-test", "--format", "csv")
    assert table.returncode == 0, table.stderr
    cells = list(csv.DictReader(table.stdout.splitlines()))
    errors = {r["rule"]: 100 - float(r["final_top1"]) for r in recorded}  # the default metric: top-1 error
    assert len(cells) == 2 and {c["rule"]: float(c["mean"]) for c in cells} == pytest.approx(errors), table.stdout


@pytest.mark.slow
def test_slurm_array_script_and_one_ddp_array_task(task_file, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    results = tmp_path / "results"
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    done = fabench("grid", str(task_file), "--results-dir", str(results), "--launcher", "submitit", "--device", "cpu",
                   "--slurm-partition", "gpu", "--slurm-time", "1-02:00:00", "--slurm-gpus-per-cell", "2",
                   "--slurm-array-parallelism", "1", "--slurm-cpus-per-task", "8", "--slurm-extra", "account=proj",
                   PATH=path)
    assert done.returncode == 0, done.stderr
    assert "as job array 4242" in done.stderr
    script = (bin_dir / "submitted.sh").read_text()
    for line in ("--partition=gpu", "--time=1560", "--gpus-per-node=2", "--ntasks-per-node=2", "--array=0-1%1",
                 "--cpus-per-task=8", "--account=proj", "--job-name=fabench-launch-test", "--signal=USR2@90"):
        assert f"#SBATCH {line}" in script, script
    assert "--kill-on-bad-exit=1" in script
    assert not (results / "runs.csv").exists()  # submitted, not run

    # Array task 0 as srun starts it: two tasks with SLURM's variables, one DDP rank each.
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4243", "SLURM_ARRAY_JOB_ID": "4242",
             "SLURM_ARRAY_TASK_ID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0",
             "SLURM_JOB_NODELIST": "localhost", "MASTER_PORT": str(29000 + os.getpid() % 1000)}
    folder = str(results / "submitit" / "%A")
    tasks = [subprocess.Popen([sys.executable, "-u", "-m", "submitit.core._submit", folder], cwd=tmp_path,
                              env=env(**slurm, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [task.communicate(timeout=300)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], logs
    (row,) = rows(results)
    first = load_task(task_file).cells(results_dir=str(results), device="cpu")[0]  # the device decides --amp auto
    assert row["run_id"] == first.run_id and row["status"] in DONE_STATUSES
    assert row["device"].startswith("2x cpu")


def test_missing_submitit_or_slurm_is_one_line(task_file, tmp_path, capsys, monkeypatch):
    """What this machine lacks, so not in the subprocess matrix of test_cli_errors."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here
    grid = ("grid", str(task_file), "--results-dir", str(tmp_path / "r"), "--launcher", "submitit")
    assert_one_line_error(*cli(capsys, *grid), "--launcher submitit needs SLURM")
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if `pip install 'fabench[slurm]'` had not been run
    assert_one_line_error(*cli(capsys, *grid), "pip install 'fabench[slurm]'")


@pytest.mark.parametrize(("text", "minutes"), [
    ("240", 240), ("90:30", 91), ("4:00:00", 240), ("1-00:00:00", 1440), ("2-12", 3600), ("1-02:30", 1590),
])
def test_slurm_times_read_as_sbatch_reads_them(text, minutes):
    assert parse_slurm_time(text) == minutes


def test_extra_options_become_sbatch_keys():
    assert parse_extra(["account=proj", "--mail-type=END"]) == {"account": "proj", "mail_type": "END"}
    with pytest.raises(FabenchError):
        parse_slurm_time("0")
