"""One training loop for the three stages (tokenizer, LAM, dynamics).

The model is passed in and only has to provide `loss(batch) -> (loss, metrics)`; data is any
iterator of batches (a `genie.data.ShardLoader` is resumable). The Trainer owns the optimizer
(AdamW, the paper's betas 0.9/0.9 and weight decay 1e-4), the schedule (linear warmup, cosine
decay to min_lr), gradient accumulation and clipping, bf16 autocast on CUDA (fp32 on CPU), DDP or
FSDP2 under torchrun (`strategy`; genie.fsdp), optional torch.compile, step-numbered checkpoints
(optionally mirrored to object storage) and metrics (metrics.jsonl, and TensorBoard when
installed). It is Stateful (torchtitan's Trainer): `state_dict` holds model, optimizer, schedule
step, data position and every rank's RNG states, so that N steps straight and k steps + resume to
N give the same parameters.

Files under `run_dir/{stage}/`: `step_{n:07d}.pt` + `.json` (see genie.checkpoint),
`metrics.jsonl` (one JSON object per logged step; after a resume, steps past the checkpoint may
appear twice: the later line wins), `tb/` (TensorBoard events). With `mirror` set, each checkpoint
is also uploaded to `{mirror}/{run}/{stage}/` and a run folder without checkpoints resumes from
there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.flop_counter import FlopCounterMode

from genie import checkpoint as ckpt
from genie import distributed as gdist
from genie import fsdp as gfsdp

log = logging.getLogger(__name__)

STAGES = ("tokenizer", "lam", "dynamics")
STRATEGIES = ("ddp", "fsdp")


class LossModel(Protocol):
    """What the Trainer needs from a model (an nn.Module with this method)."""

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]: ...


@dataclass
class TrainConfig:
    stage: str = "tokenizer"  # checkpoint subdirectory: run_dir/{stage}/
    steps: int = 1000  # optimizer steps of the whole run (the cosine schedule's length)
    lr: float = 3e-4  # peak learning rate, reached at the end of warmup
    min_lr: float = 3e-4  # learning rate at the end of the cosine decay
    warmup_steps: int = 100  # linear warmup from lr/warmup_steps to lr
    beta1: float = 0.9  # AdamW betas: the paper uses 0.9, 0.9 for all three components
    beta2: float = 0.9
    weight_decay: float = 1e-4  # applied to matrices (dim >= 2) only, not biases, norms, gains
    grad_clip: float | None = 1.0  # max global gradient norm; None disables clipping
    grad_accum: int = 1  # micro-batches per optimizer step (each drawn from the data iterator)
    bf16: bool = True  # bf16 autocast on CUDA; CPU always runs fp32
    compile: bool = False  # torch.compile the (DDP-wrapped) loss module
    find_unused_parameters: bool = False  # DDP option for models with branches unused in a step
    # Under DDP, parameters whose name contains one of these are broadcast from rank 0 after each
    # step: VQ dead-code restarts overwrite codebook rows in place, differently on each rank.
    sync_params: tuple[str, ...] = ("codebook",)
    seed: int = 0  # per-rank seed is seed + rank
    log_every: int = 10  # steps between metric lines (and cross-rank reductions)
    ckpt_every: int = 1000  # steps between checkpoints (one is always written at the end of fit)
    keep_last: int = 3  # complete checkpoints kept
    resume: bool = True  # continue from the newest complete checkpoint in run_dir/{stage}
    eval_every: int = 0  # steps between eval_fn calls; 0 = never
    count_flops: bool = True  # count FLOPs of the first step (FlopCounterMode) for MFU
    peak_flops: float | None = None  # per-device peak FLOP/s for MFU; None = guess from GPU name
    tensorboard: bool = True  # also write TensorBoard events when tensorboard is installed
    # Under torchrun: "ddp" (a full replica per rank) or "fsdp" (FSDP2: parameters, gradients and
    # optimizer state sharded, one unit per ST block); one process ignores it.
    strategy: str = "ddp"
    mirror: str = ""  # URL (or folder) checkpoints are copied to: {mirror}/{run}/{stage}/; "" = off

    def __post_init__(self) -> None:
        if self.steps < 1 or self.grad_accum < 1 or self.log_every < 1 or self.ckpt_every < 1:
            raise ValueError("steps, grad_accum, log_every and ckpt_every must be >= 1")
        if not (0 <= self.warmup_steps <= self.steps):
            raise ValueError(f"warmup_steps {self.warmup_steps} not in [0, steps={self.steps}]")
        if not (0 < self.min_lr <= self.lr):
            raise ValueError(f"need 0 < min_lr <= lr, got {self.min_lr}, {self.lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError("grad_clip must be > 0 or None")
        if self.keep_last < 1 or self.eval_every < 0:
            raise ValueError("keep_last must be >= 1 and eval_every >= 0")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")


def paper_config(stage: str, **overrides: Any) -> TrainConfig:
    """The paper's optimizer settings per stage (Tab. 9 for LAM and dynamics), then overrides.

    tokenizer: lr = min_lr = 3e-4, warmup 10k; lam, dynamics: lr 3e-5 -> 3e-6, warmup 5k.
    Small runs should override steps and warmup_steps (warmup is clamped to steps).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    base = (
        dict(lr=3e-4, min_lr=3e-4, warmup_steps=10_000, steps=300_000)
        if stage == "tokenizer"
        else dict(lr=3e-5, min_lr=3e-6, warmup_steps=5_000, steps=200_000)
    )
    merged = {**base, "stage": stage, **overrides}
    merged["warmup_steps"] = min(merged["warmup_steps"], merged["steps"])
    return TrainConfig(**merged)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to min_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def optimizer_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable (name, parameter) in the optimizer's order: matrices, then the rest."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [(n, p) for n, p in named if p.dim() >= 2] + [(n, p) for n, p in named if p.dim() < 2]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (nanoGPT's split).

    Under FSDP each group is split again into sharded and replicated parameters (genie.fsdp).
    """
    params = [p for _, p in optimizer_params(model)]
    any_sharded = bool(gfsdp.split_sharded(params)[0])
    groups = []
    for decay, part in (
        (cfg.weight_decay, [p for p in params if p.dim() >= 2]),
        (0.0, [p for p in params if p.dim() < 2]),
    ):
        sharded, plain = gfsdp.split_sharded(part)
        if sharded:
            groups.append({"params": sharded, "weight_decay": decay})
        if plain or not any_sharded:  # without FSDP: always the same two groups
            groups.append({"params": plain, "weight_decay": decay})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors in (nested) dicts, lists and tuples to device."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the first dim of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    values = batch.values() if isinstance(batch, dict) else batch
    return next(batch_size_of(v) for v in values if isinstance(v, (torch.Tensor, dict, list)))


# Dense bf16 peak FLOP/s per device, by name fragment (vendor datasheets); MFU is None if unknown.
PEAK_BF16 = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "4090": 165e12,
    "3090": 71e12,
    "V100": 125e12,
}


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


class _LossModule(nn.Module):
    """Routes forward() to model.loss(), so DDP and torch.compile see a forward call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.loss(batch)


