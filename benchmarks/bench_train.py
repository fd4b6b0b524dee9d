"""Benchmark: training throughput (tokens/s) of the project's loop (genie.train.Trainer) against a
bare PyTorch loop over the same model, the same batch and the same optimizer, in the same run.

For each preset (tiny, small) and component (tokenizer, LAM, dynamics), one synthetic in-memory
batch of the preset's real-run shape (genie.stages.DEFAULT_BATCH clips x max_frames frames; the
dynamics model gets random tokens and actions) is fed to both loops, so data loading is excluded
(benchmarks/bench_loader.py measures the loader). Both start from the same initial weights.

- project: `Trainer.fit` with the TrainConfig a real run gets (genie.stages.train_config for the
  preset's default steps: lr schedule, grad clipping at 1.0, metrics.jsonl every log_every=10 steps,
  FLOP counting on the first step, a checkpoint at the end of every fit call and every
  ckpt_every steps, TensorBoard when installed). Its data iterator repeats the one batch.
- bare: zero_grad, model.loss(batch), backward, clip_grad_norm_(1.0), AdamW.step: the least any
  loop must do for the same update (clipping is part of the recipe, so the reference does it too).

Blocks of `block` steps (tiny 10 = log_every; small 5, to keep the run under 5 minutes) alternate
project, bare, project, bare... so a load spike on this shared machine hits both (the first block
has one step less: step 1 is the warm-up). A project block is one `fit` call up to the next
multiple of `block`: a metrics line every 10 steps and one checkpoint per block (the final save of
fit), i.e. more checkpoints than a real run (every 20 steps for tiny, 200 for small). So two ratios are reported (throughput, project / bare):
- `ratio_as_run`: wall time of the blocks as run (1 checkpoint per block; pessimistic);
- `ratio_real_rates`: median step times plus the timed log and save calls amortised at the real
  run's log_every and ckpt_every (the save and log calls are timed in place by wrappers).
- `ratio_cpu_time_as_run`: as `ratio_as_run` in CPU seconds of the process (one intra-op thread),
  which do not count the time other jobs hold the core on this shared machine.
The target is a ratio >= 0.8 (project loop within 20% of bare).

FLOPs per step come from the Trainer's own counter (torch FlopCounterMode on the first step:
matmuls, convolutions and attention, forward + backward; the optimizer is not counted). On a GPU:

    MFU = flops_per_step * steps_per_s / peak_flops_per_device

with peak_flops from genie.train.PEAK_BF16 (dense bf16, vendor datasheets; written to the results).
The CPU has no entry; the achieved FLOP/s here are reported for scale only.

Usage: python benchmarks/bench_train.py [--presets tiny small] [--block N] [--pairs N]
       [--threads 1] [--out benchmarks/results/train.json]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
from common import machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)
from torch import nn

from genie import train as T
from genie.dynamics import DynamicsModel
from genie.lam import LatentActionModel
from genie.presets import PRESETS, GenieConfig
from genie.stages import DEFAULT_BATCH, default_steps, train_config
from genie.tokenizer import VideoTokenizer

COMPONENTS = ("tokenizer", "lam", "dynamics")
# small steps take ~3 s: shorter blocks keep the run near 5 min (on a free core; longer when loaded)
DEFAULT_BLOCK = {"tiny": 10, "small": 5}
DEFAULT_PAIRS = {"tiny": 4, "small": 3}


def _setup(cfg: GenieConfig, stage: str, batch: int, seed: int) -> tuple[nn.Module, Any, int]:
    """(model, batch, tokens per batch) for one component, batch of the real-run shape."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if stage == "dynamics":
        d = cfg.dynamics
        T_ = d.max_frames
        tokens = torch.randint(d.vocab_size, (batch, T_, d.grid_h, d.grid_w), generator=g)
        actions = torch.randint(d.n_actions, (batch, T_), generator=g)  # frame-aligned, as stored
        return DynamicsModel(config=d), {"tokens": tokens, "actions": actions}, tokens.numel()
    t = cfg.tokenizer  # the loader pads frames to the tokenizer's patch; the LAM takes them too
    (gh, gw), p = t.grid, t.patch
    x = torch.rand(batch, t.max_frames, t.channels, gh * p, gw * p, generator=g)
    if stage == "tokenizer":
        return VideoTokenizer(config=t), x, batch * t.max_frames * gh * gw
    lh, lw = cfg.lam.grid  # LAM tokens: its own 16-pixel patches
    return LatentActionModel(config=cfg.lam), x, batch * t.max_frames * lh * lw


def _repeat(batch: Any) -> Iterator[Any]:
    while True:
        yield batch


def _timed(fn: Callable[..., Any], sink: list[float]) -> Callable[..., Any]:
    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*a, **k)
        sink.append(time.perf_counter() - t0)
        return out

    return wrapper


