#!/usr/bin/env bash
# `make demo`: the main job on the embedded default (SmolLM2-135M and the sample chains in data/):
# score the CoT tokens, prune them greedily at keep 0.9/0.7/0.5, compare with static baselines at
# matched lengths, show a pruned chain and write the HTML report. A few minutes on a 2-core CPU.
#
# The sample chains are long (about 200 CoT tokens), so the demo uses greedy's fast mode
# (--per-step 8 --shortlist 16); drop those two flags for exact greedy (BENCHMARKS.md: costs).
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/cotprune}
OUT=${OUT:-out/demo}
N=${N:-2}
rm -rf "$OUT"
mkdir -p "$OUT"

$CLI show data/arithmetic.parquet --limit 1
$CLI score data/arithmetic.parquet -o "$OUT/scores.parquet" --limit "$N" \
    --scorer surprisal,entropy,attention
$CLI prune data/arithmetic.parquet -o "$OUT/greedy.parquet" --limit "$N" \
    --method greedy --keep 0.9,0.7,0.5 --per-step 8 --shortlist 16
for method in surprisal attention random; do
  $CLI prune data/arithmetic.parquet -o "$OUT/$method.parquet" --limit "$N" \
      --method "$method" --keep 0.9,0.7,0.5
done
$CLI show "$OUT/greedy.parquet" --keep 0.5 --limit 1
$CLI report "$OUT/greedy.parquet" "$OUT/surprisal.parquet" "$OUT/attention.parquet" \
    "$OUT/random.parquet" "$OUT/scores.parquet" -o "$OUT/report"
echo "demo outputs in $OUT; report: $OUT/report/index.html" >&2
