"""Task files: grid expansion, include inheritance, and validation errors that name file:line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from cli_helpers import cli

from fabench.tasks import TaskFileError, check_file, load_task, select_cells

REPO_TASKS = Path(__file__).resolve().parent.parent / "tasks"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path




GOOD = """
    task: tiny
    version: 2
    description: a tiny grid
    notes: every value is made up for the test
    rules: [bp, fa]
    archs: [arch1, lenet]
    datasets: [cifar10-mini]
    seeds: [0, 1]
    overrides:
      epochs: 3
      lr: 1e-2
      subset: 100
    variants:
      sgd: {optimizer: sgd}
      adam: {optimizer: adam, lr: 1.0e-3}
    when:
      - match: {arch: lenet, variant: adam}
        set: {lr: 5.0e-4}
      - match: {rule: "f*", seed: 1}
        set: {epochs: 4}
"""


def test_expansion_axes_variants_and_precedence(tmp_path):
    task = load_task(write(tmp_path, "tiny.yaml", GOOD))
    cells = task.cells(results_dir=str(tmp_path / "results"))
    assert len(cells) == 2 * 2 * 2 * 2
    assert len({c.run_id for c in cells}) == len(cells)
    by_label = {c.label: c.config for c in cells}
    # overrides < variant < when, in file order; "1e-2" (a YAML string) became a float
    assert by_label["arch1/bp/cifar10-mini/s0/sgd"].lr == 0.01
    assert by_label["arch1/bp/cifar10-mini/s0/adam"].lr == 1e-3
    assert by_label["lenet/bp/cifar10-mini/s0/adam"].lr == 5e-4
    assert by_label["lenet/fa/cifar10-mini/s1/sgd"].epochs == 4
    assert by_label["lenet/bp/cifar10-mini/s1/sgd"].epochs == 3
    config = by_label["arch1/fa/cifar10-mini/s0/sgd"]
    assert (config.task, config.task_version, config.subset, config.results_dir) == ("tiny", "2", 100, str(tmp_path / "results"))
    # seeds outermost: the first half of the grid is seed 0
    assert {c.seed for c in cells[:8]} == {0}
    chosen = select_cells(cells, rule=["f*"], arch=["lenet"], variant=["adam"])
    assert [c.label for c in chosen] == ["lenet/fa/cifar10-mini/s0/adam", "lenet/fa/cifar10-mini/s1/adam"]
    assert len(select_cells(cells, limit=3)) == 3


def test_placement_does_not_change_run_id(tmp_path):
    task = load_task(write(tmp_path, "tiny.yaml", GOOD))
    given = {"amp": "off", "channels_last": False}  # the device decides --amp auto only (tests/test_precision.py)
    here = [c.run_id for c in task.cells(results_dir="a", device="cpu", **given)]
    there = [c.run_id for c in task.cells(results_dir="b", device="cuda", **given)]
    assert here == there


def test_include_local_keys_win_and_settings_merge(tmp_path):
    write(tmp_path, "_base.yaml", """
        rules: [bp, fa, fa-usf]
        archs: [arch1]
        datasets: [cifar10-mini]
        seeds: [0]
        overrides: {epochs: 5, lr: 0.1, batch_size: 32}
        when:
          - match: {rule: fa}
            set: {lr: 0.5}
    """)
    child = write(tmp_path, "child.yaml", """
        task: child
        version: "1"
        description: inherits the base
        include: _base.yaml
        rules: [bp, fa]
        overrides: {lr: 0.01}
        when:
          - match: {rule: bp}
            set: {batch_size: 16}
    """)
    task = load_task(child)
    assert task.rules == ("bp", "fa")
    assert task.overrides == {"epochs": 5, "lr": 0.01, "batch_size": 32}
    configs = {c.rule: c.config for c in task.cells()}
    assert (configs["fa"].lr, configs["fa"].batch_size) == (0.5, 32)
    assert (configs["bp"].lr, configs["bp"].batch_size, configs["bp"].epochs) == (0.01, 16, 5)


def test_include_cycle_is_an_error_naming_the_line(tmp_path):
    write(tmp_path, "a.yaml", "task: a\nversion: 1\ninclude: b.yaml\n")
    b = write(tmp_path, "b.yaml", "description: x\ninclude: a.yaml\n")
    with pytest.raises(TaskFileError) as err:
        load_task(tmp_path / "a.yaml")
    assert str(err.value).startswith(f"{b}:2: include cycle: a.yaml -> b.yaml -> a.yaml")


def test_errors_in_included_files_name_the_included_file(tmp_path):
    base = write(tmp_path, "_base.yaml", "rules: [bp, nope]\narchs: [arch1]\ndatasets: [cifar10-mini]\nseeds: [0]\n")
    write(tmp_path, "child.yaml", "task: child\nversion: 1\ndescription: d\ninclude: _base.yaml\n")
    report = check_file(tmp_path / "child.yaml")
    assert [str(p.where) for p in report.problems] == [f"{base}:1"]
    assert "unknown rule 'nope'" in report.problems[0].message


BAD_CASES = {
    "bad-yaml": ("rules: [bp, fa\narchs: [arch1]\n", 3, "invalid YAML: while parsing a flow sequence (opened on line 2)"),
    "unknown-key": ("ruels: [bp]\n", 8, "unknown task key 'ruels'"),
    "unknown-rule": ("", 4, "unknown rule 'fa-usff'"),
    "unknown-arch": ("", 5, "unknown architecture 'arhc1'"),
    "unknown-dataset": ("", 6, "unknown dataset 'cifar11'"),
    "bad-override-type": ("overrides:\n  epochs: 3\n  lr: fast\n", 10, "'lr' must be a number or null, got 'fast'"),
    "bad-override-value": ("overrides:\n  epochs: 0\n", 9, "--epochs must be at least 1"),
    "unknown-setting": ("overrides:\n  learning_rate: 0.1\n", 9, "unknown run setting 'learning_rate'"),
    "placement-setting": ("overrides:\n  results_dir: /tmp\n", 9, "give it on the command line"),
    "duplicate-key": ("seeds: [1]\n", 8, "duplicate key 'seeds'"),
    "when-matches-nothing": ("when:\n  - match: {arch: arch2}\n    set: {lr: 0.1}\n", 9, "matches no cell"),
    "duplicate-rule": ("", 4, "'bp' is listed twice"),
    "schedule-without-milestones": ("overrides:\n  epochs: 3\n  schedule: multistep\n", 10,
                                    "--schedule multistep needs --milestones"),
    "bad-feedback-init": ("when:\n  - match: {rule: fa}\n    set:\n      feedback_init: gaussian\n", 11,
                          "--feedback-init must be one of auto, kaiming, xiao, xavier, weight, got 'gaussian'"),
}
BASE_BODY = """task: {name}
version: 1
description: a broken task
rules: [bp, {rule}]
archs: [{arch}]
datasets: [{dataset}]
seeds: [0]
"""


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_validate_names_file_and_line_of_each_kind_of_error(tmp_path, capsys, case):
    extra, line, message = BAD_CASES[case]
    fields = {"name": case, "rule": "fa", "arch": "arch1", "dataset": "cifar10-mini"}
    fields |= {"unknown-rule": {"rule": "fa-usff"}, "unknown-arch": {"arch": "arhc1"},
               "unknown-dataset": {"dataset": "cifar11"}, "duplicate-rule": {"rule": "bp"}}.get(case, {})
    text = BASE_BODY.format(**fields) + extra
    if case == "bad-yaml":
        text = "task: bad-yaml\n" + extra
    path = write(tmp_path, f"{case}.yaml", text)
    code, _out, err = cli(capsys, "validate", str(path))
    assert code == 1
    assert f"{path}:{line}: " in err, err
    assert message in err, err
    assert "Traceback" not in err


def test_validate_all_files_in_a_tasks_dir_and_exit_zero_when_clean(tmp_path, capsys):
    write(tmp_path, "tiny.yaml", GOOD)
    write(tmp_path, "_frag.yaml", "overrides: {epochs: 2}\n")
    code, out, err = cli(capsys, "validate", "--tasks-dir", str(tmp_path))
    assert code == 0, err
    assert "tiny v2\t16 cells" in out
    assert "(fragment)" in out


def test_missing_required_key_and_duplicate_task_names(tmp_path, capsys):
    write(tmp_path, "one.yaml", GOOD)
    write(tmp_path, "two.yaml", GOOD)
    write(tmp_path, "three.yaml", "task: three\nversion: 1\n")
    code, _out, err = cli(capsys, "validate", "--tasks-dir", str(tmp_path))
    assert code == 1
    assert f"{tmp_path / 'three.yaml'}:1: missing required key 'description'" in err
    assert f"{tmp_path / 'two.yaml'}:1: task 'tiny' is also defined in" in err


def test_ls_tasks_lists_good_tasks_and_reports_broken_files_loudly(tmp_path, capsys):
    write(tmp_path, "tiny.yaml", GOOD)
    broken = write(tmp_path, "broken.yaml", "task: broken\nrules: [bp\n")
    code, out, err = cli(capsys, "ls", "tasks", "--tasks-dir", str(tmp_path))
    assert code == 1
    assert "tiny\t2\t16\ta tiny grid" in out
    assert f"{broken}:" in err and "invalid YAML" in err


def test_shipped_tasks_validate():
    """Every task file in the repository's tasks/ folder is valid (rules, archs, datasets, settings)."""
    from fabench.tasks import scan

    reports = scan([REPO_TASKS], fragments=True)
    problems = [str(p) for r in reports for p in r.problems]
    assert not problems, "\n".join(problems)
    names = {r.task.name for r in reports if r.task}
    assert {"smoke", "paper-mnist", "paper-cifar10", "paper-imagenet", "biotorch-cifar10"} <= names


