"""A/B a tuning constant of exact greedy in one process (alternating, so load drifts evenly).

    OMP_NUM_THREADS=1 .venv/bin/python bench/greedy_ab.py --min-cot 40 --max-cot 50 --steps 23 \
        LANE_TOKENS 128 10**6

Runs exact greedy (`--steps` deletions) on the first GSM8K chain whose CoT length is in the
window, once per value and round (A B A B ...), and prints process CPU seconds per value and
whether every run deleted the same tokens (the constants tune speed, never choices). The
constant is a module attribute of `cotprune.core.deletion` or `cotprune.core.branch_and_bound`;
values are Python literals or expressions such as 10**6.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from greedy import gsm8k_layouts  # bench/greedy.py, beside this script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("constant")
    ap.add_argument("values", nargs="+")
    ap.add_argument("--min-cot", type=int, default=40)
    ap.add_argument("--max-cot", type=int, default=50)
    ap.add_argument("--steps", type=int, default=23)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import cotprune.core.branch_and_bound as branch_and_bound
    import cotprune.core.deletion as deletion
    from cotprune.core.models import ModelOptions, load_model
    from cotprune.data.layout import ChainLayout
    from cotprune.pruning.greedy import greedy_prune

    # the module that reads it: deletion only re-exports branch_and_bound.CHECKPOINTS
    owner = next((m for m in (branch_and_bound, deletion) if hasattr(m, args.constant)), None)
    if owner is None:
        raise SystemExit(f"neither cotprune.core.deletion nor .branch_and_bound has "
                         f"{args.constant}")
    model, tok = load_model(ModelOptions(device="cpu"))
    found = gsm8k_layouts(ChainLayout(tok), args.min_cot, args.max_cot, 1)
    if not found:
        raise SystemExit(f"no GSM8K chain with {args.min_cot}-{args.max_cot} CoT tokens")
    lay = found[0]
    prompt, cot = lay.input_ids[:lay.cot_start], lay.cot_ids
    answer = lay.input_ids[lay.answer_start:]
    seconds: dict[str, list[float]] = {v: [] for v in args.values}
    orders = set()
    for _ in range(args.rounds):
        for value in args.values:
            setattr(owner, args.constant, eval(value, {}))  # a bench's own argument
            scorer = deletion.DeletionScorer(model, "reason-answer", 4096)
            start = time.process_time()
            traj = greedy_prune(scorer, prompt, cot, answer, args.steps)
            seconds[value].append(round(time.process_time() - start, 1))
            orders.add(tuple(traj.order))
    print(json.dumps({"constant": args.constant, "cot_tokens": len(cot), "steps": args.steps,
                      "cpu_seconds": seconds, "same_order": len(orders) == 1,
                      "torch_threads": torch.get_num_threads()}, indent=1))


if __name__ == "__main__":
    main()
