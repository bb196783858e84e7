"""Every command × each kind of bad input, through the installed ``fabench`` entry point.

A subprocess, so that the typer and click a fresh install really gets are the ones in use. Each
case must exit 2 with one line on stderr (a bare command group also prints its help on
stdout), no traceback, and nothing written where it ran. Nothing here trains.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: (case id, argv, a fragment the one stderr line must hold). "{dir}" is an existing folder.
CASES = [
    ("root-bare", [], "needs a command"),
    ("root-unknown-flag", ["--bogus"], "No such option: --bogus"),
    ("run-int", ["run", "--epochs", "abc"], "Invalid value for '--epochs'"),
    ("run-float", ["run", "--lr", "abc"], "Invalid value for '--lr'"),
    ("run-unknown-flag", ["run", "--bogus-flag", "1"], "No such option: --bogus-flag"),
    ("run-unknown-rule", ["run", "--rule", "fa-usff"], "unknown rule 'fa-usff'"),
    ("run-image-size", ["run", "--image-size", "0"], "--image-size must be at least 1"),
    ("run-unused-scale", ["run", "--rule", "bp", "--feedback-scale", "0.1"], "--feedback-scale does nothing under bp"),
    ("run-unused-init", ["run", "--rule", "fa-usf-sn", "--feedback-init", "xavier"], "--feedback-init does nothing"),
    ("run-unused-sn-norm", ["run", "--rule", "fa", "--sn-norm", "spectral"], "--sn-norm applies to fa-usf-sn only"),
    ("run-unused-ei-mode", ["run", "--rule", "fa", "--ei-mode", "keep-sign"], "--ei-mode applies to rules with the +ei"),
    ("run-recipe", ["run", "--recipe", "nope"], "unknown recipe 'nope'"),
    ("run-weight-init", ["run", "--weight-init", "he"], "--weight-init must be one of"),
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
    ("table-metric", ["table", "--metric", "bogus"], "no results at"),
    ("table-no-results", ["table", "--results-dir", "{dir}"], "no results at"),
    ("table-output-dir", ["table", "--format", "csv", "-o", "{dir}"], "is a folder"),
    ("plot-kind", ["plot", "bogus"], "plot KIND must be curves or alignment"),
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
    ("bench-loop-int", ["bench", "loop", "--rounds", "abc"], "Invalid value for '--rounds'"),
    ("bench-probe-dataset", ["bench", "probe", "--dataset", "nope"], "unknown dataset 'nope'"),
    ("bench-feedback-rule", ["bench", "feedback-memory", "--rules", "nope"], "unknown rule 'nope'"),
]


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
    args = [a.replace("{dir}", str(folder)) for a in argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FABENCH_OFFLINE": "1", "COLUMNS": "200"}
    done = subprocess.run([*_entry_point(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    left = sorted(str(p.relative_to(base)) for p in [*cwd.rglob("*"), *folder.rglob("*")])
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
    assert "Traceback" not in err + out, err
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fabench: error: ") and fragment in lines[0], lines[0]
    assert left == [], f"{name} left {left}"
    if not name.endswith("bare"):
        assert out == ""
