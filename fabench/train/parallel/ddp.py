"""One run over several processes with PyTorch's own DistributedDataParallel.

Launch one process per GPU with torchrun (``torchrun --nproc-per-node G -m fabench run ...``,
several nodes with torchrun's ``--nnodes/--rdzv-*`` flags) or with SLURM's ``srun`` (one task
per GPU); :mod:`fabench.train.parallel.launch` reads the rank and joins the group.

What every rank does, and why the result is the single-process run's:

- The model, its rule and optimizer are built the same way on every rank (same seed); the rule
  is applied *before* the model is wrapped in DDP, so feedback buffers, optimizer step hooks
  (``+const``, ``+ei``, ``+bm``) and dfa's output hook sit on the plain model, which DDP's
  forward calls. Before wrapping, and after a resume, the ranks compare hashes of their state
  (:mod:`fabench.train.parallel.replicas`).
- Data: ``--batch-size`` is the *global* batch. Every rank draws the same epoch permutation and
  augmentation from the same generator and keeps its own contiguous slice of each global batch
  (:meth:`fabench.train.batches.RunData.shard`), so the slices together are exactly the batch a
  single process would train on. B must be divisible by the number of ranks. The test split is
  split by batches across ranks.
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
- Stopping: :mod:`fabench.train.parallel.stop`.

Known limit: a non-finite loss is checked per rank every 16 steps (fabench.train.loop). Since
gradients are averaged, a non-finite step spreads to every rank's weights at once, so ranks
normally notice divergence at the same check; if only one rank's loss became non-finite exactly
at a check step, that rank stops a step early and the others wait on it until the collective
timeout (``FABENCH_DIST_TIMEOUT_MIN``, default 30) or until torchrun ends them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from fabench.errors import FabenchError
from fabench.train.curves import CurveWriter
from fabench.train.parallel import replicas
from fabench.train.parallel.launch import Launch
from fabench.train.parallel.stop import SyncedStop, stop_on_signals
from fabench.train.parallel.strategy import Strategy
from fabench.train.records import file_lock
from fabench.train.run_record import RunRecords, result_metrics


class DDP(Strategy):
    """Rank ``launch.rank`` of ``launch.world_size`` processes training one run together."""

    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._stop: SyncedStop | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def agree(self, value):
        """Rank 0's ``value`` on every rank (picklable values)."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, fn, *args, **kwargs) -> None:
        if self.is_main:
            fn(*args, **kwargs)

    @contextlib.contextmanager
    def lock(self, path: Path) -> Iterator[bool]:
        """Rank 0 holds the run's folder lock (non-blocking); every rank gets whether it got it."""
        if not self.is_main:
            yield self.agree(None)
            return
        with file_lock(path, blocking=False, remove=True) as mine:
            yield self.agree(mine)

    def check_replicas(self, session, when: str) -> None:
        replicas.check_replicas(session, when)

    def prepare(self, session):
        """Check replicas, give each rank its shard of the data, wrap the model in DDP."""
        from torch.nn.parallel import DistributedDataParallel

        config = session.config
        if config.batch_size % self.world:
            raise FabenchError(f"--batch-size {config.batch_size} is the global batch and must be divisible by the "
                               f"{self.world} processes; use e.g. "
                               f"{config.batch_size - config.batch_size % self.world or self.world}")
        self.check_replicas(session, "at start-up")
        session.data = session.data.shard(self.rank, self.world)
        device_ids = [session.device.index] if session.device.type == "cuda" else None
        ddp = DistributedDataParallel(session.model, device_ids=device_ids, **_no_forward_buffer_sync())
        session.trainer.model = torch.compile(ddp) if config.compile else ddp
        return session

    def records(self, session, run_dir: Path) -> RunRecords:
        """Rank 0 writes (noting the ranks); the other ranks make the same calls and write nothing."""
        return (MainRecords if self.is_main else SilentRecords)(session, run_dir)

    @contextlib.contextmanager
    def stop_on_signals(self, device) -> Iterator[SyncedStop]:
        with stop_on_signals(device) as flag:
            self._stop = flag
            try:
                yield flag
            finally:
                self._stop = None

    def gather_epoch(self, session, outcome):
        """After a training pass: sum loss/accuracy/image counts over ranks; average norm statistics."""
        device, stop = session.device, self._stop
        sums = torch.tensor([outcome.loss_sum, outcome.correct, outcome.seen], dtype=torch.float64, device=device)
        flags = torch.tensor([outcome.diverged, outcome.interrupted, bool(stop and stop.requested)],
                             dtype=torch.float64, device=device)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        outcome.loss_sum, outcome.correct, outcome.seen = float(sums[0]), float(sums[1]), int(sums[2])
        outcome.diverged, outcome.interrupted = bool(flags[0]), bool(flags[1])
        if stop is not None and flags[2]:
            stop.agree_to_stop()  # a signal during the epoch's last steps stops every rank at its end
        average_norm_statistics(session.model, self.world)
        return outcome

    def combine_eval(self, result: dict, device) -> dict:
        """Each rank's metrics on its batches -> the metrics of the whole split (on every rank)."""
        n = result["n"]
        counts = [round(result["top1"] * n / 100), round(result["top5"] * n / 100)] if n else [0, 0]
        sums = torch.tensor([*counts, result["loss"] * n if n else 0.0, n], dtype=torch.float64, device=device)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        hits1, hits5, loss_sum, total = sums.tolist()
        if total == 0:
            return result
        return {"top1": 100.0 * hits1 / total, "top5": 100.0 * hits5 / total, "loss": loss_sum / total,
                "n": int(total)}


def _no_forward_buffer_sync() -> dict:
    """DDP's switch that stops it broadcasting buffers (feedback tensors, BN statistics) at every forward.

    Named ``forward_sync_buffers`` in recent PyTorch, ``broadcast_buffers`` before.
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


@torch.no_grad()
def average_norm_statistics(model: nn.Module, world: int) -> None:
    """Average BatchNorm-style running statistics over ranks, so every replica evaluates and saves the same model."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var):
                if buffer is not None:
                    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                    buffer.div_(world)


# --- records -------------------------------------------------------------------------------

def _describe(session) -> dict:
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
        manifest["distributed"] = _describe(self.session)
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

    def clear(self) -> None:
        pass

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
