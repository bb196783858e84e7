"""Every rank must hold the same run: same run_id, weights, feedback tensors and data stream.

Checked at start-up and after a resume (each rank has loaded ``last.pt``): every rank hashes
its state_dict (parameters and buffers, the rule's feedback tensors included) and its data
generator's state; any difference is one error on every rank, naming the first tensor.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist
from torch import nn

from fabench.errors import FabenchError


def state_digests(model: nn.Module, generator: torch.Generator) -> dict[str, str]:
    """A SHA-256 of every state_dict tensor (parameters, feedback and other buffers) and of the data generator."""
    digests = {}
    for name, tensor in model.state_dict().items():
        raw = tensor.detach().cpu().reshape(-1).view(torch.uint8)  # any dtype, bf16 included
        digests[name] = hashlib.sha256(raw.numpy().tobytes()).hexdigest()
    digests["<data generator>"] = hashlib.sha256(generator.get_state().numpy().tobytes()).hexdigest()
    return digests


def _describe_difference(name: str, handle) -> str:
    """'the feedback tensor feedback_weight of layer features.0' or 'classifier.1.weight'."""
    if handle is not None and handle.owns_buffer(name):
        layer, _, leaf = name.rpartition(".")
        return f"the feedback tensor {leaf} of layer '{layer}'"
    return f"'{name}'"


def check_replicas(session, when: str) -> None:
    """Fail on every rank, with one line, unless all ranks hold the same run, weights, feedback and data stream."""
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
            raise FabenchError(f"replicas differ {when}: rank {rank} has {_describe_difference(differ[0], session.handle)} unlike "
                               f"rank 0{more}; every process must build the same model, rule and seed")
