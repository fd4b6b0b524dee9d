"""genie.train / checkpoint / distributed with toy models (the real models are tested elsewhere)."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from genie import checkpoint as ckpt
from genie import data as D
from genie import distributed as gdist
from genie.train import TrainConfig, Trainer, lr_at, paper_config
from tests.genie.test_data import make_dataset

W_TRUE = torch.linspace(-1, 1, 64).reshape(8, 8)


class Toy(nn.Module):
    """A 2-layer MLP regressor; dropout draws from the torch RNG (exercises RNG resume).

    With restart=True it also has a `codebook` that forward() overwrites in place from the torch
    RNG, as a VQ dead-code restart does: under DDP each rank draws different values.
    """

    def __init__(self, dropout: float = 0.0, restart: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, 8))
        self.restart = restart
        if restart:
            self.codebook = nn.Parameter(torch.zeros(4, 8))

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        err = F.mse_loss(self.net(batch["x"]), batch["y"])
        metrics = {"mse": err.item(), "rmse": err.detach().sqrt()}  # floats or 0-d tensors
        if self.restart:
            with torch.no_grad():
                self.codebook[0] = torch.randn(8)
            err = err + 0.0 * self.codebook.sum()
        return err, metrics


class ToySource:
    """Batch i is a pure function of i (plus numpy noise from the global RNG); Stateful.

    Under DDP each rank takes its slice of the same global batch, so 2 ranks x 4 rows equal
    1 rank x 8 rows.
    """

    def __init__(self, global_batch: int = 8, rank: int = 0, world: int = 1,
                 noise: float = 0.0) -> None:
        self.i, self.gb, self.rank, self.world, self.noise = 0, global_batch, rank, world, noise

    def __iter__(self) -> ToySource:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1000 + self.i)
        x = torch.randn(self.gb, 8, generator=g)
        y = x @ W_TRUE
        if self.noise:
            y = y + self.noise * torch.from_numpy(np.random.randn(*y.shape)).float()
        self.i += 1
        per = self.gb // self.world
        return {"x": x[self.rank * per:(self.rank + 1) * per],
                "y": y[self.rank * per:(self.rank + 1) * per]}

    def state_dict(self) -> dict[str, int]:
        return {"i": self.i}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        self.i = sd["i"]


def toy_cfg(**kw) -> TrainConfig:
    base = dict(stage="lam", steps=40, lr=1e-2, min_lr=1e-3, warmup_steps=4, log_every=5,
                ckpt_every=1000, tensorboard=False)
    return TrainConfig(**{**base, **kw})


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_schedule_values() -> None:
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(4, cfg) == pytest.approx(0.5)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert lr_at(35, cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)
    dyn, tok = paper_config("dynamics"), paper_config("tokenizer", steps=100)
    assert (dyn.lr, dyn.min_lr, dyn.warmup_steps, dyn.beta1, dyn.beta2, dyn.weight_decay) == \
        (3e-5, 3e-6, 5000, 0.9, 0.9, 1e-4)
    assert (tok.lr, tok.min_lr, tok.warmup_steps, tok.steps) == (3e-4, 3e-4, 100, 100)
    with pytest.raises(ValueError):
        TrainConfig(min_lr=1.0, lr=0.1)
    with pytest.raises(ValueError):
        paper_config("vae")


def test_loss_falls_and_metrics_are_logged(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = Trainer(Toy(), ToySource(16), toy_cfg(grad_accum=2), tmp_path,
                      tokens_fn=lambda b: b["x"].numel())
    trainer.fit()
    rows = read_metrics(tmp_path / "lam" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert rows[-1]["loss"] < 0.2 * rows[0]["loss"]
    assert rows[-1]["lr"] == pytest.approx(lr_at(39, trainer.cfg))
    assert rows[0]["samples_per_s"] > 0 and rows[0]["tokens_per_s"] > 0
    assert set(rows[0]) >= {"mse", "rmse", "grad_norm", "step_time_s", "tflops_per_s_per_device"}
    # FLOPs of one step = 2 micro-batches x (forward 2*16*(8*32 + 32*8) + backward: weight grads
    # of both layers and the input grad of the second)
    fwd = 2 * 16 * (8 * 32 + 32 * 8)
    assert rows[0]["flops_per_step"] == 2 * (fwd + fwd + fwd // 2)
    assert "mfu" not in rows[0]  # no peak known on CPU
    assert trainer.optimizer.param_groups[0]["betas"] == (0.9, 0.9)


def test_checkpoints_round_trip_weights_only_and_keep_last(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = toy_cfg(steps=7, ckpt_every=2, keep_last=2)
    trainer = Trainer(Toy(), ToySource(), cfg, tmp_path, meta={"dataset_version": "v-test"})
    trainer.fit()
    d = tmp_path / "lam"
    assert sorted(p.name for p in d.glob("step_*")) == [
        "step_0000006.json", "step_0000006.pt", "step_0000007.json", "step_0000007.pt"]
    assert not list(d.glob(".tmp-*"))
    state = torch.load(d / "step_0000007.pt", weights_only=True)
    side = json.loads((d / "step_0000007.json").read_text())
    assert side["step"] == 7 and side["dataset_version"] == "v-test"
    assert side["config"]["lr"] == cfg.lr and side["metrics"]["loss"] > 0
    assert state["step"] == 7 and state["data"] == {"i": 7}
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(state["model"][k], v)
    # a .pt without its sidecar is an incomplete checkpoint: never resumed from
    (d / "step_0000099.pt").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(d) == d / "step_0000007.pt"
    other = Toy()
    side2 = ckpt.load_model_weights(other, d)  # the newest complete one, model weights only
    assert side2["step"] == 7 and side2["path"].endswith("step_0000007.pt")
    assert torch.equal(other.net[0].weight, trainer.model.net[0].weight)
    fresh = Trainer(Toy(), ToySource(), cfg, tmp_path)
    assert fresh.restore() and fresh.step == 7
    for a, b in zip(fresh.model.parameters(), trainer.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_rng_state_round_trip() -> None:
    import random
    state = ckpt.rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_exact_resume_toy(tmp_path: Path) -> None:
    """6 steps straight == 3 steps, a new process-like Trainer, resume, 3 more (bitwise)."""
    def run(run_dir: Path, stops: list[int]) -> Trainer:
        for stop in stops:  # a fresh Trainer (and model) per segment, as after a crash
            torch.manual_seed(0)
            tr = Trainer(Toy(dropout=0.2), ToySource(noise=0.1), toy_cfg(steps=6), run_dir)
            tr.fit(stop)
        return tr

    straight = run(tmp_path / "a", [6])
    resumed = run(tmp_path / "b", [3, 6])
    for a, b in zip(_params(straight.model), _params(resumed.model), strict=True):
        assert torch.equal(a, b)
    sa, sb = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    for k in sa["state"]:
        assert torch.equal(sa["state"][k]["exp_avg_sq"], sb["state"][k]["exp_avg_sq"])
    assert resumed.step == 6 and resumed.data.i == 6


class NextFrame(nn.Module):
    """Predicts frame t+1 from frame t with a 1x1 conv: a toy video model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        b, t = x.shape[:2]
        pred = self.conv(x[:, :-1].reshape(b * (t - 1), *x.shape[2:]))
        return F.mse_loss(pred, x[:, 1:].reshape_as(pred)), {}


