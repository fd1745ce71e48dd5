#!/usr/bin/env bash
# The whole loop on CPU-sized data: synth chains -> greedy prune -> distill a LoRA student on the
# pruned chains -> eval the base model and the student on held-out questions.
# Sizes come from the environment: N_TRAIN, N_TEST, KEEP, STEPS, MAX_NEW, MODEL, OUT.
#
# On a GPU with a real teacher and GSM8K, the same stages (see README):
#   cotprune import gsm8k/train.jsonl --format gsm8k -o gsm8k.parquet
#   cotprune generate gsm8k.parquet -o chains.parquet --model Qwen/Qwen2.5-7B-Instruct \
#       --samples 4 --temperature 0.7 --keep-correct --max-new-tokens 1024
#   cotprune prune chains.parquet -o pruned.parquet --method greedy --keep 0.9,0.7,0.5
#   torchrun --nproc-per-node 8 -m cotprune distill pruned.parquet -o student \
#       --model Qwen/Qwen2.5-1.5B-Instruct --ratio-conditioned --epochs 3
#   cotprune eval gsm8k-test.parquet -o eval.parquet --model Qwen/Qwen2.5-1.5B-Instruct \
#       --adapter student --keep 0.7
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/cotprune}
OUT=${OUT:-out/pipeline}
MODEL=${MODEL:-smollm2-135m}
N_TRAIN=${N_TRAIN:-8}
N_TEST=${N_TEST:-8}
KEEP=${KEEP:-0.7}
STEPS=${STEPS:-20}
MAX_NEW=${MAX_NEW:-320}
mkdir -p "$OUT"
rm -rf "$OUT/student"

$CLI synth arithmetic -n "$N_TRAIN" --seed 1 -o "$OUT/train.parquet"
$CLI synth arithmetic -n "$N_TEST" --seed 2 -o "$OUT/test.parquet"
$CLI prune "$OUT/train.parquet" -o "$OUT/pruned.parquet" --model "$MODEL" \
    --method greedy --keep "$KEEP" --per-step 8 --shortlist 16
$CLI distill "$OUT/pruned.parquet" -o "$OUT/student" --model "$MODEL" \
    --max-steps "$STEPS" --lr 1e-3 --batch-tokens 2048 --save-every 10
$CLI eval "$OUT/test.parquet" -o "$OUT/eval-base.parquet" --model "$MODEL" \
    --max-new-tokens "$MAX_NEW"
$CLI eval "$OUT/test.parquet" -o "$OUT/eval-student.parquet" --model "$MODEL" \
    --adapter "$OUT/student" --max-new-tokens "$MAX_NEW"
echo "pipeline outputs in $OUT: pruned.parquet, student/, eval-base.parquet, eval-student.parquet" >&2
