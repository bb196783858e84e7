"""The handle owns a rule's lifecycle: a hand-written loop making only the documented calls gives
`fabench run`'s weights, for the rules with step and epoch phases (kp, wm)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fabench.train.config import RunConfig
from fabench.train.optim import build_optimizer, build_scheduler
from fabench.train.session import build_model, load_data

SETTINGS = {"arch": "mlp", "dataset": "mnist-mini", "subset": 200, "epochs": 2, "batch_size": 50,
            "weight_decay": 1e-3, "seed": 0}
CASES = [("kp", []), ("wm", []), ("wm", ["--mirror-every", "epoch"])]


def cli_run(tmp_path: Path, rule: str, extra: list[str]) -> dict[str, torch.Tensor]:
    """`fabench run` through the installed entry point; the final weights from its checkpoint."""
    args = [sys.executable, "-m", "fabench", "run", "--rule", rule, "--deterministic", "--device", "cpu",
            "--workers", "0", "--no-progress", "--results-dir", str(tmp_path), *extra]
    for key, value in SETTINGS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(args, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    (checkpoint,) = tmp_path.glob("adhoc/*/last.pt")
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]


def own_loop(rule: str, extra: list[str], *, begin: bool = True) -> dict[str, torch.Tensor]:
    """fabench's model and data, and a plain loop with the handle calls docs/writing-rules.md shows."""
    from fabench.train.batches import RunData

    options = dict(zip((k.lstrip("-").replace("-", "_") for k in extra[::2]), extra[1::2], strict=True))
    config = RunConfig(rule=rule, device="cpu", workers=0, **SETTINGS, **options).resolved()
    dataset = load_data(config)
    data = RunData(dataset, torch.device("cpu"), generator=torch.Generator().manual_seed(config.seed),
                   batch_size=config.batch_size, workers=0, channels_last=False)
    model, handle, _ = build_model(config, dataset, torch.device("cpu"))  # rules.apply(model, rule, seed=0, ...)
    optimizer = build_optimizer(model, config)
    handle.attach_optimizer(optimizer)
    scheduler = build_scheduler(optimizer, config, data.steps_per_epoch)
    if begin:
        handle.begin_training(steps_per_epoch=data.steps_per_epoch)
    with torch.random.fork_rng():
        for _ in range(config.epochs):
            model.train()
            for x, y in data.train_epoch():
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            handle.end_epoch()
    return model.state_dict()


@pytest.mark.parametrize(("rule", "extra"), CASES, ids=["kp", "wm", "wm-per-epoch"])
def test_own_loop_with_the_documented_calls_gives_fabench_runs_weights(tmp_path, rule, extra):
    torch.use_deterministic_algorithms(True)
    try:
        mine = own_loop(rule, extra)
    finally:
        torch.use_deterministic_algorithms(False)
    theirs = cli_run(tmp_path, rule, extra)
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key


def test_a_loop_that_skips_begin_training_gets_another_wm():
    """What the check above would catch: wm's first mirror phase belongs to the handle's lifecycle."""
    with_phase, without = own_loop("wm", []), own_loop("wm", [], begin=False)
    feedback = [key for key in with_phase if key.endswith("feedback_weight")]
    assert feedback and all(not torch.equal(with_phase[key], without[key]) for key in feedback)
