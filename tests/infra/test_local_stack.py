"""The deployment path for real: infra/local_stack.sh starts a Prefect server on SQLite at
127.0.0.1 (a free port, a temporary PREFECT_HOME), the cpu/gpu process pools and their workers, and
deploys prefect.yaml; then `prefect deployment run build-dataset/build-dataset` runs the flow on a
worker, as a user would. Slow (a server and two workers on two cores), and run in CI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        GENIE_PREFECT_PORT=str(port),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
    )
    sh = ["bash", str(ROOT / "infra" / "local_stack.sh")]
    try:
        up = subprocess.run([*sh, "start"], env=env, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        # idempotent: a second start finds everything running and changes nothing
        again = subprocess.run([*sh, "start"], env=env, capture_output=True, text=True, timeout=300)
        assert (
            again.returncode == 0
            and "already up" in again.stdout
            and "already running" in again.stdout
        )
        yield env
    finally:
        subprocess.run([*sh, "stop"], env=env, capture_output=True, text=True, timeout=120)
    status = subprocess.run([*sh, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert "server: down" in status.stdout


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deployed") / "data"


def _run(env: dict[str, str], name: str, *params: str) -> subprocess.CompletedProcess[str]:
    args = [x for p in params for x in ("-p", p)]
    cmd = ["prefect", "deployment", "run", name, *args, "--watch", "--watch-timeout", "1200"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1300)


def test_build_dataset_deployment_runs_on_a_worker(
    stack: dict[str, str], tiny_corpus: Path, out: Path
) -> None:
    ls = subprocess.run(
        ["prefect", "deployment", "ls"], env=stack, capture_output=True, text=True, timeout=120
    )
    assert "build-dataset/build-dataset" in ls.stdout and "train-genie/train-genie" in ls.stdout
    # the download rate limit that holds across workers (a slot per download start, decaying)
    gcl = subprocess.run(
        ["prefect", "gcl", "inspect", "genie-download-rate", "--output", "json"],
        env=stack,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gcl.returncode == 0 and json.loads(gcl.stdout)["slot_decay_per_second"] > 0, gcl.stderr
    # the per-video pass on a local Dask cluster of 2 worker processes, started by the flow run
    run = _run(
        stack,
        "build-dataset/build-dataset",
        f"sources={tiny_corpus / 'sources.yaml'}",
        f"out={out}",
        "enable_file_urls=true",
        "runner=dask",
        "workers=2",
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_samples"] > 0 and manifest["shards"]
    assert all((out / s["path"]).exists() for s in manifest["shards"])


def test_train_genie_deployment_runs_then_reuses_its_stages(
    stack: dict[str, str], out: Path, tmp_path: Path
) -> None:
    """`prefect deployment run train-genie/train-genie` on the gpu pool's worker (CPU here), twice."""
    if not (out / "manifest.json").exists():
        pytest.skip("needs the dataset of test_build_dataset_deployment_runs_on_a_worker")
    run_dir = tmp_path / "run"
    params = [
        f"data={out}",
        f"run={run_dir}",
        "preset=tiny",
        "tokenizer_steps=2",
        "lam_steps=2",
        "dynamics_steps=2",
        "eval_clips=1",
        "maskgit_steps=2",
    ]
    first = _run(stack, "train-genie/train-genie", *params)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    card = json.loads((run_dir / "model_card.json").read_text())
    assert (
        card["lineage"]["dataset_version"]
        == json.loads((out / "manifest.json").read_text())["version"]
    )
    done = {
        s: json.loads((run_dir / d / "DONE.json").read_text())["fingerprint"]
        for s, d in [("tokenizer", "tokenizer"), ("lam", "lam"), ("dynamics", "dynamics")]
    }
    mtimes = {p: p.stat().st_mtime_ns for p in run_dir.rglob("step_*.pt")}
    second = _run(stack, "train-genie/train-genie", *params)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    # the finished stages were reused: same markers, no checkpoint written again
    assert {
        s: json.loads((run_dir / s / "DONE.json").read_text())["fingerprint"] for s in done
    } == done
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("step_*.pt")} == mtimes
