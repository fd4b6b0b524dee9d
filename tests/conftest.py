"""Session-wide test set-up.

Prefect is pointed at a throw-away PREFECT_HOME before anything imports it, so results cached by a
developer's runs never leak into tests, and telemetry stays off (this machine has no internet).
"""

from __future__ import annotations

import os
import shutil
import tempfile

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="genie-test-prefect-")
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise pytest.UsageError("ffmpeg and ffprobe must be on PATH: run infra/setup.sh first")


@pytest.fixture(scope="session")
def prefect_harness():  # type: ignore[no-untyped-def]
    """One real Prefect API server (temporary SQLite) for the whole session; ~15-20 s to start."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The tiny sample corpus (real procgen gameplay plus bad examples), rendered once per machine."""
    from pathlib import Path

    from pipelines.sample import make_sample_corpus

    cache = os.environ.get("GENIE_SAMPLE_CACHE")
    root = Path(cache) / "tiny" if cache else tmp_path_factory.mktemp("corpus") / "tiny"
    return make_sample_corpus(root, size="tiny")


@pytest.fixture(scope="session")
def s3_server():  # type: ignore[no-untyped-def]
    """A real S3-compatible server (moto's server mode) on 127.0.0.1, for the whole session.

    The internet's S3 is out of reach here; moto speaks the same HTTP API, so s3fs, botocore and
    every worker process talk to it exactly as they would to AWS. ``AWS_ENDPOINT_URL`` (botocore's
    standard setting) points every client at it, including Dask and torchrun child processes.
    Yields ``new_bucket()``, which creates a fresh bucket and returns its ``s3://`` URL.
    """
    import itertools
    import logging

    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "genie-test",
        "AWS_SECRET_ACCESS_KEY": "genie-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    counter = itertools.count()

    def new_bucket() -> str:
        import s3fs

        name = f"genie-test-{os.getpid()}-{next(counter)}"
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
        return f"s3://{name}"

    try:
        yield new_bucket
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
