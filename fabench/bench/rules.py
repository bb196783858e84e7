"""``fabench bench rules``: step time and peak memory of every rule as a ratio to backprop.

Time: each round visits every rule (bp included) in a rotated order, attaching the rule to the
same model, timing ``steps`` optimizer steps and removing it again, so slow drift of a shared
machine falls on all rules alike; the median over rounds is reported.

Memory, per rule: the *step peak* (what one training step allocates at its peak beyond what was
held before it: activations, gradients, the rule's transient B) and the *total peak* (the step
peak plus the tensors held between steps: parameters, buffers including the rule's persistent
feedback state, optimizer state), which is what ``torch.cuda.max_memory_allocated`` reports on
a GPU. On the CPU the memory pass runs in a child process started with
:data:`~fabench.bench.memory.STEADY_MALLOC_ENV`, so that the resident set follows live tensors
there, while the timing pass keeps the allocator settings a real run has.

Inputs are random tensors of the requested shape: the benchmark measures the learning rule, not
data loading.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

from fabench.bench.memory import STEADY_MALLOC_ENV, step_peak_mib, tensor_mib
from fabench.errors import FabenchError
from fabench.train.device import synchronize


@dataclass(frozen=True)
class BenchSetup:
    """What every pass of the benchmark builds: one model, one batch, one optimizer."""

    arch: str
    batch_size: int
    image_size: int
    num_classes: int
    device: str = "cpu"
    seed: int = 0
    #: files or modules whose rules to load (``--plugin``), in this process and the memory pass's
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from fabench.rules import load_plugins

        object.__setattr__(self, "plugins", tuple(self.plugins))  # a JSON list in the memory pass
        load_plugins(self.plugins)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One sample's shape, so that rules that plan from it (dfa's matrices, dkp's) do so at attach."""
        return 3, self.image_size, self.image_size

    def check(self) -> BenchSetup:
        """Refuse, with one line each, what the benchmark cannot run; build and run the model once."""
        from fabench.archs import check_arch
        from fabench.train.device import resolve_device

        for value, option in ((self.batch_size, "--batch-size"), (self.image_size, "--image-size"),
                              (self.num_classes, "--num-classes")):
            if value < 1:
                raise FabenchError(f"{option} must be at least 1, got {value}")
        resolve_device(self.device)
        check_arch(self.arch)
        _, _, step, _ = _build(self)
        try:
            step()
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise FabenchError(f"{self.arch} cannot train on {self.image_size}x{self.image_size} inputs "
                               f"({first}); use a larger --image-size") from None
        return self


@dataclass
class RuleFigures:
    rule: str
    step_ms: float
    step_peak_mib: float
    total_peak_mib: float
    state_mib: float
    #: the work model's floor for this rule's step (fabench.bench.work_model), and its FLOPs
    model_ms: float = float("nan")
    model_gflop: float = float("nan")


