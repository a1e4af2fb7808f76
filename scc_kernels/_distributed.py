"""`sync_batch` (SPEC §2): a class's r over the batch of every rank under torch.distributed.

Forward: the fast backends gather each rank's band statistics (`gather_stack`), the reference the
activated prediction and target (`gather_batches`), with torch's functional collectives.
Backward: both gathers are differentiable, so DDP's average equals one process's gradient over the
global batch (docs/internals.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as functional_collectives

from ._options import warn_caller_once

# torch >= 2.12 names it all_gather_single_autograd (all_gather_tensor_autograd warns there)
_all_gather: Callable[[torch.Tensor, int, dist.ProcessGroup], torch.Tensor] = getattr(
    functional_collectives, "all_gather_single_autograd", None
) or (functional_collectives.all_gather_tensor_autograd)


def _group_or_none(group: object) -> dist.ProcessGroup | None:
    """The process group to merge over, or None (not distributed: this process's batch only,
    with a warning the first time)."""
    if dist.is_available() and dist.is_initialized():
        # a ProcessGroup: _options.make_options checked it
        return cast(dist.ProcessGroup, group) if group is not None else dist.group.WORLD
    warn_caller_once(
        "scc_kernels: sync_batch=True without an initialised torch.distributed process group: "
        "the statistics of this process only"
    )
    return None


def gather_stack(tensor: torch.Tensor, group: object) -> torch.Tensor:
    """(W, *shape): every rank's `tensor` (the same shape on all ranks), differentiably."""
    group = _group_or_none(group)
    if group is None:
        return tensor.unsqueeze(0)
    return _all_gather(tensor.unsqueeze(0).contiguous(), 0, group)


_Function = TypeVar("_Function", bound=Callable[..., object])


def _compiler_disable(function: _Function) -> _Function:
    """torch.compiler.disable with a type (torch's has no annotations): `function`, wrapped so that
    dynamo runs it eagerly."""
    return cast(_Function, torch.compiler.disable(function))  # type: ignore[no-untyped-call]  # torch: no annotations


@_compiler_disable  # the sizes are data: torch.compile breaks the graph here
def gather_batches(tensor: torch.Tensor, group: object) -> torch.Tensor:
    """(Σ B_r, ...): every rank's batch (sizes may differ, 0 included), concatenated in rank
    order, differentiably."""
    group = _group_or_none(group)
    if group is None:
        return tensor
    sizes = _all_gather(torch.tensor([tensor.shape[0]], device=tensor.device), 0, group).tolist()
    if max(sizes) == 0:  # every rank's batch is empty (all ranks take this branch)
        return tensor
    padded = torch.cat([tensor, tensor.new_zeros((max(sizes) - tensor.shape[0], *tensor.shape[1:]))])
    gathered = _all_gather(padded.contiguous(), 0, group)
    parts = gathered.split(max(sizes))  # type: ignore[no-untyped-call]  # torch: Tensor.split has no annotations
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])
