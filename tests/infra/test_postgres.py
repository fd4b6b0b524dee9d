"""The Prefect server on PostgreSQL for real: infra/postgres.sh starts a PostgreSQL cluster (Debian's
package) in a temporary folder on a free port, a Prefect server runs against it (a temporary
PREFECT_HOME, no SQLite), the GPU work pools are created from infra/pools/ and a trivial flow runs
against the server; the rows are then read back from PostgreSQL itself. Everything is stopped at the
end. Slow (~30-60 s on two busy cores: PostgreSQL initdb ~2 s, Prefect's migrations + start ~15-30 s).
Skipped only when PostgreSQL's binaries are absent.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "postgres.sh"
PREFECT = str(Path(sys.executable).parent / "prefect")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        reason="PostgreSQL binaries absent (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(api + "/health", timeout=2) as r:
            return bool(r.read().strip() == b"true")
    except OSError:
        return False


def _pg(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=180
    )


@pytest.fixture
def postgres() -> Iterator[tuple[str, dict[str, str]]]:
    # Not pytest's tmp_path: that is 0700 under /tmp/pytest-of-root, and when the tests run as root
    # the cluster belongs to the `postgres` OS user, which must be able to reach its folder.
    base = Path(tempfile.mkdtemp(prefix="genie-pg-test-"))
    base.chmod(0o755)
    env = dict(os.environ, GENIE_PG_DIR=str(base / "pg"))
    try:
        up = _pg(env, "start")
        assert up.returncode == 0, up.stdout + up.stderr
        url = up.stdout.strip().splitlines()[-1]
        yield url, env
    finally:
        down = _pg(env, "stop")
        shutil.rmtree(base, ignore_errors=True)
    assert down.returncode == 0, down.stdout + down.stderr


def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    """Run a query in the `prefect` database over TCP with the URL's credentials (asyncpg)."""
    import asyncpg

    async def go() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return [tuple(r) for r in await conn.fetch(query)]
        finally:
            await conn.close()

    return asyncio.run(go())


def test_postgres_script_is_idempotent(postgres: tuple[str, dict[str, str]]) -> None:
    url, env = postgres
    assert url.startswith("postgresql+asyncpg://prefect:") and "@127.0.0.1:" in url
    assert url.endswith("/prefect")
    again = _pg(env, "start")
    assert again.returncode == 0 and "already running" in again.stderr
    assert again.stdout.strip().splitlines()[-1] == url
    assert _pg(env, "url").stdout.strip() == url
    assert _pg(env, "status").returncode == 0
    assert _rows(url, "SELECT current_user, current_database()") == [("prefect", "prefect")]


def test_prefect_server_on_postgres(postgres: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, pg_env = postgres
    t0 = time.monotonic()
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(pg_env)
    env.pop("PREFECT_API_URL", None)
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=url,
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
    )
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not _healthy(api):
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(1)
        t_up = time.monotonic() - t0
        # Prefect migrated PostgreSQL, not a SQLite file in PREFECT_HOME
        assert _rows(url, "SELECT count(*) FROM alembic_version") == [(1,)]
        assert not list((tmp_path / "prefect-home").glob("*.db"))

        client_env = dict(env, PREFECT_API_URL=api)
        for name, kind, template in [
            ("gpu", "kubernetes", "kubernetes-gpu.json"),
            ("gpu-docker", "docker", "docker-gpu.json"),
        ]:
            made = subprocess.run(
                [PREFECT, "work-pool", "create", name, "--type", kind,
                 "--base-job-template", str(ROOT / "infra" / "pools" / template)],
                env=client_env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert made.returncode == 0, made.stdout + made.stderr
        shown = subprocess.run(
            [PREFECT, "work-pool", "inspect", "gpu"],
            env=client_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert shown.returncode == 0 and "kubernetes" in shown.stdout, shown.stdout + shown.stderr
        pools = _rows(
            url,
            "SELECT name, type, base_job_template->'variables'->'properties'->'gpu_count'->>'default'"
            " FROM work_pool WHERE name LIKE 'gpu%' ORDER BY name",
        )
        assert pools == [("gpu", "kubernetes", "1"), ("gpu-docker", "docker", "-1")]
        kept = _rows(url, "SELECT base_job_template::text FROM work_pool WHERE name = 'gpu'")
        stored = json.loads(str(kept[0][0]))
        assert stored == json.loads((ROOT / "infra" / "pools" / "kubernetes-gpu.json").read_text())

        # a trivial flow against the server: its run is a row in PostgreSQL
        (tmp_path / "smoke.py").write_text(
            "from prefect import flow\n\n"
            "@flow(name='pg-smoke')\n"
            "def smoke() -> int:\n"
            "    return 42\n\n"
            "print('result', smoke())\n"
        )
        ran = subprocess.run(
            [sys.executable, str(tmp_path / "smoke.py")],
            env=client_env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert ran.returncode == 0 and "result 42" in ran.stdout, ran.stdout + ran.stderr
        runs = _rows(
            url,
            "SELECT fr.state_type::text FROM flow_run fr JOIN flow f ON f.id = fr.flow_id"
            " WHERE f.name = 'pg-smoke'",
        )
        assert runs == [("COMPLETED",)]
        print(f"\npostgres test: server healthy after {t_up:.1f} s, all done after "
              f"{time.monotonic() - t0:.1f} s")  # fmt: skip
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()
    assert not _healthy(api)
