"""The scripts in examples/ run as their docstrings say, with every call a rule needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(*args: str) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / "own_loop.py"), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("rule", "model"), [
    ("wm", "test_resnet"),                # a rule that needs begin_training and end_epoch
    ("fa-usf-sn+const", "resnet10t"),     # a modifier, which acts through attach_optimizer
])
def test_own_loop_trains_under_a_rule(rule, model):
    out = run_example("--rule", rule, "--model", model, "--subset", "256", "--epochs", "1")
    assert f"{rule} on {model}:" in out and "0 on backprop" in out, out
    assert "epoch 1: train loss" in out and "after remove():" in out, out
