"""Run under torchrun by tests/test_distributed.py: several ``fabench run`` commands in one process group.

Each step of the plan (a JSON file, argv[1]) calls the real CLI entry point with its arguments,
optionally with an environment variable set (``FABENCH_FAULT``) or with rank 1 drawing
different feedback weights (``perturb_rank1``), and records the exit code. Every rank writes
its codes to ``codes-<rank>.json`` next to the plan. Running the steps in one launch saves a
torch import per step and exercises the reuse of the process group by a second run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fabench.cli import main
from fabench.rules import _init


def call(argv: list[str]) -> int:
    """Run ``fabench ARGV``; return its exit code."""
    try:
        main(argv)
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def perturbed(draw):
    """``draw_normal`` whose draws are slightly off (rank 1's feedback then differs from rank 0's)."""
    def draw_off(*args, **kwargs):
        return draw(*args, **kwargs) + 1e-3
    return draw_off


def run_step(step: dict) -> int:
    """One plan step with its environment and perturbation, restored afterwards."""
    original = _init.draw_normal
    os.environ.update(step.get("env", {}))
    if step.get("perturb_rank1") and os.environ["RANK"] == "1":
        _init.draw_normal = perturbed(original)
    try:
        return call(step["argv"])
    finally:
        _init.draw_normal = original
        for key in step.get("env", {}):
            os.environ.pop(key, None)


if __name__ == "__main__":
    plan_path = Path(sys.argv[1])
    codes = {step["name"]: run_step(step) for step in json.loads(plan_path.read_text())}
    (plan_path.parent / f"codes-{os.environ['RANK']}.json").write_text(json.dumps(codes))
