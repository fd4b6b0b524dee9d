"""Training beyond one process: torchrun across nodes, FSDP, data and checkpoints on object storage.

Everything runs for real on this CPU machine: gloo process groups of 2 forked processes, two
torchrun agents meeting at a c10d rendezvous on 127.0.0.1, and an S3-compatible server (moto's
server mode on 127.0.0.1, the `s3_server` fixture) reached by s3fs. Not covered here: NCCL, GPUs,
separate machines, real AWS.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from genie import checkpoint as ckpt
from genie import distributed as gdist
from genie.presets import tiny
from genie.tokenizer import VideoTokenizer
from genie.train import TrainConfig, Trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------------
# FSDP vs DDP on 2 gloo processes, with the real tiny tokenizer (ST blocks, a VQ codebook)


class Clips:
    """Batch i is a pure function of i: a global batch of 2 clips (4 frames, 32x32); each rank takes
    its slice. Stateful, so resume continues the stream."""

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.i, self.rank, self.world = 0, rank, world

    def __iter__(self) -> Clips:
        return self

    def __next__(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 + self.i)
        x = torch.rand(2, 4, 3, 32, 32, generator=g)
        self.i += 1
        per = 2 // self.world
        return x[self.rank * per : (self.rank + 1) * per]

    def state_dict(self) -> dict[str, int]:
        return {"i": self.i}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        self.i = sd["i"]


def tokenizer() -> VideoTokenizer:
    # dead-code restarts every 2 unused steps: the replicated-codebook path of FSDP is exercised
    return VideoTokenizer(config=replace(tiny().tokenizer, dead_code_steps=2))


def fsdp_cfg(strategy: str, **kw) -> TrainConfig:
    base = dict(
        stage="tokenizer",
        steps=4,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=1,
        log_every=1,
        ckpt_every=1000,
        grad_accum=2,
        eval_every=2,
        tensorboard=False,
        strategy=strategy,
    )
    return TrainConfig(**{**base, **kw})


Runs = list[tuple[str, str, list[int], str]]  # (strategy, run dir, stops, start from: run dir)


def _strategy_worker(rank: int, world: int, port: int, runs: Runs) -> None:
    """For each run: optionally copy another run's step-2 checkpoint in, then a fresh Trainer per
    stop (as after a crash), each fitting up to its stop."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    info = gdist.init_distributed()
    try:
        for strategy, run_dir, stops, start_from in runs:
            if start_from and rank == 0:
                dst = Path(run_dir) / "tokenizer"
                dst.mkdir(parents=True)
                for src in (Path(start_from) / "tokenizer").glob("step_0000002.*"):
                    shutil.copy(src, dst / src.name)
            gdist.barrier()
            for stop in stops:
                torch.manual_seed(0)  # identical initial weights on both ranks
                tr = Trainer(
                    tokenizer(),
                    Clips(rank, world),
                    fsdp_cfg(strategy),
                    run_dir,
                    dist_info=info,
                    eval_fn=_eval_fn,
                )
                _record_layout(tr, Path(run_dir) / f"layout.{rank}.json")
                tr.fit(stop)
                tr.close()
    finally:
        gdist.cleanup()


def _record_layout(tr: Trainer, path: Path) -> None:
    """How many parameter elements this rank holds, and which parameters are kept whole."""
    from torch.distributed.tensor import DTensor

    local = sum(
        (p.to_local() if isinstance(p, DTensor) else p).numel() for p in tr.model.parameters()
    )
    whole = [n for n, p in tr.model.named_parameters() if not isinstance(p, DTensor)]
    total = sum(p.numel() for p in tr.model.parameters())  # a DTensor's numel is the global one
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"local": local, "total": total, "whole": whole}))


def _eval_fn(model: torch.nn.Module) -> dict[str, float]:
    """Calls a model method outside the FSDP root's forward (needs the root's weights gathered)."""
    x = torch.rand(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    return {"mse": float(((model.reconstruct(x) - x) ** 2).mean())}


def _spawn(runs: Runs) -> None:
    # fork, not spawn: a spawned child re-imports torch and the models (~20 s on a busy box)
    mp.start_processes(
        _strategy_worker, nprocs=2, join=True, start_method="fork", args=(2, _free_port(), runs)
    )


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt.checkpoint_path(run_dir / "tokenizer", step), weights_only=True)
    return state["model"]


