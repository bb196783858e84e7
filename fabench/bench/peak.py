"""``fabench bench peak``: how close a training step comes to the machine's arithmetic limit.

In one process: the machine's matmul rate in float32 and bfloat16 (a square matmul, the best
case for its cores), one training step's FLOPs (PyTorch's FLOP counter over forward and
backward), and the step's time under each precision and memory layout, for a plain PyTorch step
and for the same step with a fabench rule attached. Achieved GFLOP/s is FLOPs over time; the
fraction of peak divides it by the matmul rate of the dtype the convolutions ran in. Every
figure comes from this run; rounds rotate the order of the timed steps so slow drift of a
shared machine falls on all of them. Peaks and steps are the fastest of their repeats: the
figures least disturbed by other load, and so comparable with each other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from fabench.bench.rules import BenchSetup
from fabench.train.device import autocast, synchronize


@dataclass(frozen=True)
class Setting:
    """A precision and memory layout a step can run in."""

    name: str
    amp: str
    channels_last: bool

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.amp == "bf16" else torch.float32


FP32 = Setting("fp32, NCHW", "off", False)
BF16_NHWC = Setting("bf16, channels_last", "bf16", True)
SETTINGS = (FP32, BF16_NHWC)


@dataclass
class StepFigure:
    """One timed step: its setting, the rule attached ("plain": none), fastest seconds."""

    setting: Setting
    rule: str
    seconds: float


@dataclass
class PeakFigures:
    peak_gflops: dict[torch.dtype, float]
    step_gflop: float
    batch_size: int
    steps: list[StepFigure]

    def achieved_gflops(self, step: StepFigure) -> float:
        return self.step_gflop / step.seconds

    def fraction_of_peak(self, step: StepFigure) -> float:
        return self.achieved_gflops(step) / self.peak_gflops[step.setting.dtype]

    def find(self, setting: Setting, rule: str) -> StepFigure:
        return next(s for s in self.steps if s.setting == setting and s.rule == rule)


def matmul_gflops(dtype: torch.dtype, device: torch.device, size: int = 1024) -> float:
    """The rate of a ``size``² by ``size``² matmul in ``dtype``: the machine's practical peak."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    repeats = 4
    seconds = fastest_seconds(lambda: [a @ b for _ in range(repeats)], device, repeats=5)
    return 2 * size**3 * repeats / seconds / 1e9


def fastest_seconds(fn, device: torch.device, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` after one warm-up call."""
    fn()
    runs = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        runs.append(time.perf_counter() - start)
    return min(runs)


def step_gflop(setup: BenchSetup) -> float:
    """FLOPs of one forward and backward pass (PyTorch's FLOP counter), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    model, x, y = _model_and_batch(setup, FP32)
    counter = FlopCounterMode(display=False)
    with counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / 1e9


def _model_and_batch(setup: BenchSetup, setting: Setting):
    from fabench.archs import create_model

    device = torch.device(setup.device)
    torch.manual_seed(setup.seed)
    model, _ = create_model(setup.arch, num_classes=setup.num_classes, in_chans=3, image_size=setup.image_size)
    layout = torch.channels_last if setting.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=layout).train()
    x = torch.randn(setup.batch_size, 3, setup.image_size, setup.image_size, device=device)
    y = torch.randint(0, setup.num_classes, (setup.batch_size,), device=device)
    return model, x.contiguous(memory_format=layout), y


def _stepper(setup: BenchSetup, setting: Setting, rule: str):
    """A training step under ``setting``; with ``rule`` other than "plain" the rule is attached."""
    from fabench.rules import apply

    model, x, y = _model_and_batch(setup, setting)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    device = torch.device(setup.device)
    if rule != "plain":
        side = setup.image_size
        apply(model, rule, seed=setup.seed, input_shape=(3, side, side)).attach_optimizer(optimizer)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(setting.amp, device):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return step


def time_steps(setup: BenchSetup, rule: str, *, steps: int, rounds: int) -> list[StepFigure]:
    """Fastest seconds per step of every setting, plain and with ``rule``, in rotated order."""
    device = torch.device(setup.device)
    slots = [(setting, name) for setting in SETTINGS for name in ("plain", rule)]
    steppers = {slot: _stepper(setup, *slot) for slot in slots}
    times = {slot: [] for slot in slots}
    for round_index in range(rounds + 1):  # round 0 warms up and is discarded
        shift = round_index % len(slots)
        for slot in [*slots[shift:], *slots[:shift]]:
            steppers[slot]()
            for _ in range(steps):
                synchronize(device)
                start = time.perf_counter()
                steppers[slot]()
                synchronize(device)
                if round_index:
                    times[slot].append(time.perf_counter() - start)
    return [StepFigure(setting, name, min(times[(setting, name)])) for setting, name in slots]


def run_peak_benchmark(setup: BenchSetup, rule: str, *, steps: int, rounds: int) -> PeakFigures:
    """Matmul peaks, the step's FLOPs and the timed steps, all measured in this process."""
    device = torch.device(setup.device)
    peaks = {dtype: matmul_gflops(dtype, device) for dtype in (torch.float32, torch.bfloat16)}
    return PeakFigures(peaks, step_gflop(setup), setup.batch_size,
                       time_steps(setup, rule, steps=steps, rounds=rounds))
