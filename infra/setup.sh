#!/usr/bin/env bash
# Set up this checkout on a fresh machine: ffmpeg/ffprobe and a virtualenv (.venv) with the project.
# Idempotent: a second run only checks. Usage: bash infra/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
  echo "setup: installing ffmpeg (Debian package)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi

# Headless Chromium for the play page's browser tests (Playwright drives Debian's build; it never
# downloads a browser of its own). GENIE_NO_BROWSER=1 skips it (those tests then skip, saying why).
if [ -z "${GENIE_NO_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium (Debian package, for the browser tests)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# PostgreSQL server binaries for the Prefect-on-PostgreSQL test (infra/postgres.sh).
# GENIE_NO_POSTGRES=1 skips it (that test then skips, saying why).
if [ -z "${GENIE_NO_POSTGRES:-}" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "setup: installing postgresql (Debian package, for the Prefect-on-PostgreSQL test)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
# Quiet pip, but keep its errors.
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# torch first, as the CPU build when one is at hand (this machine's pip finds 2.13.0+cpu on disk):
# left to the resolver, the full dependency set can pick PyPI's 2.13.0, the CUDA build, which pulls
# several GB of NVIDIA libraries. Elsewhere (no CPU wheel found) PyPI's build is what GPUs want.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0+cpu" 2>/dev/null \
    || .venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
fi
# The rest at the versions the project is tested with (infra/constraints.txt).
.venv/bin/python -m pip install -q -c infra/constraints.txt -e ".[dev]" 2>&1 \
  | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import genie, filters, pipelines, prefect, torch" \
  || { echo "setup: the environment is incomplete" >&2; exit 1; }
echo "setup: ok ($(.venv/bin/python -c 'import prefect, torch; print("prefect", prefect.__version__, "torch", torch.__version__)'), $(ffmpeg -version | head -1 | cut -d' ' -f1-3))"
