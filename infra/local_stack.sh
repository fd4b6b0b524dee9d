#!/usr/bin/env bash
# The embedded default stack on one machine, started and stopped idempotently:
#   a Prefect server on SQLite bound to 127.0.0.1, process work pools `cpu` and `gpu` (same machine),
#   the `genie-download` tag concurrency limit and the `genie-download-rate` rate limit, the
#   deployments from prefect.yaml, one worker per pool.
# Usage: bash infra/local_stack.sh start|stop|status|deploy
# Settings: GENIE_PREFECT_PORT (4200), PREFECT_HOME (.prefect in this checkout),
#           GENIE_DOWNLOAD_LIMIT (2 concurrent downloads across all workers),
#           GENIE_DOWNLOADS_PER_S (1 download started per second across all workers).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PORT="${GENIE_PREFECT_PORT:-4200}"
export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}"
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
# Workers poll every 2 s instead of 10 s: a deployment run starts sooner on one machine.
export PREFECT_WORKER_QUERY_SECONDS="${PREFECT_WORKER_QUERY_SECONDS:-2}"
export GENIE_ROOT="$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
RUN="$PREFECT_HOME/stack"
mkdir -p "$RUN"

healthy() { python - "$PREFECT_API_URL" <<'PY'
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1] + "/health", timeout=2).read().strip() == b"true" else 1)
except Exception:
    sys.exit(1)
PY
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_server() {
  if healthy; then echo "server: already up at $PREFECT_API_URL"; return; fi
  echo "server: starting at $PREFECT_API_URL (PREFECT_HOME=$PREFECT_HOME)"
  nohup prefect server start --host 127.0.0.1 --port "$PORT" --analytics-off >"$RUN/server.log" 2>&1 &
  echo $! >"$RUN/server.pid"
  for _ in $(seq 1 120); do healthy && { echo "server: up"; return; }; sleep 1; done
  echo "server: did not become healthy; see $RUN/server.log" >&2; tail -20 "$RUN/server.log" >&2; exit 1
}

ensure_pools() {
  for pool in cpu gpu; do
    prefect work-pool inspect "$pool" >/dev/null 2>&1 || prefect work-pool create "$pool" --type process >/dev/null
  done
  # One training job at a time on the (one) GPU of this machine.
  prefect work-pool set-concurrency-limit gpu 1 >/dev/null
  prefect concurrency-limit inspect genie-download >/dev/null 2>&1 \
    || prefect concurrency-limit create genie-download "${GENIE_DOWNLOAD_LIMIT:-2}" >/dev/null
  # Training stages are tagged `gpu`: one at a time per GPU of this machine (GENIE_GPUS, default 1).
  # A rate limit: a slot per download start, decaying at GENIE_DOWNLOADS_PER_S (Prefect global
  # concurrency limits hold across every worker and machine that talks to this server).
  prefect gcl inspect genie-download-rate >/dev/null 2>&1 \
    || prefect gcl create genie-download-rate --limit 1 \
      --slot-decay-per-second "${GENIE_DOWNLOADS_PER_S:-1}" >/dev/null
  prefect concurrency-limit inspect gpu >/dev/null 2>&1 \
    || prefect concurrency-limit create gpu "${GENIE_GPUS:-1}" >/dev/null
  echo "pools: cpu, gpu (limit 1); tag limits genie-download=${GENIE_DOWNLOAD_LIMIT:-2}, gpu=${GENIE_GPUS:-1};" \
    "rate limit genie-download-rate=${GENIE_DOWNLOADS_PER_S:-1}/s"
}

deploy() { prefect --no-prompt deploy --all >"$RUN/deploy.log" 2>&1 || { cat "$RUN/deploy.log" >&2; exit 1; }; echo "deployed: $(grep -c "prefect deployment run" "$RUN/deploy.log") deployments"; }

start_workers() {
  for pool in cpu gpu; do
    if alive "$RUN/worker-$pool.pid"; then echo "worker $pool: already running"; continue; fi
    nohup prefect worker start --pool "$pool" --limit 1 >"$RUN/worker-$pool.log" 2>&1 &
    echo $! >"$RUN/worker-$pool.pid"
    echo "worker $pool: started (log $RUN/worker-$pool.log)"
  done
}

stop_pid() {  # workers drain on the first TERM and may still take a run: a second TERM ends them
  local f="$1"
  alive "$f" || { rm -f "$f"; return; }
  local pid; pid="$(cat "$f")"
  kill -TERM "$pid" 2>/dev/null || true; sleep 2; kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$f"
}

case "${1:-}" in
  start) start_server; ensure_pools; deploy; start_workers ;;
  deploy) deploy ;;
  stop)
    for pool in cpu gpu; do stop_pid "$RUN/worker-$pool.pid"; done
    stop_pid "$RUN/server.pid"
    echo "stack: stopped" ;;
  status)
    healthy && echo "server: up at $PREFECT_API_URL" || echo "server: down"
    for pool in cpu gpu; do alive "$RUN/worker-$pool.pid" && echo "worker $pool: running" || echo "worker $pool: stopped"; done ;;
  *) echo "usage: $0 start|stop|status|deploy" >&2; exit 2 ;;
esac
