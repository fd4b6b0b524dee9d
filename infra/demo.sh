#!/usr/bin/env bash
# The main job end to end on the embedded default, from a fresh machine:
# set up; render the offline sample corpus (procgen platformers plus bad examples); start the local
# Prefect stack (server on SQLite at 127.0.0.1, cpu/gpu process pools, workers) and deploy
# prefect.yaml; run build-dataset through its deployment; run train-genie through its deployment with
# the tiny CPU preset; write the audit report. Rerunning it redoes nothing that is done.
# Usage: bash infra/demo.sh    Settings: GENIE_DATA (data), GENIE_RUN (runs/genie), GENIE_PRESET (tiny)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DATA="${GENIE_DATA:-data}"
RUN="${GENIE_RUN:-runs/genie}"
PRESET="${GENIE_PRESET:-tiny}"
bash infra/setup.sh
export PATH="$ROOT/.venv/bin:$PATH" DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}" PREFECT_API_URL="http://127.0.0.1:${GENIE_PREFECT_PORT:-4200}/api"
t0=$(date +%s)

echo "== 1/5 sample corpus (rendered once, then cached)"
genie sample make --out "$DATA/sample-corpus" --size small

echo "== 2/5 local Prefect stack (UI: http://127.0.0.1:${GENIE_PREFECT_PORT:-4200})"
bash infra/local_stack.sh start

echo "== 3/5 build-dataset through its deployment"
prefect deployment run build-dataset/build-dataset \
  -p sources="$ROOT/$DATA/sample-corpus/sources.yaml" -p out="$ROOT/$DATA/dataset" -p enable_file_urls=true \
  --watch --watch-timeout 1800
genie audit summary --data "$DATA/dataset"
genie audit report --data "$DATA/dataset" --out "$DATA/dataset/audit-report.html"

echo "== 4/5 train-genie through its deployment (preset $PRESET, on the gpu pool: CPU here)"
prefect deployment run train-genie/train-genie \
  -p data="$ROOT/$DATA/dataset" -p run="$ROOT/$RUN" -p preset="$PRESET" \
  --watch --watch-timeout 3600

echo "== 5/5 done in $(( $(date +%s) - t0 )) s"
cat <<DONE
dataset:       $ROOT/$DATA/dataset/manifest.json  (shards in $DATA/dataset/shards/)
audit report:  $ROOT/$DATA/dataset/audit-report.html
               genie audit explain CLIP_ID --data $DATA/dataset
model card:    $ROOT/$RUN/MODEL_CARD.md  (evaluation: $RUN/eval/report.html)
play:          . .venv/bin/activate && genie play --run $RUN --data $DATA/dataset
Prefect UI:    http://127.0.0.1:${GENIE_PREFECT_PORT:-4200}   (stop: bash infra/local_stack.sh stop)
DONE
