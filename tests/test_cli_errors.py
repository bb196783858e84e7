"""Every command × each kind of bad input, through the installed ``fabench`` entry point.

A subprocess, so that the typer and click a fresh install really gets are the ones in use. Each
case must exit 2 with one line on stderr (a bare command group also prints its help on
stdout), no traceback, and nothing written where it ran. Nothing here trains.

A case that needs files (a broken task file, a foreign runs.csv) names a function in
:data:`SETUP` that writes them into the case's ``{dir}`` before it runs; those files are not
counted as written by the command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cli_helpers import TINY_TASK, alias_bomb, assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
#: (case id, argv, a fragment the one stderr line must hold). "{dir}" is an existing folder,
#: empty unless SETUP names a function that fills it.
CASES = [
    ("root-bare", [], "needs a command"),
    ("root-unknown-flag", ["--bogus"], "No such option: --bogus"),
    ("run-int", ["run", "--epochs", "abc"], "Invalid value for '--epochs'"),
    ("run-float", ["run", "--lr", "abc"], "Invalid value for '--lr'"),
    ("run-unknown-flag", ["run", "--bogus-flag", "1"], "No such option: --bogus-flag"),
    ("run-unknown-rule", ["run", "--rule", "fa-usff"], "unknown rule 'fa-usff'"),
    ("run-jpeg-decoder-cpu", ["run", "--jpeg-decoder", "gpu", "--device", "cpu"], "--jpeg-decoder gpu needs a CUDA"),
    ("run-jpeg-decoder-choice", ["run", "--jpeg-decoder", "nvjpeg"], "'nvjpeg' is not one of 'cpu', 'gpu'"),
    ("run-image-size", ["run", "--image-size", "0"], "--image-size must be at least 1"),
    ("run-unused-scale", ["run", "--rule", "bp", "--feedback-scale", "0.1"], "--feedback-scale does nothing under bp"),
    ("run-unused-init", ["run", "--rule", "fa-usf-sn", "--feedback-init", "xavier"], "--feedback-init does nothing"),
    ("run-unused-sn-norm", ["run", "--rule", "fa", "--sn-norm", "spectral"], "--sn-norm applies to fa-usf-sn only"),
    ("run-unused-ei-mode", ["run", "--rule", "fa", "--ei-mode", "keep-sign"], "--ei-mode applies to rules with the +ei"),
    ("run-recipe", ["run", "--recipe", "nope"], "unknown recipe 'nope'"),
    ("run-weight-init", ["run", "--weight-init", "he"], "Invalid value for '--weight-init': 'he' is not one of 'default'"),
    ("run-optimizer", ["run", "--optimizer", "adm"], "Invalid value for '--optimizer': 'adm' is not one of 'sgd', 'adam', 'adamw'"),
    ("run-schedule", ["run", "--schedule", "linear"], "Invalid value for '--schedule': 'linear' is not one of"),
    ("run-amp", ["run", "--amp", "fp8"], "Invalid value for '--amp': 'fp8' is not one of 'auto', 'off', 'bf16', 'fp16'"),
    ("run-sn-norm", ["run", "--sn-norm", "l2"], "Invalid value for '--sn-norm': 'l2' is not one of 'fro', 'spectral'"),
    ("run-ei-mode", ["run", "--ei-mode", "keep"], "Invalid value for '--ei-mode': 'keep' is not one of 'zero', 'keep-sign'"),
    ("run-mirror-every", ["run", "--mirror-every", "batch"], "Invalid value for '--mirror-every': 'batch' is not one of"),
    ("run-feedback-init", ["run", "--feedback-init", "he"], "Invalid value for '--feedback-init': 'he' is not one of"),
    ("run-missing-npz", ["run", "--dataset", "/nonexistent/d.npz"], "does not exist"),
    ("run-val-split", ["run", "--val-split", "-1"], "--val-split must be"),
    ("run-device", ["run", "--device", "cuda:99"], "--device cuda:99"),
    ("eval-missing-arg", ["eval"], "Missing argument"),
    ("eval-no-run", ["eval", "/nonexistent/run", "--dataset", "mnist-mini"], "/nonexistent/run"),
    ("grid-missing-arg", ["grid"], "Missing argument"),
    ("grid-unknown-task", ["grid", "no-such-task"], "unknown task 'no-such-task'"),
    ("grid-no-tasks", ["grid", "smoke", "--tasks-dir", "{dir}"], "unknown task 'smoke'"),
    ("grid-int", ["grid", "smoke", "--workers", "abc"], "Invalid value for '--workers'"),
    ("grid-gpus", ["grid", "smoke", "--gpus", "97"], "--gpus 97"),
    ("grid-device", ["grid", "smoke", "--device", "cuda:99"], "--device cuda:99"),
    ("table-metric", ["table", "--metric", "bogus"], "Invalid value for '--metric': 'bogus' is not one of 'top1-err'"),
    ("table-no-results", ["table", "--results-dir", "{dir}"], "no results at"),
    ("table-output-dir", ["table", "--format", "csv", "-o", "{dir}"], "is a folder"),
    ("plot-kind", ["plot", "bogus"], "Invalid value for 'kind': 'bogus' is not one of 'curves', 'alignment'"),
    ("plot-output", ["plot", "-o", "/etc/passwd/x.png"], "cannot be created"),
    ("ls-bare", ["ls"], "needs a command"),
    ("ls-unknown", ["ls", "bogus"], "No such command 'bogus'"),
    ("ls-unknown-flag", ["ls", "rules", "--bogus"], "No such option: --bogus"),
    ("validate-unknown", ["validate", "no-such-task"], "neither a file nor a task name"),
    ("bench-bare", ["bench"], "needs a command"),
    ("bench-unknown", ["bench", "bogus"], "No such command 'bogus'"),
    ("bench-rules-arch", ["bench", "rules", "--arch", "lenett"], "unknown architecture 'lenett'"),
    ("bench-rules-image", ["bench", "rules", "--arch", "lenet", "--image-size", "3"], "lenet cannot take 3x3"),
    ("bench-rules-steps", ["bench", "rules", "--steps", "0"], "--steps and --rounds must be at least 1"),
    ("bench-rules-rounds", ["bench", "rules", "--rounds", "0"], "--steps and --rounds must be at least 1"),
    ("bench-rules-batch", ["bench", "rules", "--batch-size", "0"], "--batch-size must be at least 1"),
    ("bench-rules-device", ["bench", "rules", "--device", "cuda:99"], "--device cuda:99"),
    ("bench-peak-rule", ["bench", "peak", "--rule", "nope"], "unknown rule 'nope'"),
    ("bench-peak-steps", ["bench", "peak", "--steps", "0"], "--steps and --rounds must be at least 1"),
    ("bench-peak-arch", ["bench", "peak", "--arch", "lenett"], "unknown architecture 'lenett'"),
    ("bench-loop-int", ["bench", "loop", "--rounds", "abc"], "Invalid value for '--rounds'"),
    ("bench-loop-amp", ["bench", "loop", "--amp", "auto"], "Invalid value for '--amp': 'auto' is not one of"),
    ("bench-probe-dataset", ["bench", "probe", "--dataset", "nope"], "unknown dataset 'nope'"),
    ("run-unknown-arch", ["run", "--arch", "resnet-nope"], "unknown architecture 'resnet-nope'"),
    ("run-unknown-dataset", ["run", "--dataset", "cifar11"], "unknown dataset 'cifar11'"),
    ("run-zero-epochs", ["run", "--epochs", "0"], "--epochs must be at least 1"),
    ("run-zero-lr", ["run", "--lr", "0"], "--lr must be positive"),
    ("run-batch-over-subset", ["run", "--subset", "50", "--batch-size", "64"], "--batch-size 64 is larger than the training set"),
    ("run-corrupt-npz", ["run", "--dataset", "{dir}/broken.npz"], "cannot read dataset file"),
    ("run-multistep", ["run", "--schedule", "multistep"], "--schedule multistep needs --milestones"),
    ("run-fp16-cpu", ["run", "--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a CUDA device"),
    ("run-results-not-folder", ["run", "--results-dir", "{dir}/a-file/results"], "a-file is not a folder"),
    ("run-diagnostics", ["run", "--diagnostics", "often", "--device", "cpu"], "--diagnostics must be off, epoch or a positive"),
    ("run-weight-init-scale", ["run", "--weight-init-scale", "0"], "--weight-init-scale must be positive"),
    ("eval-not-run-folder", ["eval", "{dir}", "--dataset", "cifar10-mini"], "is not a run folder"),
    ("grid-unknown-task-near", ["grid", "tinny", "--dry-run", "--tasks-dir", "{dir}"],
     "unknown task 'tinny'; valid choices (closest first): tiny"),
    ("grid-unreadable-beside", ["grid", "nope", "--tasks-dir", "{dir}"], "nul.yaml (run `fabench validate`)"),
    ("grid-task-nul", ["grid", "{dir}/nul.yaml", "--dry-run"], "nul.yaml:3: invalid YAML: non-printable character U+0000"),
    ("grid-task-control", ["grid", "{dir}/bell.yaml", "--dry-run"], "bell.yaml:3: invalid YAML: non-printable character U+0007"),
    ("grid-task-alias-bomb", ["grid", "{dir}/bomb.yaml", "--dry-run"], "aliases (*name) expand to more than"),
    ("grid-launcher", ["grid", "smoke", "--launcher", "lsf"], "Invalid value for '--launcher': 'lsf' is not one of 'local', 'submitit'"),
    ("grid-slurm-without-submitit", ["grid", "smoke", "--slurm-partition", "gpu"], "--slurm-partition needs --launcher submitit"),
    ("grid-slurm-time", ["grid", "smoke", "--launcher", "submitit", "--slurm-time", "soon"], "--slurm-time takes a SLURM time"),
    ("grid-slurm-extra", ["grid", "smoke", "--launcher", "submitit", "--slurm-extra", "account"], "--slurm-extra takes KEY=VALUE"),
    ("grid-submitit-gpus", ["grid", "smoke", "--launcher", "submitit", "--gpus", "0,1"], "--gpus places local workers"),
    ("table-compare-metric", ["table", "--compare", "published", "--metric", "train-time"], "published numbers are top-1 error"),
    ("table-format", ["table", "--format", "html"], "Invalid value for '--format': 'html' is not one of 'rich', 'markdown', 'csv', 'latex'"),
    ("table-rows", ["table", "--results-dir", "{dir}", "--rows", "archs"], "--rows: unknown column 'archs'"),
    ("table-task-filter", ["table", "--results-dir", "{dir}", "--task", "nothing"], "no runs match the filters"),
    ("table-foreign-header", ["table", "--results-dir", "{dir}"], "runs.csv:1: header does not match"),
    ("plot-out-suffix", ["plot", "--out", "{dir}/x.pdf"], "--out must end in .png"),
    ("run-momentum-adam", ["run", "--optimizer", "adam", "--momentum", "0.5"], "--momentum applies to --optimizer sgd only"),
    ("run-gamma-cosine", ["run", "--schedule", "cosine", "--gamma", "0.5"], "--gamma applies to --schedule step or multistep only"),
    ("run-step-size-cosine", ["run", "--schedule", "cosine", "--step-size", "5"], "--step-size applies to --schedule step only"),
    ("run-milestones-cosine", ["run", "--schedule", "cosine", "--milestones", "2,3"], "--milestones applies to --schedule multistep only"),
    ("run-seed-twice", ["run", "--seed", "1", "--seed", "2"], "--seed is given twice"),
    ("grid-workers-twice", ["grid", "smoke", "--workers", "1", "--workers=2"], "--workers is given twice"),
    ("run-lr-inf", ["run", "--lr", "inf"], "--lr must be a finite number"),
    ("run-weight-decay-inf", ["run", "--weight-decay", "inf"], "--weight-decay must be a finite number"),
    ("run-weight-init-scale-inf", ["run", "--weight-init-scale", "inf"], "--weight-init-scale must be a finite number"),
    ("run-gamma-nan", ["run", "--schedule", "step", "--gamma", "nan"], "--gamma must be a finite number"),
    ("run-seed-negative", ["run", "--seed", "-1"], "--seed must be an integer from 0 to 2**63-1"),
    ("run-seed-huge", ["run", "--seed", "99999999999999999999999"], "--seed must be an integer from 0 to 2**63-1"),
    ("run-workers-negative", ["run", "--workers", "-1"], "--workers must be 0 or more"),
    ("run-image-size-huge", ["run", "--image-size", "100000"], "--image-size must be at most 4096"),
    ("run-arch-option-unknown", ["run", "--arch", "resnet18", "--arch-option", "foo=1"], "architecture 'resnet18' has no option 'foo'; it takes"),
    ("run-arch-option-weights", ["run", "--arch", "tv:mobilenet_v3_small", "--arch-option", "weights=DEFAULT"], "would load pretrained weights"),
    ("tune-unknown-task", ["tune", "no-such-task"], "unknown task 'no-such-task'"),
    ("tune-trials", ["tune", "smoke", "--trials", "0"], "Invalid value for '--trials'"),
    ("tune-storage", ["tune", "smoke", "--storage", "nosuchdb://x", "--results-dir", "{dir}"], "--storage nosuchdb://x: cannot open it"),
    ("grid-storage-untuned", ["grid", "smoke", "--storage", "sqlite:///x.db"], "--storage names the tuning studies; it needs --tuned"),
    ("grid-tuned-untuned", ["grid", "smoke", "--tuned", "--results-dir", "{dir}"], "no tuning studies at"),
    ("tune-show-untuned", ["tune", "smoke", "--show", "--results-dir", "{dir}"], "no tuning studies at"),
    ("table-vs-compare", ["table", "--vs", "bp", "--compare", "published"], "--vs compares rules on a result metric"),
    ("bench-feedback-rule", ["bench", "feedback-memory", "--rules", "nope"], "unknown rule 'nope'"),
]


def _broken_npz(folder: Path) -> None:
    (folder / "broken.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")


def _a_file(folder: Path) -> None:
    (folder / "a-file").write_text("not a folder")


def _tiny_task(folder: Path) -> None:
    (folder / "tiny.yaml").write_text(TINY_TASK)


def _broken_task_files(folder: Path) -> None:
    """A good task beside a NUL byte, a bell character and an alias bomb in task files."""
    _tiny_task(folder)
    (folder / "nul.yaml").write_bytes(b"task: nul\nversion: 1\ndescription: a\x00b\n")
    (folder / "bell.yaml").write_bytes(b"task: bell\nversion: 1\ndescription: ring \x07\n")
    (folder / "bomb.yaml").write_text("task: bomb\n" + alias_bomb(6))


def _runs_csv(folder: Path) -> None:
    """A runs.csv of one finished run, written the way fabench.train writes it."""
    from fabench.train import schema
    from fabench.train.config import RunConfig
    from fabench.train.runs_csv import upsert_run_row

    config = RunConfig(rule="bp", arch="arch1", dataset="cifar10-mini", task="fixture", task_version="1")
    metrics = {"status": "finished", "epochs_done": 1, "final_top1": 50.0}
    upsert_run_row(folder, schema.make_row({**config.to_dict(), "run_id": config.run_id}, metrics, {}))


def _foreign_runs_csv(folder: Path) -> None:
    (folder / "runs.csv").write_text("a,b,c\n1,2,3\n")


#: case id -> a function writing the files the case needs into its "{dir}".
SETUP = {
    "run-corrupt-npz": _broken_npz,
    "run-results-not-folder": _a_file,
    "grid-unknown-task-near": _tiny_task,
    "grid-unreadable-beside": _broken_task_files,
    "grid-task-nul": _broken_task_files,
    "grid-task-control": _broken_task_files,
    "grid-task-alias-bomb": _broken_task_files,
    "table-rows": _runs_csv,
    "table-task-filter": _runs_csv,
    "table-foreign-header": _foreign_runs_csv,
}


def _entry_point() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m fabench``."""
    script = Path(sys.executable).with_name("fabench")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fabench"]


def _run_case(case, base: Path) -> tuple[int, str, str, list[str]]:
    name, argv, _ = case
    cwd = base / name
    cwd.mkdir()
    folder = base / f"{name}-folder"
    folder.mkdir()
    if name in SETUP:
        SETUP[name](folder)
    prepared = set(folder.rglob("*"))
    args = [a.replace("{dir}", str(folder)) for a in argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FABENCH_OFFLINE": "1", "COLUMNS": "200"}
    done = subprocess.run([*_entry_point(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    left = sorted(str(p.relative_to(base)) for p in [*cwd.rglob("*"), *(set(folder.rglob("*")) - prepared)])
    return done.returncode, done.stdout, done.stderr, left


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("bad-input")
    shutil.copytree(REPO / "tasks", base / "tasks")  # `grid smoke` finds the repo's tasks via the source tree
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda case: _run_case(case, base), CASES)
        return {case[0]: result for case, result in zip(CASES, results, strict=True)}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(outcomes, case):
    name, _, fragment = case
    code, out, err, left = outcomes[name]
    assert_one_line_error(code, out, err, fragment)
    assert left == [], f"{name} left {left}"
    if not name.endswith("bare"):
        assert out == ""
