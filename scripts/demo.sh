#!/usr/bin/env bash
# `make demo`: the main job on the embedded default (SmolLM2-135M) in about a minute on a 2-core
# CPU: import a short sample chain, score its CoT tokens, prune it by exact greedy at keep
# 0.9/0.7/0.5, compare with static baselines at matched lengths, show the pruned chain and write
# the HTML report.
#
# The sample (data/demo.jsonl) has a 34-token CoT: exact greedy costs about the square of the CoT
# length, so the synthetic chains in data/arithmetic.parquet (about 200 CoT tokens) take many
# minutes on a CPU (BENCHMARKS.md gives the costs). To prune those instead, with greedy's fast
# mode: CHAINS=data/arithmetic.parquet GREEDY="--per-step 16 --shortlist 16" make demo.
# One thread by default: these forwards are small, and on a shared CPU more threads spin-wait
# (measured 4x slower with two other jobs running); set OMP_NUM_THREADS to override.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/cotprune}
OUT=${OUT:-out/demo}
CHAINS=${CHAINS:-data/demo.jsonl}
GREEDY=${GREEDY:-}
N=${N:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
rm -rf "$OUT"
mkdir -p "$OUT"

if [[ $CHAINS == *.jsonl ]]; then
  $CLI import "$CHAINS" -o "$OUT/chains.parquet" --format jsonl
  CHAINS=$OUT/chains.parquet
fi
$CLI show "$CHAINS" --limit 1
$CLI score "$CHAINS" -o "$OUT/scores.parquet" --limit "$N" \
    --scorer surprisal,entropy,attention
# shellcheck disable=SC2086  # GREEDY is a list of flags
$CLI prune "$CHAINS" -o "$OUT/greedy.parquet" --limit "$N" \
    --method greedy --keep 0.9,0.7,0.5 $GREEDY
for method in surprisal attention random; do  # static orders, read from the scores file
  $CLI prune "$OUT/scores.parquet" -o "$OUT/$method.parquet" --limit "$N" \
      --method "$method" --keep 0.9,0.7,0.5
done
$CLI show "$OUT/greedy.parquet" --keep 0.5 --limit 1
$CLI report "$OUT/greedy.parquet" "$OUT/surprisal.parquet" "$OUT/attention.parquet" \
    "$OUT/random.parquet" "$OUT/scores.parquet" -o "$OUT/report"
echo "demo outputs in $OUT; report: $OUT/report/index.html" >&2