def bench(preset: str, stage: str, block: int, pairs: int, seed: int = 0) -> dict[str, Any]:
    cfg = PRESETS[preset]()
    bs = DEFAULT_BATCH[preset]
    model, batch, tokens = _setup(cfg, stage, bs, seed)
    bare_model = copy.deepcopy(model)  # same initial weights
    real_steps = default_steps(stage, preset)
    tcfg = train_config(stage, preset, real_steps, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        tr = T.Trainer(model, _repeat(batch), tcfg, tmp)
        step_s: list[float] = []
        log_s: list[float] = []
        save_s: list[float] = []
        tr.train_step = _timed(tr.train_step, step_s)  # type: ignore[method-assign]
        tr._log = _timed(tr._log, log_s)  # type: ignore[method-assign]
        tr.save = _timed(tr.save, save_s)  # type: ignore[method-assign]
        tr.fit(1)  # warm-up: the FLOP-counted first step (not timed below) and a first save
        for timings in (step_s, log_s, save_s):
            timings.clear()

        opt = torch.optim.AdamW(
            bare_model.parameters(),
            lr=tcfg.lr,
            betas=(tcfg.beta1, tcfg.beta2),
            weight_decay=tcfg.weight_decay,
        )
        bare_step: list[float] = []

        def bare_one() -> None:
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss, _ = cast(T.LossModel, bare_model).loss(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(bare_model.parameters(), tcfg.grad_clip or 1.0)
            opt.step()
            bare_step.append(time.perf_counter() - t0)

        bare_model.train()
        bare_one()  # warm-up
        bare_step.clear()
        proj_block, bare_block, proj_cpu, bare_cpu = [], [], [], []
        for k in range(1, pairs + 1):  # fit to step k*block (a metrics line every 10 steps)
            n = k * block - tr.step
            t0, c0 = time.perf_counter(), time.process_time()
            tr.fit(k * block)
            proj_block.append((time.perf_counter() - t0) / n)
            proj_cpu.append((time.process_time() - c0) / n)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                bare_one()
            bare_block.append((time.perf_counter() - t0) / n)
            bare_cpu.append((time.process_time() - c0) / n)
        metrics_lines = (Path(tmp) / stage / "metrics.jsonl").read_text().count("\n")
        tr.close()
    flops = tr.flops_per_step
    pb, bb = statistics.median(proj_block), statistics.median(bare_block)
    ps, bs_, lg, sv = (statistics.median(x) for x in (step_s, bare_step, log_s, save_s))
    proj_real = ps + lg / tcfg.log_every + sv / tcfg.ckpt_every
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "preset": preset, "component": stage, "batch": bs, "tokens_per_step": tokens,
        "params": n_params, "flops_per_step": flops,
        "flops_per_token": flops / tokens if flops else None,
        "six_n_flops_per_token": 6 * n_params,  # the dense-transformer rule of thumb, for scale
        "real_run": {"steps": real_steps, "log_every": tcfg.log_every,
                     "ckpt_every": tcfg.ckpt_every},
        "block_steps": block, "pairs": pairs, "metrics_lines_written": metrics_lines,
        "bare_tokens_per_s": tokens / bb, "project_tokens_per_s_as_run": tokens / pb,
        "project_tokens_per_s_real_rates": tokens / proj_real,
        "ratio_as_run": bb / pb, "ratio_real_rates": bs_ / proj_real,
        "ratio_train_step_only": bs_ / ps,
        # CPU seconds of the process (one intra-op thread): blind to time other jobs hold the core,
        # but also to the checkpoint's fsync wait; a cross-check of ratio_as_run on a busy machine
        "ratio_cpu_time_as_run": statistics.median(bare_cpu) / statistics.median(proj_cpu),
        "bare_step_s": bs_, "project_train_step_s": ps, "project_log_s": lg, "project_save_s": sv,
        "bare_block_s_per_step_all": bare_block, "project_block_s_per_step_all": proj_block,
        "cpu_gflops_per_s": flops / bs_ / 1e9 if flops else None,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    ap.add_argument("--components", nargs="+", default=list(COMPONENTS), choices=COMPONENTS)
    ap.add_argument("--block", type=int, default=10, help="steps per timed block (= log_every)")
    ap.add_argument(
        "--pairs", type=int, default=None, help="block pairs (default: tiny 5, small 2)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    rows = []
    for preset in a.presets:
        for stage in a.components:
            block, pairs = a.block or DEFAULT_BLOCK[preset], a.pairs or DEFAULT_PAIRS[preset]
            r = bench(preset, stage, block, pairs)
            rows.append(r)
            print(f"{preset:5s} {stage:9s} bare {r['bare_tokens_per_s']:9.0f} tok/s, project "
                  f"{r['project_tokens_per_s_as_run']:9.0f} as run ({r['ratio_as_run']:.3f}), "
                  f"{r['project_tokens_per_s_real_rates']:9.0f} at real rates "
                  f"({r['ratio_real_rates']:.3f}), CPU time {r['ratio_cpu_time_as_run']:.3f}; "
                  f"save {r['project_save_s'] * 1e3:.0f} ms, "
                  f"{r['flops_per_step'] / 1e9:.2f} GFLOP/step", flush=True)  # fmt: skip
    res = {
        "benchmark": "train",
        "target": "project loop tokens/s >= 0.8 x bare loop (within 20%)",
        "mfu_formula": "flops_per_step * steps_per_s / peak_flops_per_device",
        "peak_flops_per_device_bf16": T.PEAK_BF16,
        "flop_counter": "torch.utils.flop_counter.FlopCounterMode over forward+backward of step 1",
        "results": rows,
        "runtime_s": time.perf_counter() - t_start,
        "machine": machine(a.threads, torch=torch.__version__, device="cpu"),
    }  # fmt: skip
    write_results(a.out, res, f" in {res['runtime_s']:.0f} s")


if __name__ == "__main__":
    main()
