"""Precision and memory layout chosen by measurement: ``--amp auto`` and an unset ``--channels-last``.

On a CPU with native bf16, arch1 and the CIFAR ResNets train in bf16 autocast with channels_last
(measured faster, docs/benchmarks.md); everything else, every other CPU and CUDA keep fp32 NCHW,
under the run ids they had before. The decision is made once, where a run id is computed, and
travels with the config: a grid's worker, a resumed run and ``fabench eval`` never decide again.

The machine is injected (``cpu_has_native_bf16``, ``torch.cuda.is_available``), so every case
is checked on any machine; tests through a subprocess expect what this machine decides.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fabench.archs import ARCHS
from fabench.train import device as machine
from fabench.train.config import RunConfig
from fabench.train.recipes import decide_precision

REPO = Path(__file__).resolve().parent.parent
FABENCH = str(Path(sys.executable).with_name("fabench"))
MEASURED = {"arch1": "arch1 measured 2.57x", "resnet": "CIFAR ResNets measured 1.94x"}
#: A run of seconds: arch1 on 64 images of 16 px, one epoch of two steps.
TINY = {"rule": "fa", "arch": "arch1", "dataset": "cifar10-mini", "subset": 64, "batch_size": 32, "epochs": 1,
        "image_size": 16, "diagnostics": "off", "device": "cpu"}
FP32 = {"amp": "off", "channels_last": False}
#: The same as a task of one cell.
TASK = """\
task: precision
version: "1"
description: one arch1 cell, seconds
rules: [fa]
archs: [arch1]
datasets: [cifar10-mini]
seeds: [0]
overrides: {subset: 64, batch_size: 32, epochs: 1, image_size: 16, diagnostics: "off"}
"""


@pytest.fixture
def native(monkeypatch):
    """Set whether this 'CPU' has native bf16: ``native(True)``; returns the setter."""
    def set_native(value: bool) -> None:
        monkeypatch.setattr(machine, "cpu_has_native_bf16", lambda: value)
    return set_native


# --- the policy: data on the architectures' registrations -----------------------------------------


def test_arch1_and_every_cifar_resnet_declare_bf16_channels_last_and_nothing_else_does():
    specs = {name: ARCHS.get(name) for name in ARCHS}
    declared = {name: (spec.cpu_amp, spec.cpu_channels_last) for name, spec in specs.items()}
    cifar_resnets = {name for name, spec in specs.items() if spec.build.__module__ == "fabench.archs.cifar_resnet"}
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"} <= cifar_resnets
    fast = {"arch1", *cifar_resnets}
    assert {name for name, choice in declared.items() if choice != ("off", False)} == fast
    assert all(declared[name] == ("bf16", True) for name in fast)
    assert {"lenet", "lenet-biotorch", "mlp", "alexnet"} <= set(declared) - fast


# --- the resolution table: arch x device x native bf16 x flags ------------------------------------

CPU_NATIVE = "auto: CPU with native bf16; "
TABLE = [
    # arch, device, native, cuda present, given flags -> amp, channels_last, reason (start)
    ("arch1", "cpu", True, False, {}, "bf16", True, CPU_NATIVE + MEASURED["arch1"]),
    ("fabench:arch1", "cpu", True, False, {}, "bf16", True, CPU_NATIVE + MEASURED["arch1"]),
    ("arch1", "auto", True, False, {}, "bf16", True, CPU_NATIVE + MEASURED["arch1"]),
    ("resnet20", "cpu", True, False, {}, "bf16", True, CPU_NATIVE + MEASURED["resnet"]),
    ("resnet110", "auto", True, False, {}, "bf16", True, CPU_NATIVE + MEASURED["resnet"]),
    ("arch1", "cpu", False, False, {}, "off", False, "auto: this CPU has no native bf16"),
    ("resnet56", "auto", False, False, {}, "off", False, "auto: this CPU has no native bf16"),
    ("arch1", "auto", True, True, {}, "off", False, "auto: fp32 on CUDA"),
    ("arch1", "cuda", True, False, {}, "off", False, "auto: fp32 on CUDA"),
    ("resnet20", "cuda:1", True, True, {}, "off", False, "auto: fp32 on CUDA"),
    ("lenet", "cpu", True, False, {}, "off", False, "auto: lenet keeps fp32 on CPU"),
    ("lenet-biotorch", "cpu", True, False, {}, "off", False, "auto: lenet-biotorch keeps fp32 on CPU"),
    ("mlp", "auto", True, False, {}, "off", False, "auto: mlp keeps fp32 on CPU"),
    ("alexnet", "cpu", True, False, {}, "off", False, "auto: alexnet keeps fp32 on CPU"),
    ("resnet18", "cpu", True, False, {}, "off", False, "auto: resnet18 keeps fp32 on CPU"),
    ("tv:resnet18", "cpu", True, False, {}, "off", False, "auto: tv:resnet18 keeps fp32 on CPU"),
    ("arch1", "cpu", True, False, FP32, "off", False, "set by --amp off --no-channels-last"),
    ("arch1", "cpu", True, False, {"amp": "off"}, "off", False, "set by --amp off; the layout auto: NCHW, as arch1's channels_last was measured with bf16"),
    ("arch1", "cpu", True, False, {"amp": "bf16"}, "bf16", True, "set by --amp bf16; the layout auto: CPU with native"),
    ("arch1", "cpu", True, False, {"channels_last": False}, "bf16", False,
     "set by --no-channels-last; the precision auto: CPU with native"),
    ("lenet", "cpu", True, False, {"amp": "bf16"}, "bf16", False, "set by --amp bf16; the layout auto: lenet keeps"),
    ("lenet", "cpu", False, False, {"amp": "bf16", "channels_last": True}, "bf16", True,
     "set by --amp bf16 --channels-last"),
    ("arch1", "cuda", True, True, {"amp": "fp16"}, "fp16", False, "set by --amp fp16; the layout auto: fp32 on CUDA"),
]


@pytest.mark.parametrize(("arch", "device", "native_bf16", "cuda", "given", "amp", "channels_last", "reason"), TABLE)
def test_the_resolution_table(arch, device, native_bf16, cuda, given, amp, channels_last, reason, native, monkeypatch):
    native(native_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    resolved = RunConfig(arch=arch, device=device, **given).resolved()
    assert (resolved.amp, resolved.channels_last) == (amp, channels_last)
    assert resolved.precision_reason.startswith(reason), resolved.precision_reason


def test_a_decision_made_elsewhere_is_kept_with_its_reason(native):
    native(True)
    decided = RunConfig(device="cpu").resolved()
    native(False)
    again = decide_precision(RunConfig.from_dict(decided.to_dict()))
    assert (again.amp, again.channels_last, again.reason) == ("bf16", True, decided.precision_reason)


def test_native_bf16_means_the_cpu_flags_and_onednn_agree():
    flags = set()
    if sys.platform.startswith("linux"):
        flags = {f for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
                 for f in line.partition(":")[2].split()}
    expected = bool(flags & {"avx512_bf16", "amx_bf16"}) and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert machine.cpu_has_native_bf16() == expected


# --- run ids: fp32 resolutions keep the ids they had --------------------------------------------

#: Run ids computed by fabench before --amp auto (commit 0176852); fp32 NCHW runs keep them.
FP32_IDS = [
    ({"rule": "fa-usf-sn", "arch": "lenet", "dataset": "mnist-mini", "epochs": 1}, "c0f140bfe4fe"),  # README
    ({"arch": "lenet-biotorch", "dataset": "mnist-mini"}, "bbffa9fb3bf5"),
    ({"arch": "mlp", "dataset": "mnist-mini"}, "d2913a156ebb"),
    ({"arch": "alexnet"}, "794d2cff7c4e"),
    ({"arch": "resnet18", "dataset": "cifar10-mini", "epochs": 1}, "8c1e6a0f22b0"),
    ({"arch": "tv:resnet18", "dataset": "cifar10-mini", "epochs": 1}, "9f38acbfa254"),
    ({**FP32}, "7afca3d6a4c5"),  # the default run
    ({**TINY, **FP32}, "8d7f59920295"),
    ({"rule": "fa", "arch": "resnet20", "dataset": "cifar10-mini", "epochs": 1, **FP32}, "c1f2106bcc83"),
    ({"rule": "bp", "arch": "resnet110", "dataset": "cifar10-mini", "epochs": 1, **FP32}, "0ae06389902a"),
    ({"device": "cuda"}, "7afca3d6a4c5"),  # --amp auto on a CUDA device
]


@pytest.mark.parametrize("native_bf16", [True, False])
@pytest.mark.parametrize(("settings", "old_id"), FP32_IDS)
def test_fp32_runs_keep_their_run_ids_on_every_cpu(settings, old_id, native_bf16, native):
    native(native_bf16)
    assert RunConfig(**settings).run_id == old_id


def test_auto_gets_the_id_of_what_it_resolves_to(native):
    native(True)  # the id an explicit --amp bf16 --channels-last run had before
    assert RunConfig(**TINY).run_id == "94b2503ada1c" == RunConfig(**TINY, amp="bf16", channels_last=True).run_id
    native(False)
    assert RunConfig(**TINY).run_id == "8d7f59920295"


def test_amp_auto_on_a_cuda_device_stays_fp32(native, monkeypatch):
    native(True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for device in ("auto", "cuda", "cuda:0"):
        config = RunConfig(**{**TINY, "device": device})
        assert (config.resolved().amp, config.resolved().channels_last) == ("off", False)
        assert config.run_id == "8d7f59920295"


def test_grid_cells_of_the_shipped_tasks_keep_their_ids(native):
    from fabench.tasks import load_task

    native(True)
    mnist = load_task(REPO / "tasks" / "repro-mnist.yaml").cells(results_dir="results", device="cpu")
    assert [c.run_id for c in mnist[:2]] == ["3764c3f97e11", "82e1f927ca01"]  # lenet: fp32 on every CPU
    cifar = load_task(REPO / "tasks" / "repro-cifar.yaml").cells(results_dir="results", device="cuda")
    assert [c.run_id for c in cifar[:2]] == ["16b1efd1661a", "e45421c2092b"]  # arch1 on CUDA: fp32


# --- through the installed entry point -----------------------------------------------------------


def _fabench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FABENCH_OFFLINE": "1"}
    return subprocess.run([FABENCH, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _run_args(settings: dict, results: Path, *extra: str) -> list[str]:
    args = ["run", "--results-dir", str(results), "--no-progress", *extra]
    for key, value in settings.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _manifest(results: Path, run_id: str) -> dict:
    return json.loads((results / "adhoc" / run_id / "manifest.json").read_text())


def test_fabench_run_says_which_precision_ran_and_why(tmp_path):
    results = tmp_path / "results"
    fast = machine.cpu_has_native_bf16()  # what this machine decides for arch1
    done = _fabench(*_run_args(TINY, results), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = "94b2503ada1c" if fast else "8d7f59920295"
    if fast:
        line = f"precision: bf16 autocast, channels_last (auto: CPU with native bf16; {MEASURED['arch1']}"
    else:
        line = "precision: fp32 (auto: this CPU has no native bf16)"
    header = next(text for text in done.stdout.splitlines() if text.startswith(f"[{run_id}] recipe "))
    assert line in header
    manifest = _manifest(results, run_id)
    assert manifest["precision"] == {"amp": "bf16" if fast else "off", "channels_last": fast,
                                     "reason": manifest["config"]["precision_reason"]}
    assert f"({manifest['precision']['reason']})" in header
    with (results / "runs.csv").open(newline="") as handle:
        row = next(csv.DictReader(handle))
    assert (row["run_id"], row["amp"], row["channels_last"]) == (run_id, "bf16" if fast else "off", str(fast))

    old = _fabench(*_run_args(TINY, results, "--amp", "off", "--no-channels-last"), cwd=tmp_path)
    assert old.returncode == 0, old.stdout + old.stderr
    assert "[8d7f59920295] recipe " in old.stdout
    assert "precision: fp32 (set by --amp off --no-channels-last)" in old.stdout
    assert _manifest(results, "8d7f59920295")["precision"]["amp"] == "off"


def test_a_submitit_dry_run_decides_for_the_jobs_gpus(tmp_path):
    from fabench.tasks import load_task

    task = tmp_path / "tiny.yaml"
    task.write_text(TASK)
    cuda_ids = [c.run_id for c in load_task(task).cells(results_dir=str(tmp_path / "results"), device="cuda")]
    listed = _fabench("grid", str(task), "--results-dir", str(tmp_path / "results"), "--launcher", "submitit-local",
                      "--dry-run", cwd=tmp_path)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    cells = [line.split("\t") for line in listed.stdout.splitlines() if line.startswith("todo\t")]
    assert [fields[1] for fields in cells] == cuda_ids


# --- decided once, carried to where the run happens -----------------------------------------------

def test_a_grid_worker_runs_the_precision_and_id_its_parent_decided(tmp_path, native):
    from fabench.tasks import load_task
    from fabench.tasks.grid import run_grid
    from fabench.tasks.pool import GridOptions

    native(not machine.cpu_has_native_bf16())  # the parent decides what the worker's machine would not
    path = tmp_path / "precision.yaml"
    path.write_text(TASK)
    task = load_task(path)
    results = tmp_path / "results"
    (cell,) = task.cells(results_dir=str(results), device="cpu", progress=False)
    summary = run_grid(task, [cell], results, GridOptions(workers=1, progress=False))
    assert summary.finished == 1, summary.line()
    manifest = json.loads((results / "precision" / cell.run_id / "manifest.json").read_text())
    assert manifest["run_id"] == cell.run_id
    assert (manifest["config"]["amp"], manifest["config"]["channels_last"]) == (cell.config.amp, cell.config.channels_last)
    assert manifest["precision"]["reason"] == cell.config.precision_reason


def test_resume_and_eval_use_the_runs_recorded_precision(tmp_path, native, monkeypatch):
    from fabench.train import evaluate_run, run

    native(True)
    config = RunConfig(**TINY, results_dir=str(tmp_path))
    monkeypatch.setenv("FABENCH_FAULT", "sigint@step=1")
    stopped = run(config)
    assert stopped.status == "interrupted"
    monkeypatch.delenv("FABENCH_FAULT")
    native(False)  # this machine would now decide fp32: the recorded run must not
    recorded = RunConfig.from_dict(json.loads((stopped.run_dir / "manifest.json").read_text())["config"])
    events = []
    resumed = run(recorded, on_event=events.append)
    assert resumed.run_dir == stopped.run_dir and events[0]["resumed"]
    assert (resumed.row["amp"], resumed.row["channels_last"]) == ("bf16", True)

    seen = {}
    real = sys.modules["fabench.train.evaluation"].evaluate

    def spy(*args, **kwargs):
        seen.update(amp=kwargs["amp"])
        return real(*args, **kwargs)

    monkeypatch.setattr("fabench.train.evaluation.evaluate", spy)
    evaluate_run(resumed.run_dir, "cifar10-mini", device="cpu")
    assert seen == {"amp": "bf16"}


# --- review follow-ups -----------------------------------------------------------------------------

PLUGIN_ARCH = """\
from torch import nn
from fabench.archs import register_arch


