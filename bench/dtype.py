"""Exact greedy pruning with the pruner in float32 against bfloat16, on this machine's CPU.

Runs the first --steps deletions of exact greedy on real GSM8K train chains with the default
model loaded in each dtype, the two sides alternated --rounds times in one process, and prints
CPU seconds, decoder tokens run (identical work: the same engine, the same candidates, unless a
choice flips) and their ratio, with the load average before and after.

    OMP_NUM_THREADS=1 .venv/bin/python bench/dtype.py --chains 1 --min-cot 80 --max-cot 100 \
        --steps 8 --rounds 2

On CPUs with AVX512-BF16 (or AMX) bfloat16 matrix products run several times faster than
float32; elsewhere bfloat16 can be slower. The choices can differ (bfloat16 rounds the logits),
which is why experiments/ validates bfloat16 labels against float32 exact greedy's J.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from greedy import gsm8k_layouts  # bench/greedy.py: the same chain selection


def run_side(model, layouts, steps: int) -> tuple[float, int, list[list[int]]]:
    """(CPU seconds, decoder tokens, deletion orders) of `steps` exact greedy deletions."""
    from cotprune.core.deletion import DeletionScorer
    from cotprune.pruning.greedy import greedy_prune

    scorer = DeletionScorer(model, "reason-answer", 4096)
    start, orders = time.process_time(), []
    for x in layouts:
        traj = greedy_prune(scorer, x.input_ids[:x.cot_start], x.cot_ids,
                            x.input_ids[x.answer_start:], steps)
        orders.append(traj.order)
    return time.process_time() - start, scorer.work.tokens_run, orders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=1)
    ap.add_argument("--min-cot", type=int, default=80)
    ap.add_argument("--max-cot", type=int, default=100)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from cotprune.core.models import ModelOptions, load_model
    from cotprune.data.layout import ChainLayout

    load_before = os.getloadavg()
    models = {dtype: load_model(ModelOptions(device="cpu", dtype=dtype))[0]
              for dtype in ("float32", "bfloat16")}
    _, tokenizer = load_model(ModelOptions(device="cpu"))
    layouts = gsm8k_layouts(ChainLayout(tokenizer), args.min_cot, args.max_cot, args.chains)
    seconds = {dtype: [] for dtype in models}
    tokens, orders = {}, {}
    for _ in range(args.rounds):
        for dtype, model in models.items():  # alternated, so drift in load hits both sides
            s, tokens[dtype], orders[dtype] = run_side(model, layouts, args.steps)
            seconds[dtype].append(round(s, 2))
    best = {dtype: min(v) for dtype, v in seconds.items()}
    print(json.dumps({
        "chains": len(layouts), "cot_tokens": [len(x.cot_ids) for x in layouts],
        "steps": args.steps, "cpu_seconds": seconds, "tokens_run": tokens,
        "same_orders": orders["float32"] == orders["bfloat16"],
        "speedup_bfloat16": round(best["float32"] / best["bfloat16"], 2),
        "tokens_per_cpu_second": {d: round(tokens[d] / best[d]) for d in models},
        "torch_threads": torch.get_num_threads(),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
