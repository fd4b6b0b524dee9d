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