@pytest.fixture(scope="module")
def strategies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each strategy 4 steps straight and 2 + resume to 4; each resuming the other's step 2."""
    root = tmp_path_factory.mktemp("strategies")
    _spawn([(strategy, str(root / name), stops, str(root / start) if start else "")
            for strategy, name, stops, start in [
                ("ddp", "ddp", [4], ""), ("ddp", "ddp-resumed", [2, 4], ""),
                ("fsdp", "fsdp", [4], ""), ("fsdp", "fsdp-resumed", [2, 4], ""),
                ("fsdp", "fsdp-from-ddp", [4], "ddp-resumed"),
                ("ddp", "ddp-from-fsdp", [4], "fsdp-resumed")]])  # fmt: skip
    return root


def test_fsdp_shards_all_but_the_codebook(strategies: Path) -> None:
    fsdp = [json.loads((strategies / "fsdp" / f"layout.{r}.json").read_text()) for r in (0, 1)]
    ddp = [json.loads((strategies / "ddp" / f"layout.{r}.json").read_text()) for r in (0, 1)]
    assert all(d["local"] == d["total"] for d in ddp)  # a full replica per rank
    assert fsdp[0]["whole"] == fsdp[1]["whole"] == ["vq.codebook"]
    codebook = 64 * 16  # kept whole on both ranks; everything else split between them
    assert fsdp[0]["local"] + fsdp[1]["local"] == fsdp[0]["total"] + codebook
    assert max(d["local"] for d in fsdp) < 0.6 * fsdp[0]["total"]