class Trainer:
    """Trains one model on one stream of batches (Stateful: state_dict / load_state_dict).

    Args:
        model: an nn.Module with `loss(batch) -> (scalar loss, {name: float})`; built and seeded
            by the caller identically on every rank (DDP broadcasts rank 0's weights anyway; FSDP
            checks that they are equal). Under FSDP its parameters become shards (genie.fsdp).
        data: an iterator of batches for this rank (per-rank micro-batch); if it has
            state_dict/load_state_dict (genie.data.ShardLoader) its position is checkpointed.
        cfg: the TrainConfig.
        run_dir: `runs/{run}`; checkpoints and metrics go to run_dir/{cfg.stage}/.
        meta: extra JSON for every checkpoint sidecar (dataset_version, preset, model config).
        tokens_fn: batch -> tokens in it, for tokens/s (e.g. B*T*H/p*W/p); None logs samples/s.
        eval_fn: model -> {name: float}, called every cfg.eval_every steps on every rank.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Iterator[Any],
        cfg: TrainConfig,
        run_dir: str | Path,
        *,
        meta: dict[str, Any] | None = None,
        tokens_fn: Callable[[Any], int] | None = None,
        eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        dist_info: gdist.DistInfo | None = None,
    ) -> None:
        self.cfg, self.data, self.meta = cfg, data, dict(meta or {})
        self.tokens_fn, self.eval_fn = tokens_fn, eval_fn
        self.dist = dist_info or gdist.current()
        self.device = self.dist.device
        self.dir = Path(run_dir) / cfg.stage
        self.fsdp = self.dist.distributed and cfg.strategy == "fsdp"
        self.mirror: ckpt.Mirror | None = None  # the stage's checkpoint copies on object storage
        if cfg.mirror:
            self.mirror = ckpt.Mirror(ckpt.mirror_url(cfg.mirror, run_dir, cfg.stage))
        seed_everything(cfg.seed + self.dist.rank)
        # under FSDP the model is moved unit by unit while sharding (genie.fsdp.shard)
        self.model = model if self.fsdp else model.to(self.device)
        self.step = 0  # optimizer steps taken
        self.flops_per_step: float | None = None  # this rank's FLOPs per optimizer step
        self.last_metrics: dict[str, float] = {}
        self._restored = False
        self._saved_step = -1
        module: nn.Module = _LossModule(self.model)
        self._replicated: list[nn.Parameter] = []  # FSDP: parameters kept whole on every rank
        if self.fsdp:  # in place: the model's parameters become DTensor shards
            self._replicated = gfsdp.shard(
                module, self.model, self.device, replicate=cfg.sync_params
            )
        elif self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DDP(module, device_ids=ids, find_unused_parameters=cfg.find_unused_parameters)
        self.optimizer = build_optimizer(self.model, cfg)  # after sharding: it holds the shards
        self._eager = module
        self._fwd = torch.compile(module) if cfg.compile else module
        self._window = {"t0": time.perf_counter(), "steps": 0, "samples": 0, "tokens": 0}
        self._tb = self._open_tensorboard() if self.dist.is_main and cfg.tensorboard else None

    # -- Stateful ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain containers only (weights_only-loadable). Collective when distributed.

        Under FSDP the model and optimizer entries are full state dicts on rank 0 ({} elsewhere),
        the optimizer's keyed by parameter name (genie.fsdp).
        """
        if self.fsdp:
            model_sd, optim_sd = gfsdp.full_state(self.model, self.optimizer)
        else:
            model_sd, optim_sd = self.model.state_dict(), self.optimizer.state_dict()
        data_sd = self.data.state_dict() if hasattr(self.data, "state_dict") else None
        return {
            "step": self.step,
            "model": model_sd,
            "optimizer": optim_sd,
            "schedule": {"step": self.step, "lr": lr_at(max(self.step - 1, 0), self.cfg)},
            "data": data_sd,
            "rng": gdist.all_gather_objects(ckpt.rng_state()),
            "flops_per_step": self.flops_per_step,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Inverse of state_dict. Under FSDP only rank 0's model and optimizer entries are read
        (the other ranks may pass {}); collective then."""
        osd = sd["optimizer"]
        if self.fsdp:
            if self.dist.is_main and osd and not gfsdp.keyed_by_name(osd):  # a DDP checkpoint
                osd = gfsdp.optimizer_to_names(osd, [n for n, _ in optimizer_params(self.model)])
            gfsdp.load_full_state(
                self.model,
                self.optimizer,
                sd["model"] if self.dist.is_main else {},
                osd if self.dist.is_main else {},
            )
        else:
            self.model.load_state_dict(sd["model"])
            if gfsdp.keyed_by_name(osd):  # an FSDP checkpoint
                osd = gfsdp.optimizer_to_ids(osd, self.model, self.optimizer)
            self.optimizer.load_state_dict(osd)
        self.step = int(sd["step"])
        self.flops_per_step = sd.get("flops_per_step")
        if sd.get("data") is not None and hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(sd["data"])
        rngs = sd["rng"]
        if len(rngs) == self.dist.world_size:
            ckpt.set_rng_state(rngs[self.dist.rank])
        else:  # world size changed: the run goes on, but not bit-for-bit
            log.warning(
                "checkpoint from %d ranks, now %d: reseeding", len(rngs), self.dist.world_size
            )
            seed_everything(self.cfg.seed + self.dist.rank + 7919 * self.step)

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; every rank must call), then
        upload it to the mirror if there is one."""
        state = self.state_dict()
        path = None
        if self.dist.is_main:
            meta = {
                **self.meta,
                "stage": self.cfg.stage,
                "config": asdict(self.cfg),
                "metrics": self.last_metrics,
                "world_size": self.dist.world_size,
                "strategy": "fsdp" if self.fsdp else "ddp",
            }
            path = ckpt.save_checkpoint(self.dir, self.step, state, meta, self.cfg.keep_last)
            if self.mirror is not None:
                self.mirror.upload(path, self.cfg.keep_last)
        gdist.barrier()
        self._saved_step = self.step
        return path

    def _checkpoint_step(self) -> int | None:
        """Step of the checkpoint to resume from: the newest complete one here or on the mirror,
        as rank 0 sees them (every rank resumes from the same one)."""
        step = None
        if self.dist.is_main:
            found = ckpt.list_checkpoints(self.dir)
            steps = [found[-1][0]] if found else []
            if self.mirror is not None and (remote_step := self.mirror.latest_step()) is not None:
                steps.append(remote_step)
            step = max(steps, default=None)
        return gdist.broadcast_object(step)

    def restore(self) -> bool:
        """Load the newest complete checkpoint of run_dir/{stage} or its mirror, if any.

        A checkpoint only on the mirror is downloaded into run_dir/{stage} first (by each node's
        local rank 0; under FSDP by rank 0 alone, the only rank that reads the file).
        """
        step = self._checkpoint_step()
        if step is None:
            return False
        path = ckpt.checkpoint_path(self.dir, step)
        reads = self.dist.is_main or not self.fsdp
        fetches = self.dist.is_main if self.fsdp else self.dist.local_rank == 0
        if fetches and self.mirror is not None and not ckpt.sidecar_path(path).is_file():
            self.mirror.fetch(step, self.dir)
        gdist.barrier()
        state: dict[str, Any] = {}
        if reads and not path.is_file():
            raise FileNotFoundError(
                f"rank {self.dist.rank}: {path} not found, but rank 0 resumes from step {step}: "
                "share the run folder between nodes, or set a checkpoint mirror"
            )
        if reads:
            state, _ = ckpt.load_checkpoint(
                path, map_location="cpu" if self.fsdp else self.device, mmap=self.fsdp
            )
        if self.fsdp:  # the small entries from rank 0; model and optimizer go through DCP
            small = gdist.broadcast_object(
                {k: v for k, v in state.items() if k not in ("model", "optimizer")}
            )
            state = {
                **small,
                "model": state.get("model", {}),
                "optimizer": state.get("optimizer", {}),
            }
        self.load_state_dict(state)
        self._saved_step = self.step
        log.info("resumed %s at step %d", path, self.step)
        return True

    # -- training ---------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.cfg.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _micro_step(self, batch: Any, sync: bool, count: bool) -> tuple[torch.Tensor, dict]:
        module = self._eager if count else self._fwd
        no_sync = isinstance(self._eager, DDP) and not sync
        with self._eager.no_sync() if no_sync else contextlib.nullcontext():
            counter = FlopCounterMode(display=False) if count else contextlib.nullcontext()
            with counter:
                with self._autocast():
                    loss, metrics = module(batch)
                (loss / self.cfg.grad_accum).backward()
        if count:
            self.flops_per_step = float(counter.get_total_flops()) * self.cfg.grad_accum
        return loss.detach(), metrics

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over cfg.grad_accum micro-batches.

        Returns this rank's metrics, averaged over micro-batches: floats or 0-d tensors (not
        synced to the host until logged).
        """
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        sums: dict[str, Any] = {}
        for micro in range(cfg.grad_accum):
            batch = to_device(next(self.data), self.device)
            self._window["samples"] += batch_size_of(batch)
            self._window["tokens"] += self.tokens_fn(batch) if self.tokens_fn else 0
            count = cfg.count_flops and self.flops_per_step is None and micro == 0
            if self.fsdp and micro == 0:  # rank 0's buffers everywhere, where DDP syncs them
                gfsdp.broadcast_buffers(self.model)  # (the forward after a synced one)
            loss, metrics = self._micro_step(batch, micro == cfg.grad_accum - 1, count)
            loss_sum += loss
            for k, v in metrics.items():  # 0-d tensors stay on the device until logged
                v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
                sums[k] = sums.get(k, 0.0) + v
        out: dict[str, Any] = {k: v / cfg.grad_accum for k, v in sums.items()}
        if self.fsdp:
            gfsdp.reduce_replicated_grads(self._replicated)
        if cfg.grad_clip is not None:
            params = list(self.model.parameters())
            norm = (
                gfsdp.clip_grad_norm_(params, cfg.grad_clip)
                if self.fsdp
                else torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            )
            out["grad_norm"] = norm  # a tensor until logged: no device sync per step
        self.optimizer.step()
        self._sync_params()
        self.step += 1
        self._window["steps"] += 1
        out["loss"] = loss_sum / cfg.grad_accum
        out["lr"] = lr
        return out

    @torch.no_grad()
    def _sync_params(self) -> None:
        if not self.dist.distributed or not self.cfg.sync_params:
            return
        for name, p in self.model.named_parameters():  # under FSDP these are the replicated ones
            if any(s in name for s in self.cfg.sync_params):
                torch.distributed.broadcast(p.data, src=0)

    def fit(self, steps: int | None = None) -> dict[str, float]:
        """Train until `steps` optimizer steps in total (default cfg.steps), resuming first.

        Returns the last logged metrics. A checkpoint is written every cfg.ckpt_every steps and
        at the end.
        """
        target = self.cfg.steps if steps is None else steps
        if self.cfg.resume and not self._restored:
            self.restore()
        self._restored = True
        self._window.update(t0=time.perf_counter(), steps=0, samples=0, tokens=0)
        while self.step < target:
            metrics = self.train_step()
            if self.step % self.cfg.log_every == 0 or self.step == target:
                self._log(metrics)
            if (
                self.eval_fn is not None
                and self.cfg.eval_every
                and self.step % self.cfg.eval_every == 0
            ):
                self._evaluate()
            if self.step % self.cfg.ckpt_every == 0 and self.step != target:
                self.save()
        if self._saved_step != self.step:
            self.save()
        return self.last_metrics

    def _evaluate(self) -> None:
        self.model.eval()
        with torch.no_grad(), self._autocast(), gfsdp.unsharded(self._eager):
            res = self.eval_fn(self.model)  # type: ignore[misc]
        res = gdist.all_reduce_mean({f"eval/{k}": float(v) for k, v in res.items()}, self.device)
        self._write({"step": self.step, **res})

    # -- metrics ----------------------------------------------------------------------------------
    def _log(self, metrics: dict[str, Any]) -> None:
        vals = {k: float(v) for k, v in metrics.items()}  # syncs the device once per log line
        vals = gdist.all_reduce_mean(vals, self.device)
        w = self._window
        dt = max(time.perf_counter() - w["t0"], 1e-9)
        world = self.dist.world_size
        vals["step_time_s"] = dt / max(w["steps"], 1)
        vals["samples_per_s"] = w["samples"] * world / dt
        if self.tokens_fn is not None:
            vals["tokens_per_s"] = w["tokens"] * world / dt
        if self.flops_per_step is not None:
            vals["flops_per_step"] = self.flops_per_step * world
            achieved = self.flops_per_step * w["steps"] / dt  # per device
            vals["tflops_per_s_per_device"] = achieved / 1e12
            peak = self.cfg.peak_flops or device_peak_flops(self.device)
            if peak:
                vals["mfu"] = achieved / peak
        self._window.update(t0=time.perf_counter(), steps=0, samples=0, tokens=0)
        self.last_metrics = vals
        self._write({"step": self.step, **vals})
        log.info(
            "%s step %d loss %.4f lr %.2e", self.cfg.stage, self.step, vals["loss"], vals["lr"]
        )

    def _write(self, row: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"stage": self.cfg.stage, **row}, sort_keys=True) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(f"{self.cfg.stage}/{k}", v, row["step"])
            self._tb.flush()

    def _open_tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional: metrics.jsonl has everything
            log.info("tensorboard not installed: metrics go to metrics.jsonl only")
            return None
        return SummaryWriter(log_dir=str(self.dir / "tb"))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def with_overrides(cfg: TrainConfig, **overrides: Any) -> TrainConfig:
    """A copy of cfg with fields replaced (validated again)."""
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
