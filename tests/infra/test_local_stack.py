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
        assert again.returncode == 0 and "already up" in again.stdout and "already running" in again.stdout
        yield env
    finally:
        subprocess.run([*sh, "stop"], env=env, capture_output=True, text=True, timeout=120)
    status = subprocess.run([*sh, "status"], env=env, capture_output=True, text=True, timeout=60)
    assert "server: down" in status.stdout


def test_build_dataset_deployment_runs_on_a_worker(stack: dict[str, str], tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    ls = subprocess.run(["prefect", "deployment", "ls"], env=stack, capture_output=True, text=True, timeout=120)
    assert "build-dataset/build-dataset" in ls.stdout and "train-genie/train-genie" in ls.stdout
    run = subprocess.run(
        ["prefect", "deployment", "run", "build-dataset/build-dataset",
         "-p", f"sources={tiny_corpus / 'sources.yaml'}", "-p", f"out={out}", "-p", "enable_file_urls=true",
         "--watch", "--watch-timeout", "1200"],
        env=stack, capture_output=True, text=True, timeout=1300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_samples"] > 0 and manifest["shards"]
    assert all((out / s["path"]).exists() for s in manifest["shards"])
