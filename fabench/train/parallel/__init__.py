"""One run on one process or several: the strategy the runner calls (see :mod:`.strategy`).

- :mod:`.strategy`: the interface and the single-process implementation (:func:`join` picks one);
- :mod:`.launch`: rank and world from torchrun or SLURM, the process group;
- :mod:`.ddp`: DistributedDataParallel (wrapping, reductions, rank-aware records);
- :mod:`.replicas`: the check that every rank holds the same state;
- :mod:`.stop`: a stop flag all ranks agree on.

The data's share of each rank is :meth:`fabench.train.batches.RunData.shard`.
"""

from fabench.train.parallel.strategy import SingleProcess, Strategy

__all__ = ["SingleProcess", "Strategy", "join"]


def join(config) -> Strategy:
    """The strategy of this process: DDP when launched as one of several (joining the group and
    setting ``config.device`` to this rank's), else :class:`SingleProcess`."""
    from fabench.train.parallel.launch import join_group

    launch = join_group(config)
    if launch is None:
        return SingleProcess()
    from fabench.train.parallel.ddp import DDP

    return DDP(launch)
