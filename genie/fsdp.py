"""FSDP2 for the Trainer (`torch.distributed.fsdp.fully_shard`), applied outside the model.

Every ST block is its own FSDP unit and the loss wrapper is the root (it holds what is left:
embeddings, patch projections, heads), so parameters, gradients and AdamW state are sharded over
the ranks and a block's full weights exist only while it runs (ZeRO-3). The root's forward is the
model's `loss`, which is why the root is the wrapper that routes forward() to loss(): FSDP gathers
a unit's weights in its forward hooks, and the model's own forward() is never called in training.

Parameters edited in place during training (the VQ codebooks: dead-code restarts overwrite rows in
the forward pass) are kept whole on every rank instead (`ignored_params`): an in-place write to a
gathered copy would be lost when FSDP drops the copy. They behave as under DDP: their gradients
are averaged here (`reduce_replicated_grads`), rank 0's values are broadcast after each step (the
Trainer's `sync_params`), and buffers are broadcast from rank 0 before each forward, as DDP does,
so every rank makes rank 0's restart decisions.

Checkpoints hold full (unsharded) state dicts gathered to rank 0 on the CPU
(`torch.distributed.checkpoint.state_dict`, full_state_dict + cpu_offload) and are loaded on rank
0 and broadcast (broadcast_from_rank0), so an FSDP checkpoint is the same file format as a DDP one
except that optimizer state is keyed by parameter name instead of position; `optimizer_to_names`
and `optimizer_to_ids` convert, so a run may change strategy and resume.

Mixed precision stays bf16 autocast as with DDP (fp32 master weights and gathers); FSDP's own
MixedPrecisionPolicy (bf16 gathers) is not used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from genie import distributed as gdist
from genie.st_transformer import STBlock


def shard(
    root: nn.Module,
    model: nn.Module,
    device: torch.device,
    *,
    replicate: Sequence[str] = (),
    block_types: tuple[type[nn.Module], ...] = (STBlock,),
) -> list[nn.Parameter]:
    """fully_shard each block of `model`, then `root` (which contains `model`), in place.

    The model may still be on the CPU: fully_shard moves one unit (a block) at a time to `device`
    and keeps only this rank's shard there, so the full model never has to fit on one device.

    Args:
        root: the module whose forward the Trainer calls (wraps model.loss).
        model: the model; must hold identical weights on every rank (seed before building it):
            unlike DDP, FSDP does not broadcast rank 0's weights. Checked, ValueError otherwise.
        replicate: parameters whose name contains one of these stay whole on every rank.
        block_types: module classes that become their own FSDP unit.
    Returns:
        the replicated parameters (plain tensors; every other parameter is now a DTensor shard).
    """
    sums = gdist.all_gather_objects(
        sum(float(p.detach().double().sum()) for p in model.parameters())
    )
    if len(set(sums)) > 1:
        raise ValueError(f"ranks built different initial weights (sums {sums}): seed the model")
    keep = [p for n, p in model.named_parameters() if any(s in n for s in replicate)]
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for module in model.modules():
        if isinstance(module, block_types):
            own = {p for p in module.parameters() if any(p is k for k in keep)}
            fully_shard(module, mesh=mesh, ignored_params=own or None)
    fully_shard(root, mesh=mesh, ignored_params=set(keep) or None)
    # fully_shard moved shards and buffers to the device; the ignored parameters are ours to move
    for p in keep:
        p.data = p.data.to(device)
    return keep


def split_sharded(params: Sequence[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(DTensor shards, plain tensors) of params. The optimizer keeps them in separate groups so
    that no group mixes the two (a mix works on CPU; a foreach or fused kernel on CUDA may refuse
    it, which could not be tried here)."""
    sharded: list[nn.Parameter] = [p for p in params if isinstance(p, DTensor)]
    return sharded, [p for p in params if not isinstance(p, DTensor)]


@torch.no_grad()
def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers on every rank (what DDP does before each forward)."""
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


@torch.no_grad()
def reduce_replicated_grads(params: Sequence[nn.Parameter]) -> None:
    """Average the gradients of replicated parameters over ranks (FSDP reduces only its shards).

    A parameter without a gradient counts as a zero gradient, so every rank joins every reduction.
    """
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()  # gloo has no AVG
    for p, g in zip(params, flat.split([g.numel() for g in grads]), strict=True):
        p.grad = g.view_as(p).to(p.dtype)


@torch.no_grad()
def clip_grad_norm_(params: Sequence[nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ over sharded and replicated gradients at once.

    The global norm^2 is the all-reduced sum over every rank's shards plus the replicated
    gradients (equal on every rank after reduce_replicated_grads). Returns the norm before
    clipping (a 0-d tensor, the same on every rank).
    """
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g.to_local() for g in grads if isinstance(g, DTensor)]
    plain = [g for g in grads if not isinstance(g, DTensor)]
    sq = torch.zeros((), dtype=torch.float32, device=params[0].device)
    for g in sharded:  # shards partition each tensor: the sum over ranks is the whole
        sq += g.float().pow(2).sum()
    dist.all_reduce(sq)
    for g in plain:
        sq += g.float().pow(2).sum()
    norm = sq.sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # as torch: no-op below max_norm
    for g in [*sharded, *plain]:
        g.mul_(coef.to(g.dtype))
    return norm


@contextlib.contextmanager
def unsharded(root: nn.Module) -> Iterator[None]:
    """Gather the root unit's weights for code that calls model methods other than the root's
    forward (evaluation); blocks gather their own in their forward hooks."""
    if not isinstance(root, FSDPModule):
        yield
        return
    root.unshard()
    try:
        yield
    finally:
        root.reshard()


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_FROM_RANK0 = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model, optimizer) full state dicts on rank 0's CPU, {} on the other ranks (collective).

    The optimizer's is keyed by parameter name (see the module docstring).
    """
    msd = get_model_state_dict(model, options=_FULL)
    osd = get_optimizer_state_dict(model, optimizer, options=_FULL)
    return msd, osd  # type: ignore[return-value]


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_sd: dict[str, Any],
    optim_sd: dict[str, Any],
) -> None:
    """Inverse of full_state: rank 0 passes the full dicts (optimizer keyed by name), the other
    ranks {}; each rank keeps its shard (collective)."""
    set_model_state_dict(model, model_sd, options=_FROM_RANK0)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=_FROM_RANK0)


# ------------------------------------------------------------------------------------------------
# Optimizer state dicts: by position (torch's own, DDP checkpoints) <-> by name (FSDP checkpoints)


def keyed_by_name(optim_sd: dict[str, Any]) -> bool:
    return any(isinstance(i, str) for g in optim_sd["param_groups"] for i in g["params"])


def optimizer_to_names(optim_sd: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """A positional optimizer state dict keyed by name; names[i] is position i's parameter."""
    return {
        "state": {names[i]: v for i, v in optim_sd["state"].items()},
        "param_groups": [
            {**g, "params": [names[i] for i in g["params"]]} for g in optim_sd["param_groups"]
        ],
    }


def optimizer_to_ids(
    optim_sd: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """A by-name optimizer state dict in `optimizer`'s positional form (its own groups)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    state, groups, i = {}, [], 0
    for g in optimizer.param_groups:
        ids = []
        for p in g["params"]:
            if name_of[id(p)] in optim_sd["state"]:
                state[i] = optim_sd["state"][name_of[id(p)]]
            ids.append(i)
            i += 1
        groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
    return {"state": state, "param_groups": groups}
