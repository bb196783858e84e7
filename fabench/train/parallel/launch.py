"""Where this process stands among a run's processes, and joining their process group.

Each process reads its rank from the environment: torchrun's ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` or, when those are absent, SLURM's ``SLURM_PROCID``, ``SLURM_NTASKS`` and
``SLURM_LOCALID`` (with ``MASTER_ADDR`` taken from the job's first node and ``MASTER_PORT``
from the job id unless set). A process that finds neither, or a world of one, runs alone.
Backend ``nccl`` on CUDA (each rank on ``cuda:LOCAL_RANK``, or ``cuda:0`` when it sees a single
GPU), ``gloo`` on the CPU; collectives time out after ``FABENCH_DIST_TIMEOUT_MIN`` minutes.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fabench.errors import FabenchError
from fabench.train.device import cuda_device_count

#: Minutes ranks wait for each other to start, and for any one collective (``FABENCH_DIST_TIMEOUT_MIN``).
DEFAULT_TIMEOUT_MIN = 30


@dataclass(frozen=True)
class Launch:
    """This process's place among the run's processes, as the launcher set it."""

    rank: int
    world_size: int
    local_rank: int
    source: str  # "torchrun" (any env:// launcher) or "slurm"


def _int_env(environ, name: str) -> int:
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise FabenchError(f"environment variable {name}={value!r} must be an integer") from None


def detect_launch(environ=os.environ) -> Launch | None:
    """The launch described by the environment, or None for a lone process."""
    if "WORLD_SIZE" in environ and "RANK" in environ:
        world, rank = _int_env(environ, "WORLD_SIZE"), _int_env(environ, "RANK")
        local_name = "LOCAL_RANK" if "LOCAL_RANK" in environ else "SLURM_LOCALID" if "SLURM_LOCALID" in environ else None
        local = _int_env(environ, local_name) if local_name else 0
        source = "torchrun"
    elif "SLURM_NTASKS" in environ and "SLURM_PROCID" in environ:
        world, rank = _int_env(environ, "SLURM_NTASKS"), _int_env(environ, "SLURM_PROCID")
        local = _int_env(environ, "SLURM_LOCALID") if "SLURM_LOCALID" in environ else 0
        source = "slurm"
    else:
        return None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise FabenchError(f"rank {rank} is outside the world of {world} processes ({source} environment)")
    return Launch(rank, world, local, source)


def _slurm_rendezvous(environ) -> None:
    """Set MASTER_ADDR/MASTER_PORT for env:// from the SLURM job when the user has not."""
    if "MASTER_ADDR" not in environ:
        nodes = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
        try:
            shown = subprocess.run(["scontrol", "show", "hostnames", nodes or ""], capture_output=True, text=True,
                                   timeout=30, check=True).stdout.split()
        except (OSError, subprocess.SubprocessError):
            shown = []
        if not shown:
            raise FabenchError("SLURM launch: cannot find the first node of the job for MASTER_ADDR; "
                               "export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)")
        environ["MASTER_ADDR"] = shown[0]
    if "MASTER_PORT" not in environ:
        environ["MASTER_PORT"] = str(20000 + int(environ.get("SLURM_JOB_ID", "0") or 0) % 40000)


def rank_device(device: str, launch: Launch) -> torch.device:
    """The device of this rank for ``--device``: ``cuda:LOCAL_RANK`` (or the one GPU it sees), or the CPU."""
    if device.startswith("cuda:"):
        raise FabenchError(f"--device {device} would put every process on one GPU; with several processes "
                           "use --device cuda (rank r takes cuda:LOCAL_RANK) or limit CUDA_VISIBLE_DEVICES")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    count = cuda_device_count()
    if count == 0:
        raise FabenchError(f"--device {device}: no CUDA device is available to rank {launch.rank}; use --device cpu")
    if count == 1:
        return torch.device("cuda", 0)
    if launch.local_rank >= count:
        raise FabenchError(f"rank {launch.rank} has local rank {launch.local_rank} but sees only {count} GPUs; "
                           "start at most one process per GPU on each node")
    return torch.device("cuda", launch.local_rank)


def _timeout() -> datetime.timedelta:
    text = os.environ.get("FABENCH_DIST_TIMEOUT_MIN", str(DEFAULT_TIMEOUT_MIN))
    if not text.isdigit() or int(text) < 1:
        raise FabenchError(f"FABENCH_DIST_TIMEOUT_MIN must be a whole number of minutes, got {text!r}")
    return datetime.timedelta(minutes=int(text))


def _leave() -> None:
    """Destroy the process group at exit (NCCL warns about one left behind)."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def join_group(config) -> Launch | None:
    """Join the run's process group if this process was launched as one of several; else None.

    Sets ``config.device`` to this rank's device (not part of the run_id). A second call in
    the same process (a grid running cells one after another) reuses the group.
    """
    launch = detect_launch()
    if launch is None:
        return None
    device = rank_device(config.device, launch)
    config.device = str(device)
    if dist.is_initialized():
        if dist.get_world_size() != launch.world_size:
            raise FabenchError(f"this process already belongs to a group of {dist.get_world_size()}, "
                               f"not {launch.world_size}")
        return launch
    if launch.source == "slurm":
        _slurm_rendezvous(os.environ)
        os.environ.setdefault("RANK", str(launch.rank))
        os.environ.setdefault("WORLD_SIZE", str(launch.world_size))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, init_method="env://", rank=launch.rank, world_size=launch.world_size,
                                timeout=_timeout())
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FabenchError(f"rank {launch.rank} of {launch.world_size} ({launch.source}) could not join the other "
                           f"processes: {first}; start all {launch.world_size} with the same launcher") from None
    atexit.register(_leave)
    return launch
