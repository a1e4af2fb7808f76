"""`sync_batch` (SPEC §2): a class's r over the batch of every rank under torch.distributed.

The fast backends gather each rank's merged band statistics (a few numbers per class and band)
and merge them (_stats.merge: exact, whatever the per-rank batch sizes); the reference gathers
the activated prediction and target themselves, the plain definition over the global batch.
Both gathers are differentiable: each rank's gradient holds every rank's share of the loss it
influences, so that DDP's average over W ranks equals the gradient of one process over the
whole batch (as SyncBatchNorm does).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as distributed_autograd

from ._options import warn_caller_once


def _group_or_none(group):
    """The process group to merge over, or None (not distributed: this process's batch only,
    with a warning the first time)."""
    if dist.is_available() and dist.is_initialized():
        return group if group is not None else dist.group.WORLD
    warn_caller_once(
        "scc_kernels: sync_batch=True without an initialised torch.distributed process group: "
        "the statistics of this process only"
    )
    return None


def gather_stack(tensor: torch.Tensor, group) -> torch.Tensor:
    """(W, *shape): every rank's `tensor` (the same shape on all ranks), differentiably."""
    group = _group_or_none(group)
    if group is None:
        return tensor.unsqueeze(0)
    return torch.stack(distributed_autograd.all_gather(tensor, group=group))


def gather_batches(tensor: torch.Tensor, group) -> torch.Tensor:
    """(Σ B_r, ...): every rank's batch (sizes may differ), concatenated in rank order, differentiably."""
    group = _group_or_none(group)
    if group is None:
        return tensor
    sizes = [torch.zeros((), dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, torch.tensor(tensor.shape[0], device=tensor.device), group=group)
    sizes = [int(size) for size in sizes]
    padded = torch.cat([tensor, tensor.new_zeros((max(sizes) - tensor.shape[0], *tensor.shape[1:]))])
    gathered = distributed_autograd.all_gather(padded, group=group)
    return torch.cat([part[:size] for part, size in zip(gathered, sizes)])
