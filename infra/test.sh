#!/usr/bin/env bash
# The test command: set up, lint, type-check, run the whole test suite. Usage: bash infra/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup.sh
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
# The sample corpus is rendered once per machine and reused by every test run.
export GENIE_SAMPLE_CACHE="${GENIE_SAMPLE_CACHE:-$HOME/.cache/open-genie/sample-cache}"
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/pytest -q "$@"
