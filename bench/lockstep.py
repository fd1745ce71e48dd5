"""Greedy pruning one chain at a time against `--lockstep N` (chains side by side, their packed
candidates in shared forwards), on the same chains in one process.

Runs the first --steps exact greedy deletions of each chain, the two sides alternated --rounds
times, and prints per side: forwards and decoder tokens run (counts that do not depend on the
machine), CPU and wall seconds, and whether the deletions agree, with the load average.

    OMP_NUM_THREADS=1 .venv/bin/python bench/lockstep.py --chains 4 --min-cot 60 \
        --max-cot 120 --steps 4 --lockstep 4 --rounds 1

Real GSM8K train chains with the default model (bench/greedy.py's selection), float32.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from greedy import gsm8k_layouts  # bench/greedy.py: the same chain selection


def run_side(model, layouts, steps: int, lockstep: int) -> dict:
    """Counts, seconds and deletion orders of `steps` exact greedy deletions of every chain,
    `lockstep` chains at a time."""
    from cotprune.core.deletion import DeletionScorer
    from cotprune.core.lockstep import Lockstep
    from cotprune.pruning.greedy import greedy_prune

    scorer = DeletionScorer(model, "reason-answer", 4096)

    def prune(x, chain_scorer):
        return greedy_prune(chain_scorer, x.input_ids[:x.cot_start], x.cot_ids,
                            x.input_ids[x.answer_start:], steps).order

    cpu, wall, orders = time.process_time(), time.perf_counter(), []
    for first in range(0, len(layouts), lockstep):
        group = layouts[first:first + lockstep]
        if len(group) == 1:
            orders.append(prune(group[0], scorer))
            continue
        orders += Lockstep(scorer.runner).run([
            lambda view, x=x: prune(x, scorer.with_runner(view)) for x in group])
    return {"cpu_s": round(time.process_time() - cpu, 2),
            "wall_s": round(time.perf_counter() - wall, 2), **scorer.counts(), "orders": orders}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--min-cot", type=int, default=60)
    ap.add_argument("--max-cot", type=int, default=120)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--lockstep", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()

    from cotprune.core.models import ModelOptions, load_model
    from cotprune.data.layout import ChainLayout

    load_before = os.getloadavg()
    model, tokenizer = load_model(ModelOptions(device="cpu", dtype="float32"))
    layouts = gsm8k_layouts(ChainLayout(tokenizer), args.min_cot, args.max_cot, args.chains)
    sides = {"alone": 1, f"lockstep {args.lockstep}": args.lockstep}
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, n in sides.items():
            runs[name].append(run_side(model, layouts, args.steps, n))
    alone, side = (runs[name][0] for name in sides)
    print(json.dumps({
        "chains": len(layouts), "cot_tokens": [len(x.cot_ids) for x in layouts],
        "steps": args.steps,
        **{name: [{k: v for k, v in r.items() if k != "orders"} for r in rs]
           for name, rs in runs.items()},
        "same_orders": alone["orders"] == side["orders"],
        "forwards_ratio": round(alone["forwards"] / side["forwards"], 2),
        "tokens_ratio": round(alone["tokens_run"] / side["tokens_run"], 3),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()]}, indent=1))


if __name__ == "__main__":
    main()