def test_exact_resume_with_video_loader(tmp_path: Path) -> None:
    """Data position resumes too: worker processes, shuffle buffer and windows continue."""
    ds = make_dataset(tmp_path / "ds")
    dcfg = D.VideoDataConfig(batch_size=2, num_workers=2, shuffle_buffer=3, frames=4)

    def run(run_dir: Path, stops: list[int]) -> Trainer:
        for stop in stops:
            torch.manual_seed(0)
            tr = Trainer(NextFrame(), D.video_loader(ds, dcfg), toy_cfg(steps=5, lr=1e-1),
                         run_dir, tokens_fn=lambda x: x.shape[0] * x.shape[1] * 23 * 40)
            tr.fit(stop)
        return tr

    straight = run(tmp_path / "a", [5])
    resumed = run(tmp_path / "b", [2, 5])
    assert resumed.data.batches == 5
    for a, b in zip(_params(straight.model), _params(resumed.model), strict=True):
        assert torch.equal(a, b)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, run_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = gdist.init_distributed()
    try:
        torch.manual_seed(0)
        trainer = Trainer(Toy(restart=True), ToySource(8, rank, world),
                          toy_cfg(steps=4, log_every=1), run_dir, dist_info=info)
        trainer.fit()
        torch.save(_params(trainer.model), f"{out}.{rank}")
    finally:
        gdist.cleanup()


def test_ddp_two_cpu_processes_match_one_process(tmp_path: Path) -> None:
    # fork, not spawn: a spawned child re-imports torch and this module (~20 s on a busy box)
    mp.start_processes(_ddp_worker, nprocs=2, join=True, start_method="fork",
                       args=(2, _free_port(), str(tmp_path / "ddp"), str(tmp_path / "p.pt")))
    ddp = torch.load(tmp_path / "p.pt.0", weights_only=True)
    ddp1 = torch.load(tmp_path / "p.pt.1", weights_only=True)
    torch.manual_seed(0)
    single = Trainer(Toy(restart=True), ToySource(8), toy_cfg(steps=4, log_every=1),
                     tmp_path / "one")
    single.fit()
    # ranks agree, including the codebook each rank overwrote with its own random draws
    for a, b in zip(ddp, ddp1, strict=True):
        assert torch.equal(a, b)
    # and equal one process on the same global batch (rank 0 draws what one process draws)
    for a, b in zip(ddp, _params(single.model), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.equal(ddp[0], Toy().net[0].weight)  # it trained
    rows = read_metrics(tmp_path / "ddp" / "lam" / "metrics.jsonl")  # rank 0 only writes
    one = read_metrics(tmp_path / "one" / "lam" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)  # mean over ranks
    assert rows[0]["flops_per_step"] == one[0]["flops_per_step"]
