"""``fabench bench rules``: step time and peak memory of every rule as a ratio to backprop.

Each round visits every rule (bp included) in a rotated order, attaching the rule to the same
model, timing ``steps`` optimizer steps and removing it again, so slow drift of a shared
machine falls on all rules alike. Reported: the median step time over all rounds, the peak
memory one step needs beyond what is held before it (activations, gradients and the rule's
transient B), and the persistent feedback state the rule holds (e.g. ``fa``'s B0). Inputs
are random tensors of the requested shape: the benchmark measures the learning rule, not
data loading.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from fabench.bench.memory import step_peak_mib, tensor_mib

DEFAULT_RULES = ("bp", "fa", "fa-usf", "fa-usf-init", "fa-usf-sn", "fa-frsf", "fa-brsf", "fa-usf-sn+const")


@dataclass
class RuleFigures:
    rule: str
    step_ms: float
    peak_mib: float
    state_mib: float


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_step(model, optimizer, x, y):
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
    return step


def _feedback_state(handle) -> float:
    return tensor_mib(b for m in handle.layers.values() for n, b in m.named_buffers(recurse=False) if n.startswith("feedback_"))


def run_rule_benchmark(arch: str, rules, *, batch_size: int, image_size: int, num_classes: int,
                       steps: int, rounds: int, device: str = "cpu", seed: int = 0) -> list[RuleFigures]:
    """Measure every rule on one model; return figures in the order of ``rules``."""
    from fabench.archs import create_model
    from fabench.rules import apply, parse_rule

    for rule in rules:
        parse_rule(rule)
    dev = torch.device(device)
    torch.manual_seed(seed)
    model, _ = create_model(arch, num_classes=num_classes, in_chans=3, image_size=image_size)
    model = model.to(dev).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)
    step = _make_step(model, optimizer, x, y)
    times = {rule: [] for rule in rules}
    peaks = {rule: [] for rule in rules}
    state = {}
    for round_index in range(rounds + 1):  # round 0 warms up and is discarded
        order = list(rules[round_index % len(rules):]) + list(rules[:round_index % len(rules)])
        for rule in order:
            handle = apply(model, rule, seed=seed)
            handle.attach_optimizer(optimizer)
            step()
            peak = step_peak_mib(step, dev)
            for _ in range(steps):
                _synchronize(dev)
                start = time.perf_counter()
                step()
                _synchronize(dev)
                if round_index:
                    times[rule].append(time.perf_counter() - start)
            if round_index:
                peaks[rule].append(peak)
            state[rule] = _feedback_state(handle)
            handle.remove()
    return [RuleFigures(r, 1000 * statistics.median(times[r]), statistics.median(peaks[r]), state[r]) for r in rules]