def _build(setup: BenchSetup):
    """Model, optimizer and a training step on a fixed random batch."""
    from fabench.archs import create_model

    dev = torch.device(setup.device)
    torch.manual_seed(setup.seed)
    model, _ = create_model(setup.arch, num_classes=setup.num_classes, in_chans=3, image_size=setup.image_size)
    model = model.to(dev).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(setup.batch_size, 3, setup.image_size, setup.image_size, device=dev)
    y = torch.randint(0, setup.num_classes, (setup.batch_size,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
    return model, optimizer, step, dev


def _feedback_state(handle) -> float:
    return tensor_mib(handle.rule_buffers().values())


def _resident_mib(model, optimizer) -> float:
    """Tensors held between steps: parameters, buffers and optimizer state."""
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return tensor_mib([*model.parameters(), *model.buffers(), *state])


def measure_memory(setup: BenchSetup, rules) -> dict[str, tuple[float, float, float]]:
    """Per rule: (step peak, total peak, persistent feedback state), in MiB, in this process."""
    from fabench.rules import apply

    model, optimizer, step, dev = _build(setup)
    figures = {}
    for rule in rules:
        handle = apply(model, rule, seed=setup.seed, input_shape=setup.input_shape)
        handle.attach_optimizer(optimizer)
        step()
        step()
        peak = min(step_peak_mib(step, dev) for _ in range(2))
        figures[rule] = (peak, peak + _resident_mib(model, optimizer), _feedback_state(handle))
        handle.remove()
    return figures


def measure_memory_in_child(setup: BenchSetup, rules) -> dict[str, tuple[float, float, float]]:
    """:func:`measure_memory` in a fresh interpreter with steady malloc settings (CPU only)."""
    payload = json.dumps({"setup": asdict(setup), "rules": list(rules)})
    env = {**os.environ, **STEADY_MALLOC_ENV}
    done = subprocess.run([sys.executable, "-m", "fabench.bench.rules", payload], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise FabenchError(f"the memory pass failed: {lines[-1]}")
    return {rule: tuple(values) for rule, values in json.loads(done.stdout.splitlines()[-1]).items()}


#: Label of a second bp slot timed like every rule: its ratio to bp is the noise floor.
CONTROL = "bp (control)"


def measure_time(setup: BenchSetup, rules, *, steps: int, rounds: int) -> dict[str, float]:
    """Median step time per rule in ms, rules alternating in rotated order every round.

    A second bp slot, :data:`CONTROL`, is timed alongside: how far its ratio to bp strays from
    1 shows how much of any ratio is the machine's noise rather than the rule.
    """
    from fabench.rules import apply

    model, optimizer, step, dev = _build(setup)
    labels = [*rules, CONTROL]
    times = {label: [] for label in labels}
    for round_index in range(rounds + 1):  # round 0 warms up and is discarded
        shift = round_index % len(labels)
        for rule in [*labels[shift:], *labels[:shift]]:
            handle = apply(model, "bp" if rule == CONTROL else rule, seed=setup.seed, input_shape=setup.input_shape)
            handle.attach_optimizer(optimizer)
            step()
            for _ in range(steps):
                synchronize(dev)
                start = time.perf_counter()
                step()
                synchronize(dev)
                if round_index:
                    times[rule].append(time.perf_counter() - start)
            handle.remove()
    return {rule: 1000 * statistics.median(values) for rule, values in times.items()}


def measure_model(setup: BenchSetup, rules) -> dict[str, tuple[float, float]]:
    """Per rule: the work model's floor for one step (ms) at this machine's rates, and its GFLOPs."""
    from fabench.bench.work_model import measure_rates, roofline_seconds, step_work
    from fabench.rules import apply

    model, _, _, dev = _build(setup)
    x = torch.randn(setup.batch_size, 3, setup.image_size, setup.image_size, device=dev)
    rates = measure_rates(dev)
    figures = {}
    for rule in rules:
        handle = apply(model, rule, seed=setup.seed, input_shape=setup.input_shape)
        work = step_work(model, handle, x)
        figures[rule] = (1000 * roofline_seconds(work, rates), work.flops / 1e9)
        handle.remove()
    return figures


def run_rule_benchmark(setup: BenchSetup, rules, *, steps: int, rounds: int) -> list[RuleFigures]:
    """Time and memory of every rule on one model, in the order of ``rules``."""
    from fabench.rules import parse_rule

    if steps < 1 or rounds < 1:
        raise FabenchError(f"--steps and --rounds must be at least 1, got {steps} and {rounds}")
    for rule in rules:
        parse_rule(rule)
    setup.check()
    on_cpu = torch.device(setup.device).type == "cpu" and os.path.exists("/proc/self/clear_refs")
    memory = measure_memory_in_child(setup, rules) if on_cpu else measure_memory(setup, rules)
    times = measure_time(setup, rules, steps=steps, rounds=rounds)
    models = measure_model(setup, rules)
    figures = [RuleFigures(rule, times[rule], *memory[rule], *models[rule]) for rule in rules]
    return [*figures, RuleFigures(CONTROL, times[CONTROL], *memory["bp"], *models["bp"])]


if __name__ == "__main__":  # the memory pass's child process
    request = json.loads(sys.argv[1])
    result = measure_memory(BenchSetup(**request["setup"]), request["rules"])
    print(json.dumps(result))
