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
