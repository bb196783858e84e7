"""Rules from outside fabench: the documented example, the two example plugins (dkp, drtp) through
run, grid and table, plugin identity, entry points, and one-line refusals."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fabench.errors import FabenchError
from fabench.rules import apply, load_plugins
from fabench.train.config import RunConfig
from fabench.train.schema import DONE_STATUSES

ROOT = Path(__file__).resolve().parents[1]
DKP, DRTP = ROOT / "examples/plugins/dkp.py", ROOT / "examples/plugins/drtp.py"
TINY = ["--arch", "mlp", "--dataset", "mnist-mini", "--subset", "200", "--epochs", "1", "--batch-size", "50",
        "--device", "cpu", "--workers", "0", "--no-progress"]


def fabench(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """The installed command line in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "fabench", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode != 0 and "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fabench: error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def docs_example(tmp_path: Path) -> Path:
    """The first Python block of docs/writing-rules.md, as a user would save it."""
    text = (ROOT / "docs/writing-rules.md").read_text()
    block = re.search(r"```python[^\n]*\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "my_rule.py"
    path.write_text(block)
    return path


def runs(results: Path) -> list[dict]:
    with open(results / "runs.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# --- the documented example -----------------------------------------------------------------


def test_the_documented_example_plugin_lists_trains_and_takes_its_option(tmp_path):
    plugin = docs_example(tmp_path)
    listed = fabench("ls", "rules", "fa-*", "--plugin", plugin)
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"^fa-ema\t.*\[plugin {re.escape(str(plugin))}\]$", listed.stdout, re.M), listed.stdout
    done = fabench("run", "--plugin", plugin, "--rule", "fa-ema", "--rule-option", "beta=0.2", *TINY,
                   "--results-dir", tmp_path / "r")
    assert done.returncode == 0, done.stderr
    (row,) = runs(tmp_path / "r")
    assert row["rule"] == "fa-ema" and row["status"] in DONE_STATUSES


def test_the_documented_example_moves_b_toward_w_by_beta_each_step(tmp_path):
    load_plugins([docs_example(tmp_path)])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    handle = apply(model, "fa-ema", seed=0, options={"beta": 0.25})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    handle.attach_optimizer(optimizer)
    before = model[2].feedback_weight.clone()
    F.cross_entropy(model(torch.randn(4, 6, dtype=torch.float64)), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    torch.testing.assert_close(model[2].feedback_weight, 0.75 * before + 0.25 * model[2].weight.detach())


# --- the example plugins through run, grid and table --------------------------------------


def test_example_plugins_run_grid_and_table(tmp_path):
    for rule, plugin in (("dkp", DKP), ("drtp", DRTP)):
        done = fabench("run", "--plugin", plugin, "--rule", rule, *TINY, "--results-dir", tmp_path / "run")
        assert done.returncode == 0, done.stderr
    assert {r["rule"]: r["status"] in DONE_STATUSES for r in runs(tmp_path / "run")} == {"dkp": True, "drtp": True}

    task = tmp_path / "tasks" / "plugins.yaml"
    task.parent.mkdir()
    task.write_text(textwrap.dedent("""\
        task: plugin-rules
        version: "1"
        description: "dkp and drtp beside dfa"
        rules: [dfa, dkp, drtp]
        archs: [mlp]
        datasets: [mnist-mini]
        seeds: [0]
        overrides: {subset: 200, epochs: 1, batch_size: 50}
        plugins: [rules/dkp.py]
        """))
    (task.parent / "rules").mkdir()
    (task.parent / "rules" / "dkp.py").write_text(DKP.read_text())  # found relative to the task file
    grid = fabench("grid", task, "--plugin", DRTP, "--workers", "1", "--device", "cpu",  # a spawned worker
                   "--no-progress", "--results-dir", tmp_path / "grid", cwd=tmp_path)
    assert grid.returncode == 0, grid.stderr
    rows = runs(tmp_path / "grid")
    assert sorted(r["rule"] for r in rows) == ["dfa", "dkp", "drtp"] and all(r["status"] in DONE_STATUSES for r in rows)
    table = fabench("table", "--results-dir", tmp_path / "grid")
    assert table.returncode == 0, table.stderr
    assert all(rule in table.stdout for rule in ("dfa", "dkp", "drtp")), table.stdout
    checked = fabench("validate", task, "--plugin", DRTP)
    assert checked.returncode == 0 and "3 cells" in checked.stdout, checked.stdout + checked.stderr
    unchecked = fabench("validate", task)  # without the plugin the rule is unknown, named at its file:line
    assert unchecked.returncode == 1 and f"{task}:4: unknown rule 'drtp'" in unchecked.stdout + unchecked.stderr
    (run_dir,) = [p.parent for p in (tmp_path / "run").glob("adhoc/*/last.pt") if "dkp" in p.parent.joinpath(
        "manifest.json").read_text()]
    evaluated = fabench("eval", run_dir, "--dataset", "mnist-mini", cwd=tmp_path / "tasks")  # its plugin, recorded
    assert evaluated.returncode == 0 and "top1" in evaluated.stdout, evaluated.stderr


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()


def backward_through(model: nn.Module, layer: int, x, y):
    """One backward; returns (δx reaching layer ``layer``'s input, that input, e = ∂L/∂logits)."""
    seen = {}

    def keep(module, args, output):
        args[0].retain_grad()
        seen["x"] = args[0]

    hook = model[layer].register_forward_hook(keep)
    logits = model(x)
    logits.retain_grad()
    F.cross_entropy(logits, y).backward()
    hook.remove()
    return seen["x"].grad, seen["x"].detach(), logits.grad


def test_dkp_sends_d_e_back_and_gives_d_the_update_x_e():
    load_plugins([DKP])
    model = tiny_model()
    handle = apply(model, "dkp", seed=1, input_shape=(7,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    handle.attach_optimizer(optimizer)
    start = model[2].feedback_direct.clone()
    x, y = torch.randn(3, 7, dtype=torch.float64), torch.tensor([0, 3, 1])
    dx, hidden, error = backward_through(model, 2, x, y)
    torch.testing.assert_close(dx, error @ start.t())
    optimizer.step()
    torch.testing.assert_close(model[2].feedback_direct, start - 0.5 * hidden.t() @ error)
    assert model[2].feedback_direct.grad is None  # released after the step
    assert not hasattr(model[0], "feedback_direct")  # the first layer's input needs no δx: no matrix


def test_drtp_projects_the_target_not_the_error():
    load_plugins([DRTP])
    model, reference = tiny_model(), tiny_model()
    apply(model, "drtp", seed=2, input_shape=(7,))
    dfa = apply(reference, "dfa", seed=2, input_shape=(7,))
    x, y = torch.randn(3, 7, dtype=torch.float64), torch.tensor([0, 3, 1])
    dx, _, _ = backward_through(model, 2, x, y)
    matrix = dfa.feedback("2")  # dfa's D for the layer: drtp draws the same
    torch.testing.assert_close(dx, (-F.one_hot(y, 4).double() / 3) @ matrix.t())


# --- identity, entry points and refusals ------------------------------------------------------


def run_id_of(rule: str, plugin: Path) -> str:
    """A run's id as a fresh process computes it (each process loads its own plugins)."""
    code = (f"from fabench.train.config import RunConfig; "
            f"print(RunConfig(rule={rule!r}, plugins=({str(plugin)!r},)).run_id)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_an_edited_plugin_is_another_run_and_a_moved_one_the_same(tmp_path):
    plugin = docs_example(tmp_path)
    first = run_id_of("fa-ema", plugin)
    moved = tmp_path / "elsewhere.py"
    moved.write_text(plugin.read_text())
    assert run_id_of("fa-ema", moved) == first
    plugin.write_text(plugin.read_text().replace("0.01, \"fraction", "0.02, \"fraction"))
    assert run_id_of("fa-ema", plugin) != first


def test_rules_of_an_installed_package_are_found_by_their_entry_point(tmp_path):
    (tmp_path / "my_pkg_rules.py").write_text(docs_example(tmp_path).read_text().replace('"fa-ema"', '"fa-ema-pkg"'))
    info = tmp_path / "my_pkg_rules-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-pkg-rules\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fabench.rules]\nema = my_pkg_rules\n")
    env = {"PYTHONPATH": str(tmp_path)}
    listed = fabench("ls", "rules", "fa-ema*", env=env)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^fa-ema-pkg\t.*\[entry point ema \(my_pkg_rules\)\]$", listed.stdout, re.M), listed.stdout
    done = fabench("run", "--rule", "fa-ema-pkg", *TINY, "--results-dir", tmp_path / "r", env=env)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("source", "fragments"), [
    ("import no_such_module_anywhere\n", ["ModuleNotFoundError", "(line 1)"]),
    ("x = 1\n\n1 / 0\n", ["ZeroDivisionError", "(line 3)"]),
    ("from fabench.rules import Rule, register_rule\n\n@register_rule\nclass R(Rule):\n    name = 'x-rule'\n"
     "    description = 'd'\n    family = 'alien'\n    def feedback(self, layer, weight, buffers):\n        return weight\n",
     ["R.family must be one of bp, random, sign, direct, learned, got 'alien'"]),
    ("from fabench.rules import Rule, register_rule\n\n@register_rule\nclass R(Rule):\n    name = 'fa'\n"
     "    description = 'd'\n    def feedback(self, layer, weight, buffers):\n        return weight\n",
     ["rule 'fa' is already defined (built-in)"]),
    ("from fabench.rules import Rule, register_rule\n\n@register_rule\nclass R(Rule):\n    name = 'no-b'\n"
     "    description = 'd'\n", ["R must override feedback()"]),
])
def test_a_broken_plugin_is_refused_in_one_line_naming_its_file(tmp_path, source, fragments):
    plugin = tmp_path / "broken.py"
    plugin.write_text(source)
    one_line_error(fabench("ls", "rules", "--plugin", plugin), f"plugin {plugin}", *fragments)
    one_line_error(fabench("run", "--plugin", plugin, "--rule", "fa", *TINY, "--results-dir", tmp_path / "r"),
                   f"plugin {plugin}", *fragments)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("args", "fragment"), [
    (["--rule", "fa", "--rule-option", "bogus=1"], "unknown option of rule fa (--rule-option) 'bogus'"),
    (["--rule", "fa", "--rule-option", "mirror_lr=0.1"], "rule option mirror_lr applies to wm only, not fa"),
    (["--rule", "wm", "--rule-option", "mirror_lr=-1"], "rule option mirror_lr must be positive, got -1"),
    (["--rule", "wm", "--rule-option", "mirror_every=never"], "rule option mirror_every must be one of step, epoch"),
    (["--rule", "wm", "--rule-option", "mirror_lr=0.1", "--mirror-lr", "0.2"], "rule option mirror_lr is given twice"),
    (["--rule", "bp", "--rule-option", "scale=0.1"], "rule option scale does nothing under bp"),
    (["--rule", "fa", "--rule-option", "scale=abc"], "rule option scale must be a finite number, got 'abc'"),
    (["--plugin", DKP, "--rule", "dkp", "--rule-option", "feedback_lr_scale=0"],
     "rule option feedback_lr_scale must be positive"),
])
def test_rule_options_are_refused_in_one_line(tmp_path, args, fragment):
    one_line_error(fabench("run", *args, *TINY, "--results-dir", tmp_path / "r"), fragment)


def test_rule_options_reach_the_rule_and_the_run_id():
    handle = apply(tiny_model(), "wm", options={"mirror_lr": 0.05, "mirror_every": "epoch"})
    assert handle.base_rule.settings.mirror_lr == 0.05 and handle.describe()["options"]["mirror_every"] == "epoch"
    flag, option = RunConfig(rule="wm", mirror_lr=0.05), RunConfig(rule="wm", rule_options={"mirror_lr": 0.05})
    assert option.run_id != RunConfig(rule="wm").run_id
    with pytest.raises(FabenchError, match="is given twice"):
        apply(tiny_model(), "wm", options={"mirror_lr": 0.05}, mirror_lr=0.2)
    assert flag.run_id != RunConfig(rule="wm").run_id


def test_a_killed_dkp_run_resumes_to_the_uninterrupted_weights(tmp_path):
    tiny = [value if previous != "--epochs" else "2" for previous, value in zip(["", *TINY[:-1]], TINY, strict=True)]
    settings = ["--plugin", DKP, "--rule", "dkp", *tiny, "--deterministic"]
    killed = fabench("run", *settings, "--results-dir", tmp_path / "killed", env={"FABENCH_FAULT": "sigkill@epoch=1"})
    assert killed.returncode == -9, killed.stderr
    resumed = fabench("run", *settings, "--results-dir", tmp_path / "killed")
    assert resumed.returncode == 0 and "resum" in (resumed.stdout + resumed.stderr).lower(), resumed.stderr
    straight = fabench("run", *settings, "--results-dir", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    (a,), (b,) = (list((tmp_path / name).glob("adhoc/*/last.pt")) for name in ("killed", "straight"))
    a, b = (torch.load(p, map_location="cpu", weights_only=False)["model"] for p in (a, b))
    assert any(k.endswith("feedback_direct") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bench_rules_times_and_costs_a_plugin_rule():
    done = fabench("bench", "rules", "--plugin", DKP, "--rules", "dfa,dkp", "--arch", "arch1", "--batch-size", "16",
                   "--image-size", "24", "--steps", "1", "--rounds", "1")
    assert done.returncode == 0, done.stderr
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("│")}
    assert {"bp", "dfa", "dkp"} <= set(rows), done.stdout


def test_the_cost_model_counts_a_plugin_rules_own_work():
    from fabench.bench.work_model import step_work

    load_plugins([DKP])
    x = torch.randn(8, 7, dtype=torch.float64)
    work = {}
    for rule in ("dfa", "dkp"):
        model = tiny_model()
        handle = apply(model, rule, seed=0, input_shape=(7,))
        work[rule] = step_work(model, handle, x).flops
        matrices = [handle.direct_feedback(n).matrix().numel for n in ("2", "4")]
    assert work["dkp"] - work["dfa"] == sum(2.0 * 8 * n for n in matrices)  # D's update x eᵀ, per step


@pytest.mark.slow
def test_a_plugin_rule_runs_as_a_slurm_array_task_and_under_torchrun(tmp_path):
    task = tmp_path / "array.yaml"
    task.write_text(textwrap.dedent("""\
        task: plugin-array
        version: "1"
        description: "dkp as a SLURM array task"
        rules: [dkp]
        archs: [mlp]
        datasets: [mnist-mini]
        seeds: [0]
        plugins: [dkp.py]
        overrides: {subset: 200, epochs: 1, batch_size: 50}
        """))
    (tmp_path / "dkp.py").write_text(DKP.read_text())
    array = fabench("grid", task, "--launcher", "submitit-local", "--slurm-gpus-per-cell", "0", "--no-progress",
                    "--results-dir", tmp_path / "array", env={"FABENCH_OFFLINE": "1"})
    assert array.returncode == 0, array.stdout + array.stderr
    (row,) = runs(tmp_path / "array")
    assert row["rule"] == "dkp" and row["status"] in DONE_STATUSES

    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "fabench",
              "run", "--plugin", str(DKP), "--rule", "dkp", *TINY, "--results-dir", str(tmp_path / "ddp")]
    ddp = subprocess.run(launch, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    (row,) = runs(tmp_path / "ddp")
    assert row["rule"] == "dkp" and row["status"] in DONE_STATUSES and "2x" in row["device"]