def test_biotorch_task_uses_the_per_rule_learning_rates_of_its_configs():
    """Checked against jsalbert/biotorch benchmark_configs (see the task file's comments)."""
    cells = load_task(REPO_TASKS / "biotorch-cifar10.yaml").cells()
    assert len(cells) == 3 * 6 * 2
    lr = {(c.arch, c.rule, c.variant): c.config.lr for c in cells}
    # BioTorch's "dfa" is its DFA layer, fabench's dfa-conv; its CIFAR "LeNet" is lenet-biotorch
    assert lr["lenet-biotorch", "fa", "sgd"] == 1e-3 and lr["lenet-biotorch", "dfa-conv", "sgd"] == 1e-4
    assert lr["lenet-biotorch", "fa", "adam"] == 1e-4 and lr["lenet-biotorch", "fa-usf", "adam"] == 1e-3
    assert lr["resnet20", "dfa-conv", "sgd"] == 1e-3 and lr["resnet56", "bp", "sgd"] == 0.1
    assert all(c.config.milestones == [100, 150, 200] for c in cells)
    resolved = [c.config.resolved() for c in cells]
    assert {(c.weight_init, c.weight_init_scale, c.val_split) for c in resolved} == {("xavier-uniform", 1.0, 5000)}
    assert {c.feedback_init for c in resolved if c.rule != "bp"} == {"xavier"}
