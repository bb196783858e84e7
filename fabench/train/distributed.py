"""One run over several processes with PyTorch's own DistributedDataParallel.

Launch one process per GPU with torchrun (``torchrun --nproc-per-node G -m fabench run ...``,
several nodes with torchrun's ``--nnodes/--rdzv-*`` flags) or with SLURM's ``srun`` (one task
per GPU). Each process reads its rank from the environment: torchrun's ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` or, when those are absent, SLURM's ``SLURM_PROCID``,
``SLURM_NTASKS`` and ``SLURM_LOCALID`` (with ``MASTER_ADDR`` taken from the job's first node
and ``MASTER_PORT`` from the job id unless set). A process that finds neither, or a world of
one, runs alone and nothing here does anything.

What every rank does, and why the result is the single-process run's:

- Backend ``nccl`` on CUDA (each rank on ``cuda:LOCAL_RANK``, or ``cuda:0`` when it sees a
  single GPU), ``gloo`` on the CPU.
- The model, its rule and optimizer are built the same way on every rank (same seed); the rule
  is applied *before* the model is wrapped in DDP, so feedback buffers, optimizer step hooks
  (``+const``, ``+ei``, ``+bm``) and dfa's output hook sit on the plain model, which DDP's
  forward calls. Before wrapping, every rank hashes its parameters, buffers (the ``feedback_*``
  tensors included), data-generator state and run_id; any difference is one error on every
  rank. The same check runs after a resume, when each rank has loaded ``last.pt``.
- Data: ``--batch-size`` is the *global* batch. Every rank draws the same epoch permutation and
  augmentation from the same generator and keeps its own contiguous slice of each global batch
  (rank r of G: images ``[r·B/G, (r+1)·B/G)``), so the G slices together are exactly the
  batch a single process would train on. B must be divisible by G. Folder datasets (ImageNet)
  load only the rank's slice. The test split is split by batches across ranks.
- DDP averages gradients during backward; the optimizer step, and with it the modifiers' step
  hooks, runs after that all-reduce, on identical gradients and weights on every rank. dfa's
  output error is each rank's own ``∂L/∂logits``; its δx is linear in that error, so the
  averaged weight gradients equal the single-process ones.
- BatchNorm is per rank (standard DDP: batch statistics over the rank's slice; no
  SyncBatchNorm). DDP does not broadcast buffers at each forward (``forward_sync_buffers`` /
  ``broadcast_buffers`` off), so the large fixed feedback tensors never travel after start-up;
  instead the running statistics are averaged over ranks at the end of each training pass,
  before the test evaluation and checkpoint (as timm's ``distribute_bn``). With BatchNorm the
  result therefore depends on the per-rank batch B/G, as in any DDP training; without it (arch1)
  a G-process run matches the single-process run up to floating-point summation order.
- Training sums (loss, accuracy, images) and test sums are added over ranks, so curves and
  images/s describe the whole run. Only rank 0 writes: manifest, curves, checkpoint, runs.csv
  and progress events. Ranks agree on skip/resume decisions through rank 0.
- Ctrl-C/SIGTERM (torchrun forwards them to every rank) set a flag that ranks compare every
  :data:`STOP_SYNC_EVERY` steps and at each epoch's end, so all stop after the same step and
  rank 0 checkpoints; a repeated signal does not abort a rank mid-step (torchrun's own
  escalation to SIGKILL does).

Known limit: a non-finite loss is checked per rank every 16 steps (fabench.train.loop). Since
gradients are averaged, a non-finite step spreads to every rank's weights at once, so ranks
normally notice divergence at the same check; if only one rank's loss became non-finite exactly
at a check step, that rank stops a step early and the others wait on it until the collective
timeout (``FABENCH_DIST_TIMEOUT_MIN``, default 30) or until torchrun ends them.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import hashlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from fabench.errors import FabenchError
from fabench.train.curves import CurveWriter
from fabench.train.interrupt import StopFlag
from fabench.train.interrupt import stop_on_signals as _single_stop_on_signals
from fabench.train.run_record import RunRecords, result_metrics

#: Steps between the ranks' comparisons of their stop flags (one small all-reduce each).
STOP_SYNC_EVERY = 16
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
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
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


def join(config) -> None:
    """Join the run's process group if this process was launched as one of several.

    Sets ``config.device`` to this rank's device (not part of the run_id). A second call in
    the same process (a grid running cells one after another) reuses the group.
    """
    launch = detect_launch()
    if launch is None:
        return
    device = rank_device(config.device, launch)
    config.device = str(device)
    if dist.is_initialized():
        if dist.get_world_size() != launch.world_size:
            raise FabenchError(f"this process already belongs to a group of {dist.get_world_size()}, "
                               f"not {launch.world_size}")
        return
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


def active() -> bool:
    """True inside a run of several processes."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """True on rank 0, and in a lone process: the one that writes."""
    return not active() or dist.get_rank() == 0


def agree(value):
    """Rank 0's ``value`` on every rank (picklable values); ``value`` itself in a lone process."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_lock(path: Path) -> Iterator[bool]:
    """Rank 0 holds the run's folder lock (non-blocking); every rank gets whether it got it."""
    from fabench.train.records import file_lock

    if not active():
        with file_lock(path, blocking=False, remove=True) as mine:
            yield mine
        return
    if dist.get_rank() == 0:
        with file_lock(path, blocking=False, remove=True) as mine:
            yield agree(mine)
    else:
        yield agree(None)