@register_arch("{name}", "a plugin's small net that declares bf16 on the CPU", cpu_amp="bf16",
               cpu_channels_last=True, cpu_measured="{name} measured by its author")
def build(num_classes, in_chans=3, image_size=None):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
"""


def test_a_plugin_architecture_declares_its_precision_before_it_is_loaded(tmp_path, native):
    """`fabench run --plugin` decides before anything else loads the plugin: the decision loads it."""
    native(True)
    name = f"plugnet-{tmp_path.name}".lower()
    plugin = tmp_path / "plugnet.py"
    plugin.write_text(PLUGIN_ARCH.format(name=name))
    assert name not in ARCHS
    decided = decide_precision(RunConfig(arch=name, plugins=(str(plugin),), device="cpu"))
    assert (decided.amp, decided.channels_last) == ("bf16", True)
    assert f"{name} measured by its author" in decided.reason


def test_precision_is_not_a_tuning_setting():
    """A tuned value would leave the pinned decision's reason behind; precision is chosen by measurement."""
    from fabench.errors import FabenchError
    from fabench.tasks._tune_spec import parse_param
    from fabench.train.config import SETTINGS

    types = {name: "str" for name in SETTINGS}
    for name in ("amp", "channels_last", "precision_reason"):
        with pytest.raises(FabenchError, match="tunable run setting"):
            parse_param(name, {"choices": ["off", "bf16"]}, types)
