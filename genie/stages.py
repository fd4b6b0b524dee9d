"""Prefect-free stage runners of train-genie: [tokenizer || LAM] -> tokenize -> dynamics.

The paper's staging: the tokenizer and the LAM train independently on raw clips (they may run in
parallel), then every clip is encoded once (tokens + frame-aligned latent actions, `run_dir/tokens/`),
then the dynamics model trains on those tokens. Evaluation is `genie.evaluate`.

Every stage lives in `run_dir/{folder}` (tokenizer/, lam/, tokens/, dynamics/) and has two markers:
- `INPUTS.json`, written when the stage starts: its inputs and their `identity` hash (dataset version,
  preset and the stage's own model config, batch size, seed, overrides, upstream fingerprints, code
  version; everything except `steps`), plus the full `genie_config` (recorded, not hashed).
- `DONE.json`, written last: the same, `fingerprint` = hash(inputs, steps), and the StageResult.
A call whose fingerprint equals DONE's is skipped (skipped=True, nothing is trained or written).
A call with the same identity and more steps continues from the newest checkpoint (the Trainer
resumes; the cosine schedule is stretched to the new length), as does a call after a crash (INPUTS
without DONE). Any other difference (other data, preset, code version, upstream retrained, fewer
steps than done or checkpointed) raises StageChanged naming the fields, unless on_change="rerun":
then the old folder is moved aside to `{folder}.superseded-{old fingerprint}-{unix time}` and the
stage runs in a fresh folder. Under torchrun every rank runs the stage; only rank 0 writes markers
and moves folders.

How a stage is trained, as opposed to what it trains, is not part of its identity: the world size,
the strategy (DDP or FSDP, `genie.presets.train_strategy`) and the checkpoint mirror URL
(`checkpoint_url`: checkpoints are also uploaded to `{checkpoint_url}/{run}/{stage}/`, and a run
folder without checkpoints resumes from there). The data root may be an fsspec URL.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from genie import checkpoint as ckpt
from genie import data as D
from genie import distributed as gdist
from genie import remote
from genie.dynamics import DynamicsModel
from genie.lam import LatentActionModel
from genie.presets import (
    PRESETS,
    DynamicsConfig,
    GenieConfig,
    LAMConfig,
    TokenizerConfig,
    train_strategy,
)
from genie.tokenizer import VideoTokenizer
from genie.train import TrainConfig, Trainer, paper_config, with_overrides

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    name: str  # stage name (CLI, flow, StageResult.stage)
    folder: str  # run_dir/{folder}: checkpoints, metrics.jsonl, markers
    needs: tuple[str, ...]  # upstream stages; their fingerprints are part of this one's inputs
    trains: bool  # False: a pure transform (tokenize)


STAGES: dict[str, StageSpec] = {
    "tokenizer": StageSpec("tokenizer", "tokenizer", (), True),
    "lam": StageSpec("lam", "lam", (), True),
    "tokenize": StageSpec("tokenize", "tokens", ("tokenizer", "lam"), False),
    "dynamics": StageSpec("dynamics", "dynamics", ("tokenize",), True),
}
# per-rank batch size when none is given: small enough for a CPU demo / one GPU
DEFAULT_BATCH = {"tiny": 2, "small": 4, "coinrun": 16, "paper": 16}


@dataclass
class StageResult:
    stage: str  # a key of STAGES
    run_dir: str  # the run folder
    stage_dir: str  # run_dir/{folder}
    steps: int  # optimizer steps the stage has trained (0 for tokenize)
    metrics: dict[str, float]  # last logged training metrics (tokenize: clip/shard counts)
    checkpoint: str | None  # newest checkpoint (.pt) or the token manifest for tokenize
    fingerprint: str  # hash of the inputs and steps (see the module docstring)
    skipped: bool = False  # True: DONE.json already matched; nothing ran
    seconds: float = 0.0  # wall time of this call
    inputs: dict[str, Any] = field(default_factory=dict)  # what the fingerprint was made of

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StageChanged(RuntimeError):
    """A stage folder holds work done with other inputs (see the module docstring)."""


# ------------------------------------------------------------------------------------------------
# Fingerprints and markers


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Version of the model code: $GENIE_CODE_VERSION, else `git describe --always --tags` of the
    last commit that touched genie/ (+ "-dirty" when genie/ has uncommitted changes), else the
    installed package version. Commits elsewhere in the repo (pipelines, docs) do not change it.
    Cached per process, so one run is never split by a concurrent commit."""
    if os.environ.get("GENIE_CODE_VERSION"):
        return os.environ["GENIE_CODE_VERSION"]
    pkg = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=pkg, capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()

    try:
        last = git("log", "-1", "--format=%H", "--", ".")
        described = git("describe", "--always", "--tags", last) if last else "uncommitted"
        return described + ("-dirty" if git("status", "--porcelain", "--", ".") else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "open-genie " + version("open-genie")
        except PackageNotFoundError:
            return "unknown"


def dataset_version(data: str | Path | Sequence[str | Path]) -> str:
    """The manifest's version, or for a plain shard list a hash of (name, size) of each shard."""
    paths, version = D.resolve_shards(data)
    if version:
        return str(version)
    ident = [(Path(p).name, remote.size(p)) for p in paths]
    return "files-" + _hash(ident)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def genie_config(preset: str) -> GenieConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; one of {sorted(PRESETS)}")
    return PRESETS[preset]()


def config_from_dict(d: dict[str, Any]) -> GenieConfig:
    """Inverse of asdict(GenieConfig) (as stored in DONE.json)."""
    return GenieConfig(
        tokenizer=TokenizerConfig(**d["tokenizer"]),
        lam=LAMConfig(**d["lam"]),
        dynamics=DynamicsConfig(**d["dynamics"]),
    )


def read_marker(run_dir: str | Path, stage: str, name: str = "DONE.json") -> dict[str, Any] | None:
    path = Path(run_dir) / STAGES[stage].folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def _finite(obj: Any) -> Any:
    """NaN/inf -> None, recursively: strict JSON (browsers, jq) has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (temporary file + rename); non-finite floats become null."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(_finite(obj), indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _run(
    stage: str,
    run_dir: Path,
    inputs: dict[str, Any],
    steps: int,
    on_change: str,
    work: Callable[[Path], tuple[dict[str, float], str | None]],
    config: GenieConfig,
) -> StageResult:
    """Skip, continue, refuse or re-run one stage (module docstring), then write DONE.json."""
    if on_change not in ("error", "rerun"):
        raise ValueError(f"on_change must be 'error' or 'rerun', got {on_change!r}")
    dist = gdist.current()
    folder = run_dir / STAGES[stage].folder
    inputs = {**inputs, "stage": stage, "code_version": code_version()}
    identity, fp = _hash(inputs), _hash({**inputs, "steps": steps})
    done, started = read_marker(run_dir, stage), read_marker(run_dir, stage, "INPUTS.json")
    if done is not None and done["fingerprint"] == fp:
        log.info("%s: already done (%s), skipped", stage, fp)
        return StageResult(**{**done["result"], "skipped": True, "seconds": 0.0})
    prev = done or started
    if prev is not None and (prev["identity"] != identity or (done and done["steps"] > steps)):
        as_read = json.loads(json.dumps(_finite(inputs), default=str))  # as stored: tuples -> lists
        why = _changed_fields(prev["inputs"], as_read) or [
            f"steps: {steps} < {done and done['steps']} done"
        ]
        if on_change == "error":
            raise StageChanged(
                f"{folder} holds {stage} work made with other inputs (changed: {', '.join(why)}); "
                f"use another run dir, or on_change='rerun' to move it aside and start afresh"
            )
        if dist.is_main:
            tag = f"{prev.get('fingerprint', prev['identity'])}-{int(time.time())}"
            old = folder.with_name(f"{folder.name}.superseded-{tag}")
            log.warning("%s: inputs changed (%s): moving %s to %s", stage, why, folder, old)
            os.replace(folder, old)
        done = None
    if dist.is_main:
        if done is not None:  # same inputs, more steps: continue from the newest checkpoint
            log.info("%s: continuing from %d to %d steps", stage, done["steps"], steps)
            (folder / "DONE.json").unlink()
        record = {"identity": identity, "inputs": inputs, "genie_config": asdict(config)}
        write_json(folder / "INPUTS.json", record)
    gdist.barrier()
    t0 = time.perf_counter()
    metrics, artefact = work(folder)
    result = StageResult(stage=stage, run_dir=str(run_dir), stage_dir=str(folder), steps=steps,
                         metrics=metrics, checkpoint=artefact, fingerprint=fp, skipped=False,
                         seconds=time.perf_counter() - t0, inputs=inputs)  # fmt: skip
    if dist.is_main:
        done = {"fingerprint": fp, "identity": identity, "steps": steps, "inputs": inputs,
                "genie_config": asdict(config), "result": result.to_dict()}  # fmt: skip
        write_json(folder / "DONE.json", done)
    gdist.barrier()
    return result


def _upstream(run_dir: Path, stage: str, preset: str) -> dict[str, str]:
    """Fingerprints of the stages `stage` needs; each must be DONE with the same preset."""
    out = {}
    for need in STAGES[stage].needs:
        done = read_marker(run_dir, need)
        if done is None:
            raise FileNotFoundError(
                f"{stage} needs the {need} stage: no {run_dir}/"
                f"{STAGES[need].folder}/DONE.json (run it first)"
            )
        if done["inputs"]["preset"] != preset:
            raise ValueError(
                f"{need} was trained with preset {done['inputs']['preset']!r}, not {preset!r}"
            )
        out[need] = done["fingerprint"]
    return out


# ------------------------------------------------------------------------------------------------
# Training stages


def train_config(
    stage: str,
    preset: str,
    steps: int,
    *,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """The paper's optimizer settings (genie.train.paper_config) scaled to `steps`, then overrides.

    Warmup is 5% of the run when the run is shorter than the paper's; checkpoints every ~10% (at
    most every 1000 steps). The demo presets (tiny, small) use lr 3e-4 -> 3e-5 for every stage:
    the paper's 3e-5 for LAM and dynamics learns next to nothing in a few hundred steps.
    """
    base = paper_config(stage)
    cfg = paper_config(stage, steps=steps, warmup_steps=min(base.warmup_steps, steps // 20),
                       log_every=max(1, min(10, steps)), ckpt_every=max(1, min(1000, steps // 10)),
                       seed=seed)  # fmt: skip
    if preset in ("tiny", "small"):
        cfg = with_overrides(cfg, lr=3e-4, min_lr=3e-5)
    return with_overrides(cfg, **(overrides or {}))


def video_config(
    cfg: GenieConfig, batch_size: int, num_workers: int, seed: int
) -> D.VideoDataConfig:
    t = cfg.tokenizer  # the LAM sees the same frame size (GenieConfig checks it)
    return D.VideoDataConfig(
        batch_size=batch_size,
        frames=t.max_frames,
        patch=t.patch,
        size=(t.height, t.width),
        num_workers=num_workers,
        seed=seed,
    )


def how_trained(preset: str, strategy: str = "auto", checkpoint_url: str = "") -> dict[str, Any]:
    """TrainConfig fields that say how, not what, a stage trains (not part of its identity)."""
    return {"strategy": train_strategy(preset, strategy), "mirror": checkpoint_url}


def _fit(
    model: torch.nn.Module,
    loader: D.ShardLoader,
    tcfg: TrainConfig,
    run_dir: Path,
    meta: dict[str, Any],
) -> tuple[dict[str, float], str | None]:
    found = [s for s, _ in ckpt.list_checkpoints(run_dir / tcfg.stage)]
    if tcfg.mirror:
        mirror = ckpt.Mirror(ckpt.mirror_url(tcfg.mirror, run_dir, tcfg.stage))
        found += [s for s, _ in mirror.list()]
    if found and max(found) > tcfg.steps:  # an interrupted longer run of the same inputs
        raise StageChanged(
            f"{run_dir / tcfg.stage} (or its mirror) has a checkpoint at step {max(found)} > steps "
            f"{tcfg.steps}: ask for at least that many steps, or use another run dir"
        )
    trainer = Trainer(model, loader, tcfg, run_dir, meta=meta)
    try:
        metrics = trainer.fit()
    finally:
        trainer.close()
    last = ckpt.latest_checkpoint(run_dir / tcfg.stage)
    if not metrics and last is not None:  # resumed at the target: nothing was logged this call
        metrics = json.loads(ckpt.sidecar_path(last).read_text()).get("metrics", {})
    return metrics, None if last is None else str(last)


# fmt: off
def _train_video_stage(
    stage: str, data: str | Path, run_dir: str | Path, preset: str, steps: int, *,
    batch_size: int | None, num_workers: int, seed: int, overrides: dict[str, Any] | None,
    on_change: str, strategy: str, checkpoint_url: str,
) -> StageResult:
    run = Path(run_dir)
    cfg = genie_config(preset)
    bs = batch_size or DEFAULT_BATCH.get(preset, 8)
    sub = asdict(cfg.tokenizer if stage == "tokenizer" else cfg.lam)
    inputs = {"dataset_version": dataset_version(data), "preset": preset, "config": sub,
              "batch_size": bs, "seed": seed,
              "overrides": overrides or {}, "upstream": {}}

    def work(folder: Path) -> tuple[dict[str, float], str | None]:
        torch.manual_seed(seed)  # identical initial weights on every rank
        model = (VideoTokenizer(config=cfg.tokenizer) if stage == "tokenizer"
                 else LatentActionModel(config=cfg.lam))
        loader = D.video_loader(data, video_config(cfg, bs, num_workers, seed))
        tcfg = with_overrides(train_config(stage, preset, steps, seed=seed, overrides=overrides),
                              **how_trained(preset, strategy, checkpoint_url))
        meta = {**inputs, "stage": stage, "genie_config": asdict(cfg)}  # read by genie.play
        return _fit(model, loader, tcfg, run, meta)

    return _run(stage, run, inputs, steps, on_change, work, cfg)


def train_tokenizer(
    data: str | Path, run_dir: str | Path, preset: str, steps: int, *,
    batch_size: int | None = None, num_workers: int = 2, seed: int = 0,
    overrides: dict[str, Any] | None = None, on_change: str = "error", strategy: str = "auto",
    checkpoint_url: str = "",
) -> StageResult:
    """Train the video tokenizer on `data` (a build-dataset folder or URL) into run_dir/tokenizer.

    Args:
        preset: a genie.presets.PRESETS name; clips are area-resized to its frame size.
        steps: total optimizer steps of the stage.
        batch_size: clips per batch per rank (default DEFAULT_BATCH[preset]).
        num_workers: DataLoader workers per rank (clamped to shards per rank).
        overrides: TrainConfig fields (lr, warmup_steps, ckpt_every, ...).
        on_change: "error" or "rerun" when the folder holds work with other inputs.
        strategy: "ddp" or "fsdp" under torchrun; "auto" = the preset's (presets.train_strategy).
        checkpoint_url: also keep checkpoints under {checkpoint_url}/{run}/{stage}/ (fsspec URL);
            "" = local only.
    """
    return _train_video_stage("tokenizer", data, run_dir, preset, steps, batch_size=batch_size,
                              num_workers=num_workers, seed=seed, overrides=overrides,
                              on_change=on_change, strategy=strategy,
                              checkpoint_url=checkpoint_url)


def train_lam(
    data: str | Path, run_dir: str | Path, preset: str, steps: int, *,
    batch_size: int | None = None, num_workers: int = 2, seed: int = 0,
    overrides: dict[str, Any] | None = None, on_change: str = "error", strategy: str = "auto",
    checkpoint_url: str = "",
) -> StageResult:
    """Train the latent action model into run_dir/lam (arguments as train_tokenizer)."""
    return _train_video_stage("lam", data, run_dir, preset, steps, batch_size=batch_size,
                              num_workers=num_workers, seed=seed, overrides=overrides,
                              on_change=on_change, strategy=strategy,
                              checkpoint_url=checkpoint_url)
# fmt: on


def load_models(
    run_dir: str | Path,
    cfg: GenieConfig,
    device: torch.device | str = "cpu",
    stages: Sequence[str] = ("tokenizer", "lam", "dynamics"),
) -> dict[str, torch.nn.Module]:
    """Models of a run from each stage's newest checkpoint, in eval mode."""
    build = {
        "tokenizer": lambda: VideoTokenizer(config=cfg.tokenizer),
        "lam": lambda: LatentActionModel(config=cfg.lam),
        "dynamics": lambda: DynamicsModel(config=cfg.dynamics),
    }
    out = {}
    for name in stages:
        model = build[name]()
        ckpt.load_model_weights(model, Path(run_dir) / STAGES[name].folder, map_location=device)
        out[name] = model.to(device).eval()
    return out