# --- identical replicas ---------------------------------------------------------------------

def state_digests(model: nn.Module, generator: torch.Generator) -> dict[str, str]:
    """A SHA-256 of every state_dict tensor (parameters, feedback and other buffers) and of the data generator."""
    digests = {}
    for name, tensor in model.state_dict().items():
        raw = tensor.detach().cpu().reshape(-1).view(torch.uint8)  # any dtype, bf16 included
        digests[name] = hashlib.sha256(raw.numpy().tobytes()).hexdigest()
    digests["<data generator>"] = hashlib.sha256(generator.get_state().numpy().tobytes()).hexdigest()
    return digests


def _describe_difference(name: str) -> str:
    """'the feedback tensor feedback_weight of layer features.0' or 'the parameter classifier.1.weight'."""
    layer, _, leaf = name.rpartition(".")
    if leaf.startswith("feedback_"):
        return f"the feedback tensor {leaf} of layer '{layer}'"
    return f"'{name}'"


def check_replicas(session, when: str) -> None:
    """Fail on every rank, with one line, unless all ranks hold the same run, weights, feedback and data stream."""
    if not active():
        return
    mine = (session.config.run_id, state_digests(session.model, session.generator))
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    run_id, reference = every[0]
    for rank, (other_id, digests) in enumerate(every[1:], start=1):
        if other_id != run_id:
            raise FabenchError(f"rank {rank} runs another configuration (run_id {other_id}, rank 0 has {run_id}) "
                               f"{when}; launch every process with the same options")
        differ = [n for n in reference if digests.get(n) != reference[n]] + [n for n in digests if n not in reference]
        if differ:
            more = f" (and {len(differ) - 1} more tensors)" if len(differ) > 1 else ""
            raise FabenchError(f"replicas differ {when}: rank {rank} has {_describe_difference(differ[0])} unlike "
                               f"rank 0{more}; every process must build the same model, rule and seed")


# --- wrapping a built session -----------------------------------------------------------------

def wrap(session):
    """Make a built session train its rank's share: check replicas, shard the data, wrap in DDP."""
    if not active():
        return session
    from torch.nn.parallel import DistributedDataParallel

    world, config = dist.get_world_size(), session.config
    if config.batch_size % world:
        raise FabenchError(f"--batch-size {config.batch_size} is the global batch and must be divisible by the "
                           f"{world} processes; use e.g. {config.batch_size - config.batch_size % world or world}")
    check_replicas(session, "at start-up")
    session.data = ShardedData(session.data, dist.get_rank(), world)
    device_ids = [session.device.index] if session.device.type == "cuda" else None
    ddp = DistributedDataParallel(session.model, device_ids=device_ids, **_no_forward_buffer_sync())
    session.trainer.model = torch.compile(ddp) if config.compile else ddp
    return session


