"""Checking a config and building everything a run needs, before anything is written.

:func:`preflight` checks names and values (cheap, nothing is built); :func:`build_session`
then loads the data and builds the model, its rule, the optimizer and the schedule. Both may
raise :class:`FabenchError`; neither touches the results folder, so a bad input leaves no trace.

Seeds: ``config.seed`` seeds torch's global generator right before the model is built (its
initial weights), the rule's feedback draws (``apply(seed=...)``) and the run's data generator
(epoch order and augmentation). The training subset (``--subset``) is chosen with seed 0
whatever ``config.seed`` is, so the seeds of a comparison vary the initialisation, feedback
and order, not which images are trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fabench.errors import FabenchError
from fabench.train.batches import RunData
from fabench.train.config import SUBSET_SEED, RunConfig
from fabench.train.device import check_amp, make_grad_scaler, resolve_device
from fabench.train.loop import Trainer
from fabench.train.optim import build_optimizer, build_scheduler, check_optimization
from fabench.train.parallel import SingleProcess, Strategy
from fabench.train.recipes import Resolution, resolve
from fabench.train.runs_csv import check_results_dir


def check_config(config: RunConfig) -> RunConfig:
    """Check every name and value of ``config`` (recipe applied) without building anything.

    The one preflight of a run's settings: ``fabench run``, the grid's cells and ``fabench
    validate`` all call it. Returns the resolved config.
    """
    from fabench.archs import check_arch_options
    from fabench.data import check_dataset
    from fabench.rules import check_rule_options
    from fabench.train.schedule import parse_diagnostics

    config.validate()
    config = config.resolved().validate()  # resolving parses the rule: a bad one is refused here
    parse_diagnostics(config.diagnostics)
    check_optimization(config)
    check_arch_options(config.arch, config.arch_options)  # checks the arch itself first
    check_dataset(config.dataset)
    check_rule_options(config.rule, config.rule_options, **config.rule_engine_options())
    return config


def preflight(config: RunConfig) -> torch.device:
    """:func:`check_config`, then the device and the results folder; return the device."""
    check_config(config)
    device = resolve_device(config.device)
    check_amp(config.amp, device)
    if config.jpeg_decoder == "gpu" and device.type != "cuda":
        raise FabenchError("--jpeg-decoder gpu needs a CUDA device; use --jpeg-decoder cpu on the CPU")
    check_results_dir(Path(config.results_dir))
    return device


@dataclass
class Session:
    """A run's built objects. ``model`` is the plain module (checkpoints); ``trainer.model``
    may be its compiled form."""

    config: RunConfig
    device: torch.device
    data: RunData
    model: torch.nn.Module
    handle: Any
    arch_source: str
    trainer: Trainer
    generator: torch.Generator
    recipe: Resolution
    #: how the run is spread over processes (fabench.train.parallel)
    strategy: Strategy = field(default_factory=SingleProcess)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_data(config: RunConfig):
    """The run's dataset at the size its architecture wants."""
    from fabench.archs import default_image_size
    from fabench.data import load_dataset

    image_size = config.image_size or default_image_size(config.arch, config.dataset)
    return load_dataset(config.dataset, data_dir=config.data_dir, subset=config.subset,
                        seed=SUBSET_SEED, image_size=image_size, val_split=config.val_split,
                        decode=config.jpeg_decoder)


def build_model(config: RunConfig, dataset, device: torch.device):
    """The architecture with the rule attached, on ``device``: ``(model, handle, source)``."""
    from fabench.archs import create_model, reinitialise
    from fabench.rules import apply, covered_layers

    config = config.resolved()
    torch.manual_seed(config.seed)
    model, source = create_model(config.arch, num_classes=dataset.num_classes, in_chans=dataset.in_chans,
                                 image_size=dataset.image_size, **config.arch_options)
    reinitialise(covered_layers(model, tuple(config.exclude)).values(), config.weight_init, config.weight_init_scale)
    side = dataset.image_size or getattr(dataset, "native_size", None)
    handle = apply(model, config.rule, seed=config.seed, exclude=tuple(config.exclude), options=config.rule_options,
                   **config.rule_engine_options(),
                   feedback_memory=config.feedback_memory,
                   input_shape=(dataset.in_chans, side, side) if side else None)
    memory_format = torch.channels_last if config.channels_last else torch.preserve_format
    model.to(device=device, memory_format=memory_format)
    return model, handle, source


def build_session(config: RunConfig, device: torch.device, recipe: Resolution | None = None,
                  strategy: Strategy | None = None) -> Session:
    """Load data, build model, rule, optimizer, schedule; raise FabenchError on bad input.

    ``recipe`` is how ``config`` was resolved (resolved here when not given).
    """
    recipe = recipe or resolve(config)
    config = recipe.config
    dataset = load_data(config)
    generator = torch.Generator().manual_seed(config.seed)
    data = RunData(dataset, device, generator=generator, batch_size=config.batch_size,
                   workers=config.workers, channels_last=config.channels_last)
    data.check_batch_size()
    model, handle, source = build_model(config, dataset, device)
    optimizer = build_optimizer(model, config)
    handle.attach_optimizer(optimizer)
    scheduler = build_scheduler(optimizer, config, data.steps_per_epoch)
    forward = torch.compile(model) if config.compile else model
    trainer = Trainer(forward, optimizer, scheduler, make_grad_scaler(config.amp, device), device,
                      amp=config.amp, label_smoothing=config.label_smoothing, grad_clip=config.grad_clip)
    return Session(config, device, data, model, handle, source, trainer, generator, recipe,
                   strategy or SingleProcess())
