#!/usr/bin/env bash
# Recipe for the clip filter shipped in filters/models/ (what build-dataset uses by default):
# render the small sample corpus, build it with no model (every clip kept, features recorded), train
# the classifier on the corpus labels, and copy the newest model into the package.
# Usage: bash infra/train_default_filter.sh [WORK_DIR]   (default data/default-filter)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
WORK="${1:-data/default-filter}"
export PATH="$ROOT/.venv/bin:$PATH" DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
genie sample make --out "$WORK/corpus" --size small
genie dataset build --sources "$WORK/corpus/sources.yaml" --out "$WORK/dataset" --enable-file-urls --no-model
genie filter train --data "$WORK/dataset" --labels "$WORK/corpus/labels.csv" --out "$WORK/models"
cp "$WORK/models/clip_filter.skops" "$WORK/models/clip_filter.json" filters/models/
echo "default clip filter: filters/models/clip_filter.skops ($(python -c 'import json;print(json.load(open("filters/models/clip_filter.json"))["version"])'))"