def _no_forward_buffer_sync() -> dict:
    """DDP's switch that stops it broadcasting buffers (feedback tensors, BN statistics) at every forward.

    Named ``forward_sync_buffers`` in recent PyTorch, ``broadcast_buffers`` before.
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class ShardedData:
    """A :class:`fabench.train.batches.RunData` seen by one rank: its slice of every global batch.

    ``steps_per_epoch``, ``batch_size`` (global) and everything else are the wrapped data's.
    """

    def __init__(self, data, rank: int, world: int) -> None:
        self.data, self.rank, self.world = data, rank, world
        self.local_batch = data.batch_size // world
        self._folder_train = self._folder_test = None
        if getattr(data, "_loader", None) is None:  # folder dataset: load only this rank's images
            self._folder_train, self._folder_test = _folder_loaders(data, rank, world, self.local_batch)

    def __getattr__(self, name):
        return getattr(self.data, name)

    def _mine(self, x: torch.Tensor, y: torch.Tensor):
        window = slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)
        return x[window], y[window]

    def train_epoch(self, skip: int = 0):
        """This rank's slices of one epoch's global batches (same draws as a lone process)."""
        import itertools

        from fabench.train.batches import _isolated_rng

        if self._folder_train is None:
            return (self._mine(x, y) for x, y in self.data.train_epoch(skip))
        batches = _isolated_rng(self._folder_train, self.data.generator)
        return self.data._place(itertools.islice(batches, skip, None))

    def test(self, batch_size: int | None = None):
        """Every ``world``-th test batch, starting at this rank's (the ranks together see the split once)."""
        if self._folder_test is not None and batch_size is None:
            return self.data._place(iter(self._folder_test))
        batches = self.data.test(batch_size)
        return (batch for i, batch in enumerate(batches) if i % self.world == self.rank)


class _RankSlices(torch.utils.data.Sampler):
    """Global batches of a random permutation, of which this rank takes its contiguous slice."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.rank, self.world, self.generator = n, batch_size, rank, world, generator

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist()
        local = self.batch_size // self.world
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start + self.rank * local: start + (self.rank + 1) * local]


class _RankBatches(torch.utils.data.Sampler):
    """Consecutive test batches in order, every ``world``-th one starting at ``rank``."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int) -> None:
        self.starts = list(range(rank * batch_size, n, world * batch_size))
        self.n, self.batch_size = n, batch_size

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self):
        for start in self.starts:
            yield list(range(start, min(start + self.batch_size, self.n)))


def _folder_loaders(data, rank: int, world: int, local_batch: int):
    """DataLoaders of a folder dataset that read only this rank's training slices and test batches."""
    dataset, workers = data.dataset, data._train.num_workers
    common = {"num_workers": workers, "pin_memory": torch.cuda.is_available(), "persistent_workers": workers > 0}
    train = torch.utils.data.DataLoader(
        dataset.train_set, batch_sampler=_RankSlices(dataset.n_train, data.batch_size, rank, world, data.generator),
        generator=data.generator, **common)
    test = torch.utils.data.DataLoader(dataset.val_set, batch_sampler=_RankBatches(dataset.n_test, data.batch_size,
                                                                                    rank, world), **common)
    return train, test


# --- per-epoch reductions -------------------------------------------------------------------

@torch.no_grad()
def average_norm_statistics(model: nn.Module) -> None:
    """Average BatchNorm-style running statistics over ranks, so every replica evaluates and saves the same model."""
    if not active():
        return
    world = dist.get_world_size()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var):
                if buffer is not None:
                    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                    buffer.div_(world)


def gather_epoch(session, outcome):
    """After a training pass: sum its loss/accuracy/image counts over ranks; average norm statistics."""
    if not active():
        return outcome
    sums = torch.tensor([outcome.loss_sum, outcome.correct, outcome.seen], dtype=torch.float64, device=session.device)
    stop = _STOPS[-1] if _STOPS else None
    flags = torch.tensor([outcome.diverged, outcome.interrupted, bool(stop and stop.requested)],
                         dtype=torch.float64, device=session.device)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    outcome.loss_sum, outcome.correct, outcome.seen = float(sums[0]), float(sums[1]), int(sums[2])
    outcome.diverged, outcome.interrupted = bool(flags[0]), bool(flags[1])
    if stop is not None and flags[2]:
        stop.agree_to_stop()  # a signal during the epoch's last steps stops every rank at its end
    average_norm_statistics(session.model)
    return outcome


