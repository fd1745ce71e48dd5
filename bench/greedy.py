"""Greedy pruning: cotprune's exact and approximate modes against the published algorithm.

The baseline is the published algorithm: at every step, every candidate deletion is scored as a
full new sequence (full forward, full logits, log-softmax), with the candidates of one step
batched together. Exact mode must pick the same deletions; the fast modes report their J gap.

    .venv/bin/python bench/greedy.py --chains 3 --max-cot 40 --keep 0.5 \
        [--modes exact,per-step=4,shortlist=8,shortlist=4+refresh-every=10]

A mode is exact or '+'-joined GreedyOptions settings (per-step, shortlist, refresh-every).

Real GSM8K chains (../shared/data/gsm8k/train.jsonl, calculator annotations removed) with the
default model, chosen as the first chains whose CoT has at most --max-cot tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


@torch.no_grad()
def published_greedy(model, prompt, cot, answer, deletions, batch_tokens):
    """(order, trace, input tokens run): full recompute of every candidate at every step, the
    candidates of a step batched."""
    positions = list(range(len(cot)))
    order, trace, tokens = [], [], 0
    for _ in range(deletions):
        seqs = [tuple([*prompt, *[cot[i] for j, i in enumerate(positions) if j != k], *answer])
                for k in range(len(positions))]
        # equal neighbours give one sequence: scored once, so the tie goes to the lower index
        unique = list(dict.fromkeys(seqs))
        width = len(seqs[0])
        tokens += width * len(unique)
        per_batch = max(1, batch_tokens // width)
        scored = []
        for b in range(0, len(unique), per_batch):
            ids = torch.tensor(unique[b:b + per_batch])
            logp = torch.log_softmax(model(ids).logits.float(), -1)
            tgt = ids[:, len(prompt):]
            nll = -logp[:, len(prompt) - 1:-1].gather(-1, tgt[..., None])[..., 0]
            scored += nll.double().sum(1).tolist()
        j_of = dict(zip(unique, scored))
        js = [j_of[seq] for seq in seqs]
        k = min(range(len(js)), key=lambda i: (js[i], i))
        order.append(positions.pop(k))
        trace.append(js[k])
    return order, trace, tokens


def gsm8k_layouts(layouter, min_cot: int, max_cot: int, count: int) -> list:
    """The first `count` GSM8K train chains (of the first 500) whose CoT has min_cot to max_cot
    tokens, laid out by `layouter`."""
    from cotprune.data.importers import import_chains

    layouts = []
    for c in import_chains(str(GSM8K), "gsm8k", limit=500):
        lay = layouter.layout(c["question"], c["cot"], c["answer"])
        if min_cot <= len(lay.cot_ids) <= max_cot:
            layouts.append(lay)
        if len(layouts) == count:
            break
    return layouts


def parse_mode(spec: str):
    """'exact' or e.g. 'shortlist=8+refresh-every=10' -> GreedyOptions."""
    from cotprune.pruning.greedy import GreedyOptions

    if spec == "exact":
        return GreedyOptions()
    fields = {"per-step": "per_step", "shortlist": "shortlist", "refresh-every": "refresh_every",
              "self-term": "self_term", "first-window": "first_window",
              "screen": "screen"}
    settings = dict(part.split("=") for part in spec.split("+"))
    values = {fields[k]: (v == "1" if k == "self-term" else int(v)) for k, v in settings.items()}
    return GreedyOptions(**values)


def timed(fn, *args, **kwargs):
    """(result, process CPU seconds): CPU time is steadier than wall time on a shared machine."""
    start = time.process_time()
    result = fn(*args, **kwargs)
    return result, time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=3)
    ap.add_argument("--min-cot", type=int, default=1)
    ap.add_argument("--max-cot", type=int, default=40)
    ap.add_argument("--steps", type=int, default=None,
                    help="Stop after this many deletions (to time long chains).")
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--modes", default="exact,per-step=4,shortlist=8",
                    help="Comma-separated modes; the first must be exact (the J yardstick).")
    args = ap.parse_args()

    from cotprune.core.deletion import DeletionScorer
    from cotprune.core.engine import sequence_objectives
    from cotprune.core.models import ModelOptions, load_model
    from cotprune.data.layout import ChainLayout, join_segments
    from cotprune.pruning.greedy import greedy_prune, kept_positions

    model, tok = load_model(ModelOptions(device="cpu"))
    layouts = gsm8k_layouts(ChainLayout(tok), args.min_cot, args.max_cot, args.chains)

    modes = {spec: parse_mode(spec) for spec in args.modes.split(",")}
    if next(iter(modes)) != "exact":
        sys.exit("--modes must start with exact")
    totals = {name: 0.0 for name in ["published", *modes]}
    tokens = {name: 0 for name in ["published", *modes]}  # input tokens of all forwards
    j_at_keep = {name: [] for name in ["published", *modes]}
    same_order = True
    for lay in layouts:
        prompt = lay.input_ids[:lay.cot_start]
        cot = lay.cot_ids
        answer = lay.input_ids[lay.answer_start:]
        n = len(cot)
        deletions = n - math.floor(args.keep * n + 1e-9)
        if args.steps is not None:
            deletions = min(deletions, args.steps)

        def final_j(order, cot=cot, prompt=prompt, answer=answer, n=n, deletions=deletions):
            kept = [cot[i] for i in kept_positions(n, order, n - deletions)]
            return sequence_objectives(model, [join_segments(prompt, kept, answer)],
                                       "reason-answer", batch_tokens=args.batch_tokens,
                                       pad_id=tok.pad_token_id)[0]

        orders = {}
        if not args.skip_baseline:
            (orders["published"], _, ran), s = timed(published_greedy, model, prompt, cot,
                                                     answer, deletions, args.batch_tokens)
            totals["published"] += s
            tokens["published"] += ran
        for name, opts in modes.items():
            scorer = DeletionScorer(model, "reason-answer", args.batch_tokens)
            traj, s = timed(greedy_prune, scorer, prompt, cot, answer, deletions, opts=opts)
            orders[name] = traj.order
            totals[name] += s
            tokens[name] += scorer.work.tokens_run
        for name, order in orders.items():
            j_at_keep[name].append(final_j(order))
        if "published" in orders:
            same_order &= orders["published"] == orders["exact"]
        print(f"chain: prompt {len(prompt)}, cot {n}, answer {len(answer)} tokens, "
              f"{deletions} deletions, CPU s so far: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                               totals.items()),
              file=sys.stderr, flush=True)

    exact_j = sum(j_at_keep["exact"])
    report = {
        "chains": len(layouts),
        "cot_tokens": [len(x.cot_ids) for x in layouts],
        "keep": args.keep,
        "cpu_seconds": {k: round(v, 2) for k, v in totals.items()},
        "speedup_vs_published": {k: round(totals["published"] / v, 2) for k, v in totals.items()}
        if not args.skip_baseline else None,
        "tokens_run": tokens,
        "speedup_vs_exact": {k: round(totals["exact"] / v, 2) for k, v in totals.items() if v},
        "exact_order_equals_published": same_order if not args.skip_baseline else None,
        "sum_J_at_keep": {k: round(sum(v), 4) for k, v in j_at_keep.items() if v},
        "J_gap_vs_exact_pct": {k: round(100 * (sum(v) - exact_j) / exact_j, 3)
                               for k, v in j_at_keep.items() if v},
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
