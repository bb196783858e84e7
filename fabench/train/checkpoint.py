"""``last.pt``: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model's state_dict (weights *and* feedback buffers), the optimizer,
scheduler and GradScaler states, the run's :class:`Progress` and the random states that the
rest of training will draw from: torch's CPU and CUDA generators (dropout, ``fa-brsf``'s
per-step magnitudes) and the data generator (permutations and augmentation). Nothing else in
a training step draws random numbers (Python's ``random`` and NumPy are used only while
loading data, before any checkpoint), so restoring these makes a resumed run follow the
uninterrupted one bit for bit on CPU with ``--deterministic``.

It is saved atomically at the end of every epoch and when a run is interrupted mid-epoch;
in the second case ``Progress.step_in_epoch`` says how many batches of the epoch are done and
``Progress.epoch_data_state`` lets the loader replay that epoch's order and augmentation.
Everything in it is a tensor or plain Python data, so it loads with ``weights_only=True``.
Its SHA-256 goes into the run's manifest as it is written, and a checkpoint whose bytes do not
match is refused: a damaged file would otherwise resume silently with wrong weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fabench.errors import FabenchError
from fabench.train.records import atomic_write, file_digest

CHECKPOINT_FORMAT = 1


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    train_time_s: float = 0.0
    train_images: int = 0
    history: list[dict] = field(default_factory=list)
    partial: dict = field(default_factory=dict)
    epoch_data_state: torch.Tensor | None = None
    resumed_at: list[dict] = field(default_factory=list)


def rng_states(data_generator: torch.Generator) -> dict:
    states = {"torch": torch.get_rng_state(), "data": data_generator.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict, data_generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    data_generator.set_state(states["data"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


#: What every checkpoint holds; a payload missing one is not a fabench checkpoint.
PAYLOAD_KEYS = ("format", "run_id", "model", "optimizer", "scheduler", "scaler", "progress", "rng")


def save_checkpoint(path: Path, *, run_id: str, model, optimizer, scheduler, scaler, progress: Progress,
                    data_generator: torch.Generator, before_replace: Callable[[str], object] | None = None) -> str:
    """Write ``last.pt`` atomically (the previous checkpoint stays intact until the move); return its SHA-256.

    ``before_replace(digest)`` is called once the new file is complete, before it replaces the old one.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "run_id": run_id,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "progress": asdict(progress),
        "rng": rng_states(data_generator),
    }
    digests: list[str] = []

    def seal(tmp: Path) -> None:
        digests.append(file_digest(tmp))
        if before_replace is not None:
            before_replace(digests[0])

    atomic_write(path, lambda handle: torch.save(payload, handle), before_replace=seal)
    return digests[0]


def load_checkpoint(path: Path, run_id: str, digests: list[str] | None = None) -> dict:
    """Read ``last.pt`` onto the CPU; an unreadable, damaged or foreign file is a user-facing error.

    ``digests``: the SHA-256 values the run's manifest accepts for it (None: an older run that
    recorded none, not checked).
    """
    if digests is not None and file_digest(path) not in digests:
        raise FabenchError(f"checkpoint {path} does not match the checksum in its manifest (damaged or replaced); "
                           "rerun with --force to start over")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file fails deep inside torch/pickle with any of a dozen types
        raise FabenchError(f"checkpoint {path} cannot be read ({err.__class__.__name__}); rerun with --force to start over") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or payload.get("run_id") != run_id:
        raise FabenchError(f"checkpoint {path} does not belong to run {run_id}; rerun with --force to start over")
    if not set(PAYLOAD_KEYS) <= payload.keys() or not _progress_ok(payload["progress"]):
        raise FabenchError(f"checkpoint {path} is incomplete (not written by this fabench); rerun with --force to start over")
    return payload


def _progress_ok(progress: object) -> bool:
    """True if a checkpoint's progress holds the fields :class:`Progress` has, with integer counters."""
    names = set(Progress.__dataclass_fields__)
    return (isinstance(progress, dict) and set(progress) <= names
            and all(isinstance(progress.get(k), int) for k in ("epoch", "step_in_epoch", "global_step")))


def restore_training(payload: dict, *, model, optimizer, scheduler, scaler, data_generator: torch.Generator) -> Progress:
    """Load a checkpoint's states into freshly built objects; return its Progress."""
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    scaler.load_state_dict(payload["scaler"])
    restore_rng_states(payload["rng"], data_generator)
    return Progress(**payload["progress"])
