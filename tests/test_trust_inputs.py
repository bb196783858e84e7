"""One bad file must not take down the rest: hostile task files and runs.csv rows.

A task file with a NUL byte, another control character or an alias bomb is reported in one
line naming it, and every other task in its folder keeps working; a runs.csv row holding a
NUL byte is reported and skipped like any malformed row. Nothing here trains.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import TINY_TASK, alias_bomb, cli

from fabench.tasks import TaskFileError, check_file, read_task_file
from fabench.train import schema
from fabench.train.config import RunConfig
from fabench.train.runs_csv import read_runs, upsert_run_row

#: file name -> bytes of a task file that must be refused on its own.
BAD_TASK_FILES = {
    "nul.yaml": b"task: nul\nversion: 1\ndescription: a\x00b\n",
    "bell.yaml": b"task: bell\nversion: 1\ndescription: ring \x07\n",
    "bomb.yaml": ("task: bomb\n" + alias_bomb(6)).encode(),  # 9**6 values: refused, yet harmless if the bound breaks
}


@pytest.fixture(params=sorted(BAD_TASK_FILES))
def tasks_dir(request, tmp_path) -> tuple[Path, str]:
    """A folder holding the tiny task and one bad task file; returns it and the bad file's name."""
    (tmp_path / "tiny.yaml").write_text(TINY_TASK)
    (tmp_path / request.param).write_bytes(BAD_TASK_FILES[request.param])
    return tmp_path, request.param


def _lines_naming(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if name in line]


def test_ls_tasks_lists_the_good_task_and_reports_the_bad_file_in_one_line(tasks_dir, capsys):
    folder, bad = tasks_dir
    code, out, err = cli(capsys, "ls", "tasks", "--tasks-dir", str(folder))
    assert code == 1 and "Traceback" not in err
    assert out.startswith("tiny\t1\t2\ta tiny grid"), out
    assert len(_lines_naming(err, bad)) == 1 and len(err.strip().splitlines()) == 2, err
    assert "invalid YAML" in _lines_naming(err, bad)[0]


def test_validate_passes_the_good_task_and_reports_the_bad_file_in_one_line(tasks_dir, capsys):
    folder, bad = tasks_dir
    code, out, err = cli(capsys, "validate", "--tasks-dir", str(folder))
    assert code == 1 and "Traceback" not in err
    assert "ok\t" in out and "tiny v1\t2 cells" in out, out
    assert len(_lines_naming(err, bad)) == 1 and "invalid YAML" in err, err


def test_grid_runs_a_good_task_beside_a_bad_file(tasks_dir, capsys, tmp_path):
    folder, _ = tasks_dir
    code, _out, err = cli(capsys, "grid", "tiny", "--dry-run", "--tasks-dir", str(folder),
                          "--results-dir", str(tmp_path / "results"))
    assert code == 0, err
    assert "task tiny v1: 2 cells" in err + _out


def test_an_alias_bomb_is_refused_where_it_expands(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text("task: bomb\n" + alias_bomb(6))
    with pytest.raises(TaskFileError) as caught:
        read_task_file(path)
    assert [p.where.line for p in caught.value.problems] == [6]  # l4: the first list of more than 10,000 values
    assert "aliases (*name) expand to more than 10000 values" in str(caught.value)


def test_ordinary_anchors_aliases_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text(TINY_TASK + "overrides: &base {epochs: 2, subset: 100}\n"
                    "variants:\n  sgd: {<<: *base, optimizer: sgd}\n  adam: {<<: *base, optimizer: adam}\n")
    report = check_file(path)
    assert report.problems == [] and report.task is not None
    assert report.task.variants["sgd"] == {"epochs": 2, "subset": 100, "optimizer": "sgd"}


def _record(results: Path, seed: int) -> None:
    """Record one finished bp run of seed ``seed`` the way fabench.train does."""
    config = RunConfig(rule="bp", arch="arch1", dataset="cifar10-mini", seed=seed, task="fixture", task_version="1")
    metrics = {"status": "finished", "epochs_done": 1, "final_top1": 50.0 + seed}
    upsert_run_row(results, schema.make_row({**config.to_dict(), "run_id": config.run_id}, metrics, {}))


def test_a_runs_csv_row_with_a_nul_byte_is_reported_and_skipped(tmp_path, capsys):
    _record(tmp_path, 0)
    _record(tmp_path, 1)
    path = tmp_path / "runs.csv"
    header, first, second = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(header + first + second.replace(b",cifar10-mini,", b",cifar10-mini\x00,"))
    table = read_runs(path)
    assert [row["seed"] for row in table.rows] == ["0"]
    assert len(table.problems) == 1 and table.problems[0].endswith("runs.csv:3: row holds control character U+0000; skipped")
    code, out, err = cli(capsys, "table", "--results-dir", str(tmp_path), "--format", "markdown")
    assert code == 0 and "runs.csv:3: row holds control character U+0000; skipped" in err
    assert out.count("### dataset=") == 1 and "| arch1 | 50.00 (1) |" in out, out
