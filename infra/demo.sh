#!/usr/bin/env bash
# The main job end to end on the embedded default, from a fresh machine:
# set up, render the offline sample corpus, start the local Prefect stack (server on SQLite at
# 127.0.0.1, cpu/gpu process pools, workers), deploy prefect.yaml, and run build-dataset through its
# deployment. Usage: bash infra/demo.sh   (GENIE_DATA=data by default)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DATA="${GENIE_DATA:-data}"
bash infra/setup.sh
export PATH="$ROOT/.venv/bin:$PATH" DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.prefect}" PREFECT_API_URL="http://127.0.0.1:${GENIE_PREFECT_PORT:-4200}/api"

echo "== sample corpus (rendered once, then cached)"
genie sample make --out "$DATA/sample-corpus" --size small

echo "== local Prefect stack"
bash infra/local_stack.sh start

echo "== build-dataset through its deployment"
prefect deployment run build-dataset/build-dataset \
  -p sources="$DATA/sample-corpus/sources.yaml" -p out="$DATA/dataset" -p enable_file_urls=true \
  --watch --watch-timeout 1800

echo "== audit"
genie audit summary --data "$DATA/dataset"
echo
echo "dataset:  $ROOT/$DATA/dataset/manifest.json"
echo "shards:   $ROOT/$DATA/dataset/shards/"
echo "audit:    genie audit summary --data $DATA/dataset ; genie audit explain CLIP_ID --data $DATA/dataset"
echo "Prefect:  http://127.0.0.1:${GENIE_PREFECT_PORT:-4200}  (stop the stack: bash infra/local_stack.sh stop)"