def tokenize(
    data: str | Path,
    run_dir: str | Path,
    preset: str,
    *,
    on_change: str = "error",
) -> StageResult:
    """Encode every clip once with the trained tokenizer and LAM into run_dir/tokens/.

    Per clip: `tokens` (T, h, w) from the tokenizer, run on consecutive chunks of its max_frames
    (its temporal context), and `actions` (T,) from `lam.frame_actions` on the whole clip (column t
    is the action into frame t; -1 for frame 0). Under torchrun each rank encodes its share of the
    shards; rank 0 then writes the manifest.
    """
    run, cfg = Path(run_dir), genie_config(preset)
    inputs = {
        "dataset_version": dataset_version(data),
        "preset": preset,
        "upstream": _upstream(run, "tokenize", preset),
    }

    def work(folder: Path) -> tuple[dict[str, float], str | None]:
        dist = gdist.current()
        models = load_models(run, cfg, dist.device, ("tokenizer", "lam"))
        tok = cast(VideoTokenizer, models["tokenizer"])
        lam = cast(LatentActionModel, models["lam"])
        chunk = cfg.tokenizer.max_frames

        @torch.no_grad()
        def encode_fn(x_BTCHW: torch.Tensor) -> dict[str, torch.Tensor]:
            x_BTCHW = x_BTCHW.to(dist.device)
            T = x_BTCHW.shape[1]
            tokens_BTHW = torch.cat([tok.encode(x_BTCHW[:, s : s + chunk])
                                     for s in range(0, T, chunk)], dim=1)  # fmt: skip
            return {"tokens": tokens_BTHW, "actions": lam.frame_actions(x_BTCHW)}

        kw: dict[str, Any] = dict(
            encoder_id=_hash(inputs["upstream"]),
            chunk=None,
            overlap=0,
            size=(cfg.tokenizer.height, cfg.tokenizer.width),
            patch=cfg.tokenizer.patch,
        )
        if dist.distributed:
            shards, _ = D.resolve_shards(data)
            D.write_token_shards(shards[dist.rank :: dist.world_size], folder, encode_fn, **kw)
            gdist.barrier()
        manifest = {}
        if dist.is_main:  # every shard exists now (or is written here): only the manifest is new
            manifest = D.write_token_shards(data, folder, encode_fn, **kw)
        gdist.barrier()
        manifest = manifest or json.loads((folder / "manifest.json").read_text())
        n = sum(s["n_samples"] for s in manifest["shards"])
        return (
            {"clips": float(n), "shards": float(len(manifest["shards"]))},
            str(folder / "manifest.json"),
        )

    return _run("tokenize", run, inputs, 0, on_change, work, cfg)


