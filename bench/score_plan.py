"""Benchmark: the `score` stage with `plan_batches` (cut where padding costs more than a forward)
against the planner it replaced (fill every batch to the token budget, longest first).

Both run in one process on the same 48 GSM8K chains, the model loaded once, alternating the
order over --repeats; printed: each side's compute seconds (the stage's own `seconds`, sorted)
and the tokens its batches run with their padding.

    OMP_NUM_THREADS=1 .venv/bin/python bench/score_plan.py [--chains 48] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score import SCORERS, chain_lengths, padded_tokens, write_chains  # noqa: E402


def fill_to_budget(lengths, batch_tokens):
    """The planner before issue 18: longest first, each batch filled up to the budget."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, current = [], []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    args = ap.parse_args()

    import cotprune.core.engine as engine
    from cotprune.core.models import ModelOptions
    from cotprune.scoring.score import ScoreOptions, run_score

    chains = write_chains(args.chains, Path(tempfile.mkdtemp()))
    lengths = chain_lengths(chains)
    sides = {"plan_batches": engine.plan_batches, "fill_to_budget": fill_to_budget}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for rep in range(args.repeats):
        for name in (list(sides) if rep % 2 == 0 else list(sides)[::-1]):
            engine.plan_batches = sides[name]  # run_score imports it from the module per call
            out = Path(tempfile.mkdtemp()) / "scores.parquet"
            summary = run_score(chains, out, ScoreOptions(scorers=SCORERS,
                                                          batch_tokens=args.batch_tokens),
                                ModelOptions(device="cpu"))
            seconds[name].append(summary["seconds"])
    engine.plan_batches = sides["plan_batches"]
    print(json.dumps({
        "chains": args.chains, "chain_tokens": sum(lengths),
        "padded_tokens": {name: padded_tokens(plan, lengths, args.batch_tokens)
                          for name, plan in sides.items()},
        "compute_s": {name: sorted(v) for name, v in seconds.items()},
        "speedup": round(min(seconds["fill_to_budget"]) / min(seconds["plan_batches"]), 2),
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2)}, indent=1))


if __name__ == "__main__":
    main()
