"""``fabench bench feedback-memory``: what ``dfa`` and ``dense-fa`` cost in each feedback form.

For every case (an architecture at its image size and class count) and every rule, the
benchmark attaches the rule with ``input_shape`` so that the plan (:mod:`fabench.rules._direct`)
is made without allocating anything, and reports:

- the size of the materialised matrices, *computed* from the plan (never allocated to find out);
- for each form (``materialised``, ``tiled``) it can run: the memory the form holds between
  steps, the peak memory one step needs beyond that (:func:`~fabench.bench.memory.step_peak_mib`),
  and the median step time as a ratio to ``bp``, whose steps alternate with the rule's on the
  same model (``handle.exact_backprop()``), so that a shared machine's drift falls on both;
- the arithmetic: the feedback product's FLOPs per step (``2·batch·rows·cols`` per matrix, plus
  dfa-conv's depthwise spreading), the
  FLOPs backprop spends on the same layers' δx (a transposed conv: ``2·batch·d_out·C_in·k²/groups``)
  and, for the tiled form, the random numbers drawn per step.

A form is not run where it cannot finish: ``materialised`` when the matrices exceed
``max_materialise_bytes``, and any form whose estimated step time (random numbers at the
measured draw rate, FLOPs at the measured matmul rate, plus bp's step) exceeds
``max_step_seconds``. Such rows say why, with the estimate. Inputs are random tensors: the
benchmark measures the learning rule, not data loading.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fabench.bench.memory import step_peak_mib
from fabench.bench.timing import median_seconds
from fabench.rules import RandomMatrix
from fabench.train.device import synchronize

FORMS = ("materialised", "tiled")


@dataclass(frozen=True)
class Case:
    """One model configuration: architecture, input size, classes and default batch size."""

    arch: str
    image_size: int
    num_classes: int
    batch_size: int


CASES = {
    "arch1": Case("arch1", 24, 10, 64),
    "resnet20": Case("resnet20", 32, 10, 64),
    "resnet18": Case("resnet18", 224, 1000, 8),
}


@dataclass
class Arithmetic:
    """Per-step work of a rule's feedback on one case, from the plan's shapes."""

    matrix_mib: float
    tile_mib: float
    feedback_gflop: float
    bp_dx_gflop: float
    random_numbers: float


@dataclass
class FormFigures:
    """One (case, rule, form) row: measured figures, or why it was not run."""

    case: str
    rule: str
    form: str
    arithmetic: Arithmetic | None
    held_mib: float | None = None
    peak_mib: float | None = None
    step_s: float | None = None
    bp_step_s: float | None = None
    bp_peak_mib: float | None = None
    note: str = ""

    @property
    def time_ratio(self) -> float | None:
        return self.step_s / self.bp_step_s if self.step_s and self.bp_step_s else None


@dataclass(frozen=True)
class MachineRates:
    """How fast this machine draws the matrices' entries and multiplies matrices.

    ``ns_per_number`` (the counter streams that define the matrices, drawn tile by tile as the
    tiled backward draws them) feeds the estimates; ``randn_ns_per_number``, torch's normal draw
    into the same tile buffer, is printed beside it as the baseline of the same run.
    """

    ns_per_number: float
    randn_ns_per_number: float
    gflop_per_s: float


def measure_rates(device: torch.device) -> MachineRates:
    """Time the drawing of a matrix's tiles (and torch.randn into one tile) and one tile-sized product."""
    matrix = RandomMatrix(0, "rates", "bench", rows=1 << 12, cols=1 << 12, std=1.0)
    tile = torch.empty((matrix.tile_rows(device), matrix.cols), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    left, right = torch.randn(32, 1024, device=device), torch.randn(1024, 4096, device=device)

    def draw_all() -> None:
        for _ in matrix.tiles(device=device, dtype=torch.float32):
            pass
    stream = median_seconds(draw_all, device) / matrix.numel
    randn = median_seconds(lambda: torch.randn(tile.shape, generator=generator, out=tile), device) / tile.numel()
    product = median_seconds(lambda: left.matmul(right), device)
    return MachineRates(stream * 1e9, randn * 1e9, 2 * 32 * 1024 * 4096 / product / 1e9)


def _bp_dx_flops(module: nn.Module, in_shape, out_shape, batch: int) -> float:
    """FLOPs backprop spends on one layer's δx: a transposed conv, or δy·W for a Linear."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return 2.0 * batch * math.prod(out_shape) * (in_shape[0] // module.groups) * kh * kw
    return 2.0 * batch * math.prod(out_shape) * in_shape[-1]


def arithmetic(handle, batch: int) -> Arithmetic:
    """The plan's matrices and the feedback work per step, at ``batch`` images per step."""
    planned = handle.state.planned()
    matrices = [fb.matrix() for fb in planned]
    device = planned[0].module.weight.device if planned else torch.device("cpu")
    return Arithmetic(
        matrix_mib=sum(m.nbytes() for m in matrices) / 2**20,
        tile_mib=max((m.tile_rows(device) * m.cols * 4 for m in matrices), default=0) / 2**20,
        feedback_gflop=sum(fb.product_flops(batch) for fb in planned) / 1e9,
        bp_dx_gflop=sum(_bp_dx_flops(fb.module, fb.in_shape, fb.out_shape, batch) for fb in planned) / 1e9,
        random_numbers=float(sum(m.numel for m in matrices)),
    )


def _estimate_s(form: str, work: Arithmetic, rates: MachineRates, bp_step_s: float) -> float:
    """Rough step time of a form: the feedback product (plus the draws when tiled) on top of bp's step."""
    draws = work.random_numbers * rates.ns_per_number / 1e9 if form == "tiled" else 0.0
    return bp_step_s + draws + work.feedback_gflop / rates.gflop_per_s


class _Bench:
    """One case's model, optimizer and fixed batch; runs a rule for a few steps and measures it."""

    def __init__(self, case: Case, batch_size: int, device: torch.device, seed: int) -> None:
        from fabench.archs import create_model

        torch.manual_seed(seed)
        self.case, self.device, self.seed = case, device, seed
        self.model, _ = create_model(case.arch, num_classes=case.num_classes, in_chans=3, image_size=case.image_size)
        self.model = self.model.to(device).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.x = torch.randn(batch_size, 3, case.image_size, case.image_size, device=device)
        self.y = torch.randint(0, case.num_classes, (batch_size,), device=device)
        self.input_shape = (3, case.image_size, case.image_size)

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.optimizer.step()

    def attach(self, rule: str, form: str = "tiled"):
        from fabench.rules import apply

        handle = apply(self.model, rule, seed=self.seed, feedback_memory=form, input_shape=self.input_shape)
        handle.attach_optimizer(self.optimizer)
        return handle

    def timed_step(self) -> float:
        """Seconds one optimizer step takes, device work included."""
        synchronize(self.device)
        start = time.perf_counter()
        self.step()
        synchronize(self.device)
        return time.perf_counter() - start

    def measure(self, rule: str, form: str, steps: int) -> tuple[float, float, float, float]:
        """(held MiB, step peak MiB, median step s, median bp step s) of ``rule`` in ``form``.

        bp steps alternate with the rule's steps (``handle.exact_backprop()`` on the same model,
        same optimizer), so that a shared machine's drift falls on both alike.
        """
        handle = self.attach(rule, form)
        try:
            self.step()  # warm-up; draws the materialised matrices
            held = sum(b.numel() * b.element_size() for n, b in self.model.named_buffers()
                       if n.endswith("feedback_matrix")) / 2**20
            peak = step_peak_mib(self.step, self.device)
            rule_times, bp_times = [], []
            for _ in range(steps):
                with handle.exact_backprop():
                    bp_times.append(self.timed_step())
                rule_times.append(self.timed_step())
        finally:
            handle.remove()
        return held, peak, statistics.median(rule_times), statistics.median(bp_times)


def run_feedback_memory_benchmark(cases, rules, *, steps: int = 2, batch_size: int | None = None,
                                  device: str = "cpu", max_materialise_bytes: int = 4 << 30,
                                  max_step_seconds: float = 120.0, seed: int = 0, on_row=None,
                                  on_rates=None) -> list[FormFigures]:
    """Measure every (case, rule, form) that can run; return one row per combination.

    ``on_row`` gets each row as it is measured, ``on_rates`` the machine's :class:`MachineRates`.
    """
    from fabench.errors import FabenchError, unknown_choice
    from fabench.rules import DirectRule, parse_rule

    for name in cases:
        if name not in CASES:
            raise unknown_choice("feedback-memory case", name, CASES)
    for rule in rules:
        if not issubclass(parse_rule(rule).base, DirectRule):
            raise FabenchError(f"bench feedback-memory measures dfa, dfa-conv, dfa-wht and dense-fa, got '{rule}'")
    dev = torch.device(device)
    rates = measure_rates(dev)
    if on_rates:
        on_rates(rates)
    rows = []
    for name in cases:
        case = CASES[name]
        bench = _Bench(case, batch_size or case.batch_size, dev, seed)
        bench.step()
        bp_peak = step_peak_mib(bench.step, dev)
        bp_step = statistics.median(bench.timed_step() for _ in range(steps))
        for rule in rules:
            handle = bench.attach(rule)  # the plan only: nothing is drawn before a backward
            work = arithmetic(handle, len(bench.x))
            handle.remove()
            for form in FORMS:
                row = FormFigures(name, rule, form, work, bp_step_s=bp_step, bp_peak_mib=bp_peak)
                estimate = _estimate_s(form, work, rates, bp_step)
                if form == "materialised" and work.matrix_mib * 2**20 > max_materialise_bytes:
                    row.note = f"not allocated: needs {work.matrix_mib / 1024:.1f} GiB"
                elif estimate > max_step_seconds:
                    row.note = f"not run: estimated {estimate:.0f} s/step"
                else:
                    row.held_mib, row.peak_mib, row.step_s, row.bp_step_s = bench.measure(rule, form, steps)
                rows.append(row)
                if on_row:
                    on_row(row)
    return rows
