"""Training processes keep freed memory instead of faulting it in again every step."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fabench._allocator import _glibc

STEPS = """
import resource, sys
from fabench._allocator import keep_freed_memory
print(keep_freed_memory(), file=sys.stderr)
import torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, padding=1))
x = torch.randn(64, 3, 48, 48)
def step():  # activations of 36 MiB each: above glibc's largest mmap threshold (32 MiB)
    net.zero_grad(set_to_none=True)
    net(x).square().mean().backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(extra_env: dict[str, str]) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "FABENCH_MALLOC"}
    env.update(OMP_NUM_THREADS="1", **extra_env)
    done = subprocess.run([sys.executable, "-c", STEPS], env=env, capture_output=True, text=True, check=True)
    return int(done.stdout.strip()), done.stderr.strip()


@pytest.mark.skipif(_glibc() is None, reason="the allocator settings are glibc's")
def test_training_steps_stop_faulting_memory_in():
    kept, how = _faults({})
    default, how_default = _faults({"FABENCH_MALLOC": "default"})
    assert "keeping freed memory" in how
    assert "environment" in how_default
    assert kept * 10 < default, (kept, default)


def test_allocator_left_alone_when_the_environment_sets_it():
    _, how = _faults({"MALLOC_ARENA_MAX": "1"})
    assert how == "malloc as set by the environment"
