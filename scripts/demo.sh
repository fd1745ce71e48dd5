#!/usr/bin/env bash
# `make demo`: the main job on the embedded default (SmolLM2-135M and the sample chains in data/):
# score the CoT tokens, prune them greedily at keep 0.9/0.7/0.5, compare with static baselines at
# matched lengths, show a pruned chain and write the HTML report. A few minutes on a 2-core CPU.
#
# The sample chains are long (about 200 CoT tokens), so the demo prunes one chain with greedy's
# fast mode (--per-step 16 --shortlist 16: lazy greedy after one full step); drop them for exact
# greedy, which takes much longer on a CPU (BENCHMARKS.md gives the costs). N=3 make demo for more.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/cotprune}
OUT=${OUT:-out/demo}
N=${N:-1}
rm -rf "$OUT"
mkdir -p "$OUT"

$CLI show data/arithmetic.parquet --limit 1
$CLI score data/arithmetic.parquet -o "$OUT/scores.parquet" --limit "$N" \
    --scorer surprisal,entropy,attention
$CLI prune data/arithmetic.parquet -o "$OUT/greedy.parquet" --limit "$N" \
    --method greedy --keep 0.9,0.7,0.5 --per-step 16 --shortlist 16
for method in surprisal attention random; do
  $CLI prune data/arithmetic.parquet -o "$OUT/$method.parquet" --limit "$N" \
      --method "$method" --keep 0.9,0.7,0.5
done
$CLI show "$OUT/greedy.parquet" --keep 0.5 --limit 1
$CLI report "$OUT/greedy.parquet" "$OUT/surprisal.parquet" "$OUT/attention.parquet" \
    "$OUT/random.parquet" "$OUT/scores.parquet" -o "$OUT/report"
echo "demo outputs in $OUT; report: $OUT/report/index.html" >&2
