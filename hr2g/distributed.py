"""Multi-process training with ``torchrun`` (DDP): rank/world discovery, and the collective that
keeps the knowledge bank identical on every rank.

Each rank draws its own episodes (episode slot = rank), DDP averages the gradients, and the bank
update is applied on every rank to the prototypes of *all* ranks gathered in rank order -- the
same sequence a single process fed the same episodes would apply, so the banks stay bit-identical.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_from_env(device_kind: str, timeout_min: int = 120) -> DistInfo:
    """Join the process group that ``torchrun`` describes (WORLD_SIZE > 1), else single process.

    Backend: NCCL on CUDA, gloo on CPU; a collective waits up to ``timeout_min`` minutes (rank 0
    evaluates alone between two of them).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if not dist.is_initialized():
        if device_kind == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_min))
    return DistInfo(rank, world, local)


def episodes_per_rank(episodes_per_step: int, world: int) -> int:
    """Each rank's share of a step's episodes; a ValueError naming the fix unless it divides evenly."""
    if episodes_per_step % world:
        raise ValueError(f"train.episodes_per_step={episodes_per_step} must be divisible by the world size {world} "
                         f"(each rank trains on its share); e.g. --set train.episodes_per_step={world}")
    return episodes_per_step // world


def gather_in_rank_order(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``x`` of every rank along dim 0, rank 0 first (identical result on all ranks)."""
    if not info.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (one tiny all-reduce)."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
