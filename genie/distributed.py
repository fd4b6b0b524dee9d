"""Process group set-up for torchrun (env:// rendezvous), torchrun's arguments, small collectives.

One process per device. Device choice: CUDA (the local rank's GPU) if available, else CPU; the
backend follows the device: nccl on CUDA, gloo on CPU. Without torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) everything runs as a single process.
`torchrun_args` builds the launcher's command line for one node of a job (one or many nodes).
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


RDZV_BACKENDS = ("c10d", "static", "etcd", "etcd-v2")


def parse_nnodes(nnodes: int | str) -> tuple[int, int]:
    """(min, max) nodes of `nnodes`: an int, "N" or "MIN:MAX" (elastic)."""
    text = str(nnodes).strip()
    lo, _, hi = text.partition(":")
    try:
        n_min, n_max = int(lo), int(hi or lo)
    except ValueError:
        raise ValueError(f"nnodes must be N or MIN:MAX, got {nnodes!r}") from None
    if not 1 <= n_min <= n_max:
        raise ValueError(f"nnodes needs 1 <= MIN <= MAX, got {nnodes!r}")
    return n_min, n_max


def torchrun_args(
    *,
    nproc: int,
    nnodes: int | str = 1,
    node_rank: int = 0,
    rdzv_endpoint: str = "",
    rdzv_id: str = "",
    rdzv_backend: str = "c10d",
) -> list[str]:
    """Arguments after `python` that start torchrun for one node, or [] for a plain process.

    One node and no endpoint: `--standalone` (torchrun hosts its own rendezvous on a free local
    port), and no torchrun at all for one process. Otherwise a rendezvous every node joins:
    `--rdzv_backend/--rdzv_endpoint/--rdzv_id`, the same on every node of a job; `--node_rank`
    only for the static backend (c10d assigns ranks in joining order).

    Args:
        nproc: processes (GPUs) on this node.
        nnodes: nodes of the job, N or "MIN:MAX" (elastic; not with the static backend).
        node_rank: this node's rank, 0..N-1 (static backend only).
        rdzv_endpoint: HOST:PORT every node can reach; "" for a single node.
        rdzv_id: the job's id, the same on all its nodes and new for every job.
        rdzv_backend: c10d (hosted by the agent on HOST), static, etcd, etcd-v2.
    Returns:
        e.g. ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8"].
    """
    n_min, n_max = parse_nnodes(nnodes)
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if rdzv_backend not in RDZV_BACKENDS:
        raise ValueError(f"rdzv_backend must be one of {RDZV_BACKENDS}, got {rdzv_backend!r}")
    if n_max == 1 and not rdzv_endpoint:
        return (
            []
            if nproc == 1
            else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        )
    if not rdzv_endpoint:
        raise ValueError(f"nnodes={nnodes} needs rdzv_endpoint (HOST:PORT every node can reach)")
    host, _, port = rdzv_endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"rdzv_endpoint must be HOST:PORT, got {rdzv_endpoint!r}")
    if not rdzv_id:
        raise ValueError("a multi-node job needs an rdzv_id (the same on every node)")
    nodes = str(n_max) if n_min == n_max else f"{n_min}:{n_max}"
    args = [
        "-m",
        "torch.distributed.run",
        f"--nnodes={nodes}",
        f"--nproc_per_node={nproc}",
        f"--rdzv_backend={rdzv_backend}",
        f"--rdzv_endpoint={rdzv_endpoint}",
        f"--rdzv_id={rdzv_id}",
    ]
    if rdzv_backend == "static":
        if n_min != n_max:
            raise ValueError("the static rendezvous needs a fixed nnodes, not MIN:MAX")
        if not 0 <= node_rank < n_max:
            raise ValueError(f"node_rank must be in [0, {n_max}), got {node_rank}")
        args.append(f"--node_rank={node_rank}")
    return args


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
        dist.init_process_group(
            backend=backend, init_method="env://", rank=rank, world_size=world, **kwargs
        )
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


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s obj on every rank (pickled; small objects only)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