def combine_eval(result: dict, device: torch.device) -> dict:
    """Each rank's test metrics on its batches -> the metrics of the whole test split (every rank)."""
    if not active():
        return result
    n = result["n"]
    counts = [round(result["top1"] * n / 100), round(result["top5"] * n / 100)] if n else [0, 0]
    sums = torch.tensor([*counts, result["loss"] * n if n else 0.0, n], dtype=torch.float64, device=device)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    hits1, hits5, loss_sum, total = sums.tolist()
    if total == 0:
        return result
    return {"top1": 100.0 * hits1 / total, "top5": 100.0 * hits5 / total, "loss": loss_sum / total, "n": int(total)}


# --- stopping together --------------------------------------------------------------------

#: The stop flag of the run in progress (:func:`gather_epoch` folds it into its reduction).
_STOPS: list[SyncedStop] = []


class SyncedStop(StopFlag):
    """A stop flag that all ranks read alike: local signals are compared every few calls."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.calls = 0
        self.agreed = False

    def _handle(self, signum: int, frame: object) -> None:
        """Never raise mid-step (that would leave the other ranks waiting); torchrun escalates."""
        import signal

        self.requested = True
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def agree_to_stop(self) -> None:
        """Every rank has learnt that one of them was asked to stop."""
        self.agreed = True
        self.signal_name = self.signal_name or "a signal to another rank"

    def __call__(self) -> bool:
        self.calls += 1
        if not self.agreed and self.calls % STOP_SYNC_EVERY == 0:
            flag = torch.tensor([1.0 if self.requested else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item():
                self.agree_to_stop()
        return self.agreed


@contextlib.contextmanager
def stop_on_signals(device: torch.device) -> Iterator[StopFlag]:
    """:func:`fabench.train.interrupt.stop_on_signals`, with a flag the ranks agree on under DDP."""
    if not active():
        with _single_stop_on_signals() as flag:
            yield flag
        return
    import signal
    import threading

    flag = SyncedStop(device)
    _STOPS.append(flag)
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, flag._handle) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield flag
    finally:
        _STOPS.remove(flag)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- records -------------------------------------------------------------------------------

def describe(session) -> dict:
    """The manifest's ``distributed`` entry."""
    world = dist.get_world_size()
    return {"world_size": world, "backend": dist.get_backend(), "global_batch": session.config.batch_size,
            "batch_per_rank": session.config.batch_size // world,
            "batchnorm": "per rank; running statistics averaged over ranks after each training pass"}


class MainRecords(RunRecords):
    """Rank 0's records: the usual files, with the world size in ``device`` and a ``distributed`` entry."""

    def _fresh_manifest(self) -> dict:
        manifest = super()._fresh_manifest()
        manifest["device"] = f"{dist.get_world_size()}x {manifest['device']}"
        manifest["distributed"] = describe(self.session)
        return manifest


class NullCurves(CurveWriter):
    """Curves that go nowhere: ranks other than 0 run the same hooks but write nothing."""

    def log(self, *args, **kwargs) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass


class SilentRecords(RunRecords):
    """Another rank's records: the same calls, no files; ``finish`` still returns the row."""

    def __init__(self, session, run_dir: Path) -> None:
        super().__init__(session, run_dir)
        self.curves = NullCurves(run_dir / "unused", self.config.run_id)

    def begin(self, progress, resumed: bool) -> None:
        pass

    def log_epoch(self, entry: dict) -> None:
        pass

    def checkpoint(self, progress) -> None:
        pass

    def finish(self, status: str, progress, error: str = "") -> dict:
        self.manifest = self._fresh_manifest()
        self.manifest.update(status=status, error=error, result=result_metrics(status, progress))
        return self.row()


def records(session, run_dir: Path) -> RunRecords:
    """The run's writer: the usual one on rank 0 (noting the ranks), a silent one elsewhere."""
    if not active():
        return RunRecords(session, run_dir)
    return (MainRecords if dist.get_rank() == 0 else SilentRecords)(session, run_dir)
