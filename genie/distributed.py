"""Process group set-up for torchrun (env:// rendezvous) and small collective helpers.

One process per device. Device choice: CUDA (the local rank's GPU) if available, else CPU; the
backend follows the device: nccl on CUDA, gloo on CPU. Without torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) everything runs as a single process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int  # global rank
    world_size: int  # number of processes
    local_rank: int  # rank on this node (picks the GPU)
    device: torch.device  # this process's device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(local_rank: int = 0) -> torch.device:
    """cuda:{local_rank} if CUDA is available, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the torchrun process group if launched by it (idempotent); else a single process.

    Args:
        backend: override ("gloo" / "nccl"); default nccl on CUDA, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = pick_device(local)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                                world_size=world, **kwargs)
        log.info("rank %d/%d on %s (%s)", rank, world, device, backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def current() -> DistInfo:
    """The DistInfo of an already initialised group (or a single process)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        return DistInfo(rank=rank, world_size=world, local_rank=local, device=pick_device(local))
    return DistInfo(rank=0, world_size=1, local_rank=0, device=pick_device(0))


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each scalar over ranks (keys must be the same, in the same order, on every rank)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's obj (pickled through the process group; small objects only)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
