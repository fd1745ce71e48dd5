#!/usr/bin/env bash
# `make demo`: the main job on the embedded default (SmolLM2-135M and the sample chains in data/).
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=.venv/bin/cotprune
OUT=out/demo
mkdir -p "$OUT"

$CLI show data/arithmetic.parquet --limit 1
