"""One run over several processes: torchrun + DistributedDataParallel on the CPU (gloo).

The two-process runs are real, started both ways fabench reads a launch: torchrun
(``python -m torch.distributed.run --nproc-per-node 2``) runs a driver that calls the CLI
several times in one process group (tests/ddp_driver.py): bp, fa-usf-sn+const interrupted by
SIGINT on every rank and resumed, a global batch that does not divide, and a rank whose feedback
differs; and two ``python -m fabench run --rule dfa`` processes carry only SLURM's variables, as
``srun`` starts them. Each trained run is compared with the same run in a single process: the
weights after training on the same global batches must agree to floating-point summation order.
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

from fabench.errors import FabenchError
from fabench.train.batches import RankBatches, RankSlices
from fabench.train.config import RunConfig
from fabench.train.parallel import launch as launching
from fabench.train.schema import DONE_STATUSES

REPO = Path(__file__).resolve().parent.parent
#: Global batch 50 (25 images per rank and step). Few steps: float differences in the last bits grow
#: with training, and sign-concordant feedback turns a weight's sign flip near zero into a step.
#: In fp32 NCHW on every CPU (``--amp off --no-channels-last``): the tolerances below are fp32's.
SETTINGS = ["--arch", "arch1", "--dataset", "cifar10-mini", "--image-size", "24",
            "--batch-size", "50", "--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9", "--schedule", "none",
            "--weight-init-scale", "1", "--diagnostics", "off", "--device", "cpu", "--no-progress",
            "--amp", "off", "--no-channels-last"]
RUNS = {"bp": (1, 200), "fa-usf-sn+const": (2, 100), "dfa": (1, 200)}  # rule -> (epochs, subset): 4 steps each


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


def srun_like(argv: list[str]) -> list[subprocess.Popen]:
    """Two ``fabench`` processes with the variables srun gives the tasks of a two-task job step."""
    job = {"SLURM_NTASKS": "2", "SLURM_JOB_ID": str(10000 + os.getpid() % 30000), "MASTER_ADDR": "127.0.0.1"}
    return [subprocess.Popen([sys.executable, "-m", "fabench", *argv], cwd=REPO, text=True,
                             env={**env(), **job, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for rank in (0, 1)]


def run_args(rule: str, results: Path, *extra: str) -> list[str]:
    epochs, subset = RUNS.get(rule, (1, 200))
    settings = list(SETTINGS)
    for option in extra[::2]:  # an option in extra replaces its value in SETTINGS (given twice is refused)
        if option in settings:
            del settings[settings.index(option):settings.index(option) + 2]
    return ["run", "--rule", rule, "--epochs", str(epochs), "--subset", str(subset), *settings,
            "--results-dir", str(results), *extra]


def config_of(rule: str, results: Path) -> RunConfig:
    """The RunConfig the CLI builds from :func:`run_args` (for the single-process reference)."""
    epochs, subset = RUNS[rule]
    return RunConfig(rule=rule, epochs=epochs, arch="arch1", dataset="cifar10-mini", subset=subset, image_size=24,
                     batch_size=50, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="none",
                     weight_init_scale=1.0, amp="off", channels_last=False,
                     diagnostics="off", device="cpu", progress=False, results_dir=str(results))


def env() -> dict[str, str]:
    launch = ("FABENCH_FAULT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    clean = {k: v for k, v in os.environ.items() if k not in launch and not k.startswith("SLURM_")}
    return {**clean, "OMP_NUM_THREADS": "1", "FABENCH_OFFLINE": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Both two-process launches, run side by side; returns their folder, exit codes and output."""
    root = tmp_path_factory.mktemp("ddp")
    ddp = root / "ddp"
    plan = [
        {"name": "bp", "argv": run_args("bp", ddp)},
        {"name": "interrupted", "argv": run_args("fa-usf-sn+const", ddp), "env": {"FABENCH_FAULT": "sigint@step=2"}},
        {"name": "resumed", "argv": run_args("fa-usf-sn+const", ddp)},
        {"name": "odd-batch", "argv": run_args("bp", root / "odd", "--batch-size", "45")},
        {"name": "other-feedback", "argv": run_args("fa", root / "bad"), "perturb_rank1": True},
    ]
    (root / "plan.json").write_text(json.dumps(plan))
    driver = subprocess.Popen(torchrun(str(REPO / "tests" / "ddp_driver.py"), str(root / "plan.json")), cwd=REPO,
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tasks = srun_like(run_args("dfa", ddp))
    srun = [(task.communicate(timeout=300)[0], task.returncode) for task in tasks]
    output, _ = driver.communicate(timeout=300)
    codes = [json.loads((root / f"codes-{rank}.json").read_text()) for rank in (0, 1)]
    return {"root": root, "ddp": ddp, "codes": codes, "output": output, "srun": srun}


def final_weights(results: Path) -> dict[str, torch.Tensor]:
    (checkpoint,) = results.glob("adhoc/*/last.pt")
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]


