"""Diagnostics of a finished (or interrupted) run, recomputed from its ``last.pt``.

The model, its rule and the probe batch are rebuilt from the run's manifest exactly as the run
built them, the checkpoint's state (weights and feedback buffers) is loaded, and the probe is
run: on the same machine and device this reproduces the rows the run logged at that step.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fabench.diagnostics.probe import PROBE_IMAGES, LayerDiagnostics, measure, probe_batch
from fabench.errors import FabenchError


def diagnose_checkpoint(run_dir: str | Path, *, device: str = "cpu",
                        images: int = PROBE_IMAGES) -> tuple[dict, list[LayerDiagnostics]]:
    """``(progress, rows)`` for the checkpoint in ``run_dir``; progress says its epoch and step."""
    from fabench.train.batches import RunData
    from fabench.train.checkpoint import load_checkpoint
    from fabench.train.config import RunConfig
    from fabench.train.device import resolve_device
    from fabench.train.records import CHECKPOINT, read_manifest
    from fabench.train.session import build_model, load_data

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if not manifest or not (run_dir / CHECKPOINT).is_file():
        raise FabenchError(f"{run_dir} is not a run folder with a manifest.json and {CHECKPOINT}")
    config = RunConfig.from_dict(manifest["config"])
    payload = load_checkpoint(run_dir / CHECKPOINT, manifest["run_id"])
    target = resolve_device(device)
    dataset = load_data(config)
    model, handle, _ = build_model(config, dataset, target)
    model.load_state_dict(payload["model"])
    data = RunData(dataset, target, generator=torch.Generator(), batch_size=config.batch_size,
                   workers=config.workers, channels_last=config.channels_last)
    return payload["progress"], measure(model, handle, *probe_batch(data, images))