def train_dynamics(
    run_dir: str | Path,
    preset: str,
    steps: int,
    *,
    batch_size: int | None = None,
    num_workers: int = 2,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    on_change: str = "error",
    strategy: str = "auto",
    checkpoint_url: str = "",
) -> StageResult:
    """Train the MaskGIT dynamics model on run_dir/tokens into run_dir/dynamics (arguments as
    train_tokenizer)."""
    run, cfg = Path(run_dir), genie_config(preset)
    bs = batch_size or DEFAULT_BATCH.get(preset, 8)
    tokens = run / STAGES["tokenize"].folder
    upstream = _upstream(run, "dynamics", preset)
    inputs = {
        "dataset_version": dataset_version(tokens),
        "preset": preset,
        "config": asdict(cfg.dynamics),
        "batch_size": bs,
        "seed": seed,
        "overrides": overrides or {},
        "upstream": upstream,
    }

    def work(folder: Path) -> tuple[dict[str, float], str | None]:
        torch.manual_seed(seed)
        model = DynamicsModel(config=cfg.dynamics)
        dcfg = D.VideoDataConfig(
            batch_size=bs, frames=cfg.dynamics.max_frames, num_workers=num_workers, seed=seed
        )
        loader = D.token_loader(tokens, dcfg)
        tcfg = with_overrides(
            train_config("dynamics", preset, steps, seed=seed, overrides=overrides),
            **how_trained(preset, strategy, checkpoint_url),
        )
        meta = {**inputs, "stage": "dynamics", "genie_config": asdict(cfg)}  # read by genie.play
        return _fit(model, loader, tcfg, run, meta)

    return _run("dynamics", run, inputs, steps, on_change, work, cfg)


