"""Multi-process training under `torchrun` (WORLD_SIZE > 1): process group, embedding gather, gradient sum.

Data parallelism is DDP's scheme done by hand on the (small) prompt gradients: every rank runs the model
on its shard, the contrastive loss is computed over the *global* batch of embeddings (all-gathered,
with the gradient flowing only into the local slice, as the reference's AllGather does), and the prompt
gradients are summed over ranks after backward. Summing (not averaging) makes the update equal to
single-process training on the global batch. Doing it by hand (instead of wrapping in
DistributedDataParallel) keeps ranks in lock-step when a rank's batch shrinks or is empty because
videos failed to decode: every rank always joins the same collectives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int  # global rank (0 = the one that writes files and logs)
    world: int  # number of processes
    local_rank: int  # GPU index on this node

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(use_cuda: bool) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU).

    Collectives time out after $DGL_DIST_TIMEOUT_S seconds (default 600): a rank that dies or hangs ends the
    job with an error on the others instead of a silent wait (torchrun then stops the whole job)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo(0, 1, 0)
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("DGL_DIST_TIMEOUT_S", "600")))
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def gather_with_grad(local: torch.Tensor, world: int) -> torch.Tensor:
    """(B_r, E) per rank -> (sum B_r, E) in rank order; the gradient flows into this rank's slice only.

    Ranks may hold different numbers of rows (failed decodes): sizes are exchanged first and the
    rows padded to the largest.
    """
    if world == 1:
        return local
    sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], device=local.device))
    counts = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(counts), *local.shape[1:], dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    parts = [part[:count] for part, count in zip(parts, counts, strict=False)]
    parts[dist.get_rank()] = local  # the local rows keep their autograd history
    return torch.cat(parts)


def sum_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """All-reduce (sum) the gradients of `params` over ranks; a missing gradient counts as zero."""
    if world == 1:
        return
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad)


def global_count(count: int, world: int, device: torch.device) -> int:
    """Sum of an integer over ranks (e.g. the global number of videos in a step)."""
    if world == 1:
        return count
    total = torch.tensor([count], device=device)
    dist.all_reduce(total)
    return int(total.item())
