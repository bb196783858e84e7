"""``fabench bench biotorch``: fabench's rules against BioTorch's layers, step time vs bp.

BioTorch (Sanfiz & Akrout 2021, ``pip install biotorch``) is the prior art: it replaces each
Conv2d/Linear by its own layer classes. This benchmark trains the same architecture on the same
random batch under plain backprop, under each fabench rule and under the matching BioTorch mode,
alternating all of them every round (rotated order), and reports median step times as ratios to
bp, so both implementations are measured the same way on the same machine. BioTorch is imported
only here and only if installed; fabench does not depend on it.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from fabench.errors import FabenchError

#: fabench rule -> BioTorch mode of the same definition.
BIOTORCH_MODES = {"fa": "fa", "fa-usf": "usf", "fa-frsf": "frsf", "fa-brsf": "brsf"}


def _biotorch_module():
    try:
        from biotorch.module.biomodule import BioModule
    except ImportError:
        raise FabenchError("BioTorch is not installed; `pip install --no-deps biotorch jsonschema` "
                           "adds it without touching torch") from None
    return BioModule


def _contestants(arch: str, rules, num_classes: int, image_size: int) -> dict:
    """Label -> (model, handle or None): bp, each fabench rule, each BioTorch mode."""
    from fabench.archs import create_model
    from fabench.rules import apply

    bio_module = _biotorch_module()
    torch.manual_seed(0)
    base, _ = create_model(arch, num_classes=num_classes, in_chans=3, image_size=image_size)
    entries = {"bp": (base, None)}
    for rule in rules:
        model = copy.deepcopy(base)
        entries[f"fabench {rule}"] = (model, apply(model, rule))
        entries[f"biotorch {BIOTORCH_MODES[rule]}"] = (bio_module(copy.deepcopy(base), mode=BIOTORCH_MODES[rule]), None)
    return entries


def compare_with_biotorch(arch: str, rules, *, batch_size: int, image_size: int, num_classes: int = 10,
                          steps: int = 2, rounds: int = 5) -> dict[str, float]:
    """Median step time in ms of every contestant; the caller divides by ``bp``."""
    unknown = [r for r in rules if r not in BIOTORCH_MODES]
    if unknown:
        raise FabenchError(f"no BioTorch counterpart for {', '.join(unknown)}; choose from {', '.join(BIOTORCH_MODES)}")
    entries = _contestants(arch, rules, num_classes, image_size)
    x = torch.randn(batch_size, 3, image_size, image_size)
    y = torch.randint(0, num_classes, (batch_size,))
    steppers = {label: _stepper(model, x, y) for label, (model, _) in entries.items()}
    times = {label: [] for label in steppers}
    labels = list(steppers)
    for round_index in range(rounds + 1):  # round 0 warms up
        shift = round_index % len(labels)
        for label in [*labels[shift:], *labels[:shift]]:
            for _ in range(steps):
                start = time.perf_counter()
                steppers[label]()
                if round_index:
                    times[label].append(time.perf_counter() - start)
    return {label: 1000 * statistics.median(values) for label, values in times.items()}


def _stepper(model, x, y):
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
    return step