# ------------------------------------------------------------------------------------------------
# Entry point: python -m genie.stages STAGE ... (also under torchrun --standalone --nproc_per_node K)


def run_stage(
    stage: str,
    *,
    data: str | Path | None,
    run_dir: str | Path,
    preset: str,
    steps: int | None = None,
    **kw: Any,
) -> StageResult:
    """Dispatch by stage name (the CLI's and the entry point's single door)."""
    if stage in ("tokenizer", "lam", "tokenize") and data is None:
        raise ValueError(f"stage {stage} needs data")
    if stage == "tokenize":
        return tokenize(data, run_dir, preset, on_change=kw.get("on_change", "error"))  # type: ignore[arg-type]
    steps = steps if steps is not None else default_steps(stage, preset)
    if stage == "dynamics":
        return train_dynamics(run_dir, preset, steps, **kw)
    fn = train_tokenizer if stage == "tokenizer" else train_lam
    return fn(data, run_dir, preset, steps, **kw)  # type: ignore[arg-type]


def default_steps(stage: str, preset: str) -> int:
    """Steps when none are given: demo lengths for tiny/small, the paper's for the others."""
    demo = {"tiny": 200, "small": 2000}
    return demo[preset] if preset in demo else paper_config(stage).steps


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m genie.stages", description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("--data", help="build-dataset folder or URL (manifest.json + shards/)")
    # --run-dir under torchrun: its own parser rejects --run as ambiguous (--run-path)
    p.add_argument("--run", "--run-dir", dest="run", required=True, help="run folder")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="per rank")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--on-change", choices=("error", "rerun"), default="error")
    p.add_argument("--strategy", choices=("auto", "ddp", "fsdp"), default="auto",
                   help="under torchrun; auto = the preset's (fsdp for paper, else ddp)")  # fmt: skip
    p.add_argument("--checkpoint-url", default="",
                   help="also keep checkpoints under URL/RUN/STAGE/ and resume from there")  # fmt: skip
    a = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    dist = gdist.init_distributed()
    try:
        kw: dict[str, Any] = {"on_change": a.on_change}
        if a.stage != "tokenize":
            kw.update(batch_size=a.batch_size, num_workers=a.num_workers, seed=a.seed,
                      strategy=a.strategy, checkpoint_url=a.checkpoint_url)  # fmt: skip
        res = run_stage(a.stage, data=a.data, run_dir=a.run, preset=a.preset, steps=a.steps, **kw)
    finally:
        gdist.cleanup()
    if dist.local_rank == 0:  # one result per node: the launcher on every node reads one
        sys.stdout.write(
            json.dumps(
                {k: v for k, v in res.to_dict().items() if k != "inputs"}, indent=2, default=str
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