def test_fsdp_follows_ddp_loss_trajectory(strategies: Path) -> None:
    ddp = read_metrics(strategies / "ddp" / "tokenizer" / "metrics.jsonl")
    fsdp = read_metrics(strategies / "fsdp" / "tokenizer" / "metrics.jsonl")
    train = [r for r in ddp if "loss" in r], [r for r in fsdp if "loss" in r]
    assert [r["step"] for r in train[0]] == [r["step"] for r in train[1]] == [1, 2, 3, 4]
    for a, b in zip(*train, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
    assert train[0][-1]["loss"] < train[0][0]["loss"]  # it trained
    # dead-code restarts happened, and identically (the codebook stays whole on every rank)
    assert train[1][-1]["codes_restarted"] == train[0][-1]["codes_restarted"] > 0
    # evaluation calls model methods outside the root's forward: under FSDP with gathered weights
    evals = [[r["eval/mse"] for r in rows if "eval/mse" in r] for rows in (ddp, fsdp)]
    assert len(evals[0]) == 2 and evals[1] == pytest.approx(evals[0], rel=1e-4)
    a, b = _weights(strategies / "ddp", 4), _weights(strategies / "fsdp", 4)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_fsdp_checkpoint_is_a_full_state_dict_and_resumes_exactly(strategies: Path) -> None:
    side = json.loads(
        ckpt.sidecar_path(ckpt.checkpoint_path(strategies / "fsdp" / "tokenizer", 4)).read_text()
    )
    assert side["strategy"] == "fsdp" and side["world_size"] == 2
    # the file is a plain full state dict: the model loads into an unsharded model as is
    model = tokenizer()
    meta = ckpt.load_model_weights(model, strategies / "fsdp" / "tokenizer")
    assert meta["step"] == 4 and model.vq.codebook.shape == (64, 16)
    # 2 steps, a new Trainer (as after a crash) resuming from the checkpoint, 2 more == 4 straight
    # (and the same holds for DDP with this model)
    for strategy in ("fsdp", "ddp"):
        straight = _weights(strategies / strategy, 4)
        resumed = _weights(strategies / f"{strategy}-resumed", 4)
        for k in straight:
            assert torch.equal(straight[k], resumed[k]), (strategy, k)
    rows = read_metrics(strategies / "fsdp-resumed" / "tokenizer" / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


@pytest.mark.parametrize("run, like", [("ddp-from-fsdp", "fsdp"), ("fsdp-from-ddp", "ddp")])
def test_a_run_may_change_strategy(strategies: Path, run: str, like: str) -> None:
    """Each strategy resumes the other's checkpoint (optimizer state by name / by position) and
    ends where the checkpoint's own strategy ends."""
    rows = read_metrics(strategies / run / "tokenizer" / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [3, 4]  # resumed at 2, not from 0
    a, b = _weights(strategies / like, 4), _weights(strategies / run, 4)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Two torchrun agents ("nodes") meeting at a c10d rendezvous on 127.0.0.1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build-dataset folder: 2 shards of one 16 s 160x90 clip each (ffmpeg testsrc2)."""
    from tests.genie.test_data import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data"), n_shards=2, per_shard=1)


def test_torchrun_args() -> None:
    assert gdist.torchrun_args(nproc=1) == []
    assert gdist.torchrun_args(nproc=4) == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=4",
    ]
    two = gdist.torchrun_args(nproc=8, nnodes=2, rdzv_endpoint="host0:29400", rdzv_id="job-lam")
    assert two == [
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=8",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=host0:29400",
        "--rdzv_id=job-lam",
    ]
    elastic = gdist.torchrun_args(nproc=1, nnodes="2:4", rdzv_endpoint="h:1", rdzv_id="j")
    assert "--nnodes=2:4" in elastic and not any(a.startswith("--node_rank") for a in elastic)
    static = gdist.torchrun_args(
        nproc=2, nnodes=2, node_rank=1, rdzv_endpoint="h:1", rdzv_id="j", rdzv_backend="static"
    )
    assert static[-2:] == ["--rdzv_id=j", "--node_rank=1"] and "--rdzv_backend=static" in static
    # one node with an endpoint: a rendezvous all the same (e.g. a single-node elastic job)
    assert "--standalone" not in gdist.torchrun_args(nproc=2, rdzv_endpoint="h:1", rdzv_id="j")
    for bad in (
        dict(nnodes=2),
        dict(nnodes="4:2", rdzv_endpoint="h:1", rdzv_id="j"),
        dict(nnodes="x"),
        dict(nnodes=2, rdzv_endpoint="nohostport", rdzv_id="j"),
        dict(nnodes=2, rdzv_endpoint="h:1"),
        dict(nnodes=2, rdzv_endpoint="h:1", rdzv_id="j", rdzv_backend="zookeeper"),
        dict(nnodes="1:2", rdzv_endpoint="h:1", rdzv_id="j", rdzv_backend="static"),
        dict(nnodes=2, node_rank=2, rdzv_endpoint="h:1", rdzv_id="j", rdzv_backend="static"),
    ):
        with pytest.raises(ValueError):
            gdist.torchrun_args(nproc=1, **bad)


def test_presets_choose_a_strategy() -> None:
    from genie.presets import PRESETS, train_strategy
    from genie.stages import how_trained

    assert {p: train_strategy(p) for p in PRESETS} == {
        "tiny": "ddp", "small": "ddp", "coinrun": "ddp", "paper": "fsdp"}  # fmt: skip
    assert train_strategy("paper", "ddp") == "ddp" and train_strategy("tiny", "fsdp") == "fsdp"
    assert how_trained("paper", "auto", "s3://b/x") == {"strategy": "fsdp", "mirror": "s3://b/x"}
    with pytest.raises(ValueError):
        train_strategy("tiny", "zero3")
    with pytest.raises(ValueError):
        TrainConfig(strategy="zero3")


def test_two_torchrun_agents_train_one_stage(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2-node stage as the flow runs it on each node (its launcher arguments and stage process),
    with both "nodes" on this host: one group of world size 2, the stage completes (under FSDP)."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.flows.train_genie import run_stage_process

    launcher = gdist.torchrun_args(
        nproc=1, nnodes=2, rdzv_endpoint=f"127.0.0.1:{_free_port()}", rdzv_id="genie-test-lam"
    )
    # gloo on the loopback interface; the agent on 127.0.0.1 hosts the c10d rendezvous
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    run = tmp_path / "run"
    args = (
        "lam",
        str(dataset),
        str(run),
        "tiny",
        2,
        "error",
        launcher,
        ["--strategy", "fsdp", "--batch-size", "1", "--num-workers", "0"],
    )
    with ThreadPoolExecutor(2) as pool:  # the two agents must run at once to meet
        futures = [pool.submit(run_stage_process, *args) for _ in range(2)]
        nodes = [f.result(timeout=200) for f in futures]
    # each node's launcher gets its node's result (local rank 0 prints it): the same stage
    # (timings in the metrics are per rank)
    same = ("stage", "steps", "fingerprint", "checkpoint", "skipped")
    assert [{k: n[k] for k in same} for n in nodes] == [{k: nodes[0][k] for k in same}] * 2
    res = nodes[0]
    assert res["stage"] == "lam" and res["steps"] == 2 and not res["skipped"]
    done = json.loads((run / "lam" / "DONE.json").read_text())
    assert done["fingerprint"] == res["fingerprint"]
    side = json.loads(ckpt.sidecar_path(res["checkpoint"]).read_text())
    assert side["step"] == 2 and side["world_size"] == 2 and side["strategy"] == "fsdp"


# ------------------------------------------------------------------------------------------------
# The training data and the checkpoints on object storage (moto's S3 server on 127.0.0.1)


def _upload_dataset(root: Path, url: str) -> None:
    """Copy a local dataset folder (manifest + shards) to `url` with fsspec, as a build would."""
    import fsspec

    fs, base = fsspec.core.url_to_fs(url)
    fs.put_file(str(root / "manifest.json"), f"{base}/manifest.json")
    for shard in sorted((root / "shards").glob("*.tar")):
        fs.put_file(str(shard), f"{base}/shards/{shard.name}")


def test_loader_streams_the_same_samples_from_s3(dataset: Path, s3_server) -> None:
    from genie import data as D
    from genie import remote

    url = s3_server() + "/datasets/genie"
    _upload_dataset(dataset, url)
    local, local_version = D.resolve_shards(dataset)
    shards, version = D.resolve_shards(url)
    assert version == local_version == "v-test"
    assert shards == [f"{url}/shards/{Path(p).name}" for p in local]
    # the reader gets an fsspec stream of the object (ranged reads), not a downloaded file
    with remote.open_read(shards[0]) as fh:
        assert type(fh).__module__.startswith("s3fs") and fh.read(512)[257:262] == b"ustar"
    samples = [(s["__key__"], s["mp4"], s["json"]) for s in D.iter_samples(shards)]
    assert samples == [(s["__key__"], s["mp4"], s["json"]) for s in D.iter_samples(local)]
    # the training loader, with DataLoader worker processes reading from S3: the same batches
    cfg = D.VideoDataConfig(batch_size=1, frames=4, num_workers=2, shuffle_buffer=2)
    from_s3, from_disk = D.video_loader(url, cfg), D.video_loader(dataset, cfg)
    for _ in range(3):
        assert torch.equal(next(from_s3), next(from_disk))
    with pytest.raises(FileNotFoundError, match="missing shards"):
        D.resolve_shards([f"{url}/shards/nope.tar"])


@pytest.mark.parametrize("where", ["s3", "folder"])
def test_mirror_uploads_prunes_and_fetches(tmp_path: Path, s3_server, where: str) -> None:
    url = s3_server() + "/ckpts/run/lam" if where == "s3" else str(tmp_path / "mirror" / "lam")
    mirror = ckpt.Mirror(url)
    assert mirror.list() == [] and mirror.latest_step() is None
    for step in (1, 2, 3):
        pt = ckpt.save_checkpoint(
            tmp_path / "a", step, {"w": torch.full((2,), float(step))}, {"note": step}
        )
        mirror.upload(pt, keep_last=2)
    assert mirror.list() == [(2, "step_0000002.pt"), (3, "step_0000003.pt")]  # pruned to 2
    pt = mirror.fetch(3, tmp_path / "b")
    state, side = ckpt.load_checkpoint(pt)
    assert torch.equal(state["w"], torch.full((2,), 3.0)) and side["note"] == 3
    assert ckpt.latest_checkpoint(tmp_path / "b") == pt and not list(
        (tmp_path / "b").glob(".tmp-*")
    )


def test_stage_resumes_from_checkpoint_url_on_a_fresh_machine(
    dataset: Path, tmp_path: Path, s3_server
) -> None:
    """Train 2 steps with checkpoint_url, lose the run folder, train to 3 in a new process: it
    resumes from the bucket's step 2 and ends exactly where a local resume ends."""
    from genie import remote
    from genie import stages as S

    url = s3_server() + "/runs"
    kw = dict(batch_size=1, num_workers=0)
    pod = tmp_path / "pod" / "genie"
    first = S.train_lam(dataset, pod, "tiny", 2, checkpoint_url=url, **kw)
    assert remote.list_names(f"{url}/genie/lam") == [
        "step_0000001.json",
        "step_0000001.pt",
        "step_0000002.json",
        "step_0000002.pt",
    ]
    shutil.rmtree(pod)  # a fresh machine: nothing local
    cmd = [
        sys.executable,
        "-m",
        "genie.stages",
        "lam",
        "--data",
        str(dataset),
        "--run-dir",
        str(pod),
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--batch-size",
        "1",
        "--num-workers",
        "0",
        "--checkpoint-url",
        url,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # AWS_ENDPOINT_URL etc. from the fixture
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert res["steps"] == 3 and res["fingerprint"] != first.fingerprint
    # steps 1-2 came from the bucket, not trained again (that would have saved step 1 here too)
    assert [s for s, _ in ckpt.list_checkpoints(pod / "lam")] == [2, 3]
    assert "checkpoint step 2 fetched from" in proc.stderr and "at step 2" in proc.stderr
    assert "step_0000003.pt" in remote.list_names(f"{url}/genie/lam")
    # the same two segments with a local resume give the same weights, bit for bit
    local = tmp_path / "local" / "genie"
    S.train_lam(dataset, local, "tiny", 2, **kw)
    S.train_lam(dataset, local, "tiny", 3, **kw)
    a = torch.load(ckpt.checkpoint_path(pod / "lam", 3), weights_only=True)["model"]
    b = torch.load(ckpt.checkpoint_path(local / "lam", 3), weights_only=True)["model"]
    c = torch.load(ckpt.checkpoint_path(pod / "lam", 2), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # and step 3 did train