def rows(results: Path) -> list[dict]:
    with (results / "runs.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
@pytest.mark.parametrize("rule", list(RUNS))
def test_two_processes_train_the_same_weights_as_one(rule, launched, tmp_path):
    from fabench.train import run

    if rule == "dfa":
        assert [code for _, code in launched["srun"]] == [0, 0], launched["srun"]
    else:
        assert launched["codes"][0]["bp"] == 0, launched["output"]
    single = run(config_of(rule, tmp_path))
    assert single.status in DONE_STATUSES  # 4 steps from arch1's init (loss ~4.4): may be "unstable"
    ddp_row = next(r for r in rows(launched["ddp"]) if r["rule"] == rule)
    assert ddp_row["run_id"] == single.row["run_id"] and ddp_row["status"] == single.status
    ddp_dir = launched["ddp"] / "adhoc" / ddp_row["run_id"]
    mine = torch.load(ddp_dir / "last.pt", map_location="cpu", weights_only=True)["model"]
    reference = final_weights(tmp_path)
    assert mine.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(mine[name], tensor, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    # a weight update is not a no-op: the comparison would catch a rank training on the wrong images
    assert float((reference["classifier.5.weight"] - final_weights_at_start(rule)).abs().max()) > 1e-3
    assert float(ddp_row["final_train_loss"]) == pytest.approx(float(single.row["final_train_loss"]), rel=1e-4)
    assert abs(float(ddp_row["final_top1"]) - float(single.row["final_top1"])) <= 0.1
    assert ddp_row["device"].startswith("2x cpu")


def final_weights_at_start(rule: str) -> torch.Tensor:
    """The output layer's weights before training (same seed, same build as the runs)."""
    from fabench.data import load_dataset
    from fabench.train.session import build_model

    dataset = load_dataset("cifar10-mini", data_dir="data", subset=RUNS[rule][1], image_size=24)
    model, _, _ = build_model(config_of(rule, Path("unused")), dataset, torch.device("cpu"))
    return model.state_dict()["classifier.5.weight"]


@pytest.mark.slow
def test_every_rank_stops_at_the_same_step_and_resumes_from_rank_0s_checkpoint(launched):
    assert [c["interrupted"] for c in launched["codes"]] == [130, 130], launched["output"]
    assert [c["resumed"] for c in launched["codes"]] == [0, 0], launched["output"]
    (run_dir,) = [p.parent for p in launched["ddp"].glob("adhoc/*/manifest.json")
                  if json.loads(p.read_text())["config"]["rule"] == "fa-usf-sn+const"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] in DONE_STATUSES  # trained to the end
    assert [r["epoch"] for r in manifest["resumed_at"]] == [1]
    assert manifest["distributed"]["world_size"] == 2 and manifest["distributed"]["batch_per_rank"] == 25
    # only rank 0 wrote: one row per run in runs.csv
    assert sorted(r["rule"] for r in rows(launched["ddp"])) == ["bp", "dfa", "fa-usf-sn+const"]


@pytest.mark.slow
def test_a_global_batch_that_does_not_divide_is_one_error(launched):
    assert [c["odd-batch"] for c in launched["codes"]] == [2, 2]
    assert "--batch-size 45 is the global batch and must be divisible by the 2 processes" in launched["output"]
    assert not (launched["root"] / "odd" / "runs.csv").exists()


@pytest.mark.slow
def test_ranks_with_different_feedback_refuse_to_train(launched):
    assert [c["other-feedback"] for c in launched["codes"]] == [2, 2]
    assert ("replicas differ at start-up: rank 1 has the feedback tensor feedback_weight of layer 'features.0' "
            "unlike rank 0") in launched["output"]
    assert not (launched["root"] / "bad" / "runs.csv").exists()


# --- the pieces, without processes ------------------------------------------------------------

@pytest.mark.parametrize(("environ", "expected"), [
    ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, launching.Launch(1, 4, 1, "torchrun")),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}, launching.Launch(5, 8, 1, "slurm")),
    ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}, None),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),
    ({}, None),
])
def test_launch_is_read_from_torchrun_then_slurm_variables(environ, expected):
    assert launching.detect_launch(environ) == expected


@pytest.mark.parametrize(("environ", "message"), [
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' must be an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "rank 2 is outside the world of 2 processes"),
])
def test_a_malformed_launch_is_one_error(environ, message):
    with pytest.raises(FabenchError, match=message):
        launching.detect_launch(environ)


def test_a_pinned_gpu_is_refused_with_several_processes():
    with pytest.raises(FabenchError, match="would put every process on one GPU"):
        launching.rank_device("cuda:1", launching.Launch(0, 2, 0, "torchrun"))
    assert launching.rank_device("cpu", launching.Launch(1, 2, 1, "torchrun")) == torch.device("cpu")


def _run_data(seed: int = 0):
    from fabench.data import load_dataset
    from fabench.train.batches import RunData

    dataset = load_dataset("cifar10-mini", data_dir="data", subset=200, image_size=24)
    return RunData(dataset, torch.device("cpu"), generator=torch.Generator().manual_seed(seed), batch_size=50)


def test_the_ranks_slices_make_up_exactly_the_single_process_batches():
    whole = list(_run_data().train_epoch())
    shards = [list(_run_data().shard(rank, 2).train_epoch()) for rank in (0, 1)]
    assert len(whole) == len(shards[0]) == len(shards[1]) == 4
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *shards, strict=True):
        assert x0.shape[0] == x1.shape[0] == 25
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_the_ranks_test_batches_cover_the_test_split_once():
    whole = torch.cat([y for _, y in _run_data().test()])
    shards = [torch.cat([y for _, y in _run_data().shard(r, 3).test()]) for r in range(3)]
    assert sum(len(s) for s in shards) == len(whole)
    assert sorted(torch.cat(shards).tolist()) == sorted(whole.tolist())


def test_folder_slices_partition_each_global_batch():
    generators = [torch.Generator().manual_seed(3) for _ in range(4)]
    slices = [list(RankSlices(103, 20, rank, 4, generators[rank])) for rank in range(4)]
    order = torch.randperm(103, generator=torch.Generator().manual_seed(3)).tolist()
    for step in range(5):
        assert [i for s in slices for i in s[step]] == order[step * 20:(step + 1) * 20]
    assert list(RankBatches(10, 3, 1, 2)) == [[3, 4, 5], [9]]
