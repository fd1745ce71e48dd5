"""Greedy modes over a set of GSM8K chains of spread lengths (issue 18): decoder tokens against
the published algorithm, summed J against exact greedy.

The set: --chains GSM8K train chains, the first one (in file order, from --offset on: the
chains before it are left for fitting a predictor) in each of --chains equal-width CoT-length
bins over [--min-cot, --max-cot] tokens of the default model's tokenizer, run shortest first.
Each chain is pruned to --keep by every mode with the pruner in --dtype, and its final J
recomputed in float32. One JSON line per (chain, mode) goes to --out as it finishes, so the run
resumes where it stopped (run it again), and a run cut short still compares every mode on the
chains they all finished:

    OMP_NUM_THREADS=1 .venv/bin/python bench/greedy_set.py --out bench/results/greedy_set.jsonl \
        --dtype bfloat16 --modes exact,per-step=2,shortlist=4,shortlist=4+refresh-every=8

A mode is `exact` or '+'-joined `prune` options (per-step, shortlist, refresh-every); `fast` is
`prune --fast`. `--report` prints the table of what --out holds without running anything;
`--floor` compares exact mode's tokens with `suffix_floor`, the least any exact greedy of this
kind can run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from greedy import GSM8K, parse_mode  # bench/greedy.py


def mode_options(spec: str):
    """GreedyOptions of a mode spec: 'exact', 'fast' or e.g. 'shortlist=4+refresh-every=8'."""
    from cotprune.pruning.greedy import FAST

    return FAST if spec == "fast" else parse_mode(spec)


def spread_set(layouter, count: int, min_cot: int, max_cot: int, offset: int) -> list:
    """(GSM8K row index, layout) of the first chain from `offset` on in each of `count`
    equal-width CoT-length bins over [min_cot, max_cot], shortest bin first."""
    from cotprune.data.importers import import_chains

    width = (max_cot - min_cot + 1) / count
    picked: dict[int, tuple[int, object]] = {}
    for index, chain in enumerate(import_chains(str(GSM8K), "gsm8k")):
        if index < offset:
            continue
        lay = layouter.layout(chain["question"], chain["cot"], chain["answer"])
        n = len(lay.cot_ids)
        if min_cot <= n <= max_cot:
            picked.setdefault(min(int((n - min_cot) / width), count - 1), (index, lay))
        if len(picked) == count:
            break
    return [picked[b] for b in sorted(picked)]


def prune_chain(model, j_model, pad_id: int, lay, keep: float, opts) -> dict:
    """One chain pruned by one mode: counts, CPU seconds, order and float32 J of the result."""
    from cotprune.core.deletion import DeletionScorer
    from cotprune.core.engine import sequence_objectives
    from cotprune.data.layout import join_segments
    from cotprune.pruning.greedy import greedy_prune, kept_positions, published_tokens

    prompt, cot = lay.input_ids[:lay.cot_start], lay.cot_ids
    answer = lay.input_ids[lay.answer_start:]
    n = len(cot)
    kept = math.floor(keep * n + 1e-9)
    scorer = DeletionScorer(model, "reason-answer", 4096)
    cpu = time.process_time()
    traj = greedy_prune(scorer, prompt, cot, answer, n - kept, opts=opts)
    cpu = time.process_time() - cpu
    chain = join_segments(prompt, [cot[i] for i in kept_positions(n, traj.order, kept)], answer)
    j = sequence_objectives(j_model, [chain], "reason-answer", batch_tokens=4096,
                            pad_id=pad_id)[0]
    return {"cot_tokens": n, "cpu_s": round(cpu, 2), **scorer.counts(),
            "published_tokens": published_tokens(len(prompt), n, len(answer), n - kept),
            "J": j, "order": traj.order}


def suffix_floor(prompt: int, cot: list[int], answer: int, order: list[int]) -> int:
    """Decoder tokens that any exact greedy which recomputes only what a deletion changes must
    run to make the deletions `order` (original CoT indices) of a chain.

    The prompt runs once (but its last token) and the chain once. At a step whose chain has m
    CoT tokens, candidate k runs its targets from its own deletion on, m + answer - 1 - k of
    them; after the first step a candidate k before the last deletion d needs only the targets
    from d on (m + answer - d: everything before agrees with its row of the step before), which
    is the best any reuse can do. Equal neighbours give one sequence, scored once. Exact mode
    runs about this many (branch and bound skips a few last targets of losing rows, lanes pad a
    few), so the ratio published / floor is the most any exact mode of this kind can reach."""
    tokens = prompt - 1 + len(cot) + answer
    current, last = list(range(len(cot))), None
    for gone in order:
        ids, m = [cot[i] for i in current], len(current)
        firsts = [k for k in range(m) if k == 0 or ids[k - 1] != ids[k]]
        tokens += sum(m + answer - last if last is not None and k < last else m + answer - 1 - k
                      for k in firsts)
        last = current.index(gone)
        current.pop(last)
    return tokens


def cpu_name() -> str:
    """The CPU's model name: CPU seconds compare only between records of one machine."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def gap_interval(exact_j: list[float], mode_j: list[float], reps: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of sum(mode J) / sum(exact J) - 1, resampling chains:
    per-chain gaps run from -28% to +48% on this set, so a summed gap alone overstates what
    a dozen chains show."""
    rng = random.Random(seed)
    n = len(exact_j)
    gaps = []
    for _ in range(reps):
        picks = [rng.randrange(n) for _ in range(n)]
        gaps.append(sum(mode_j[i] for i in picks) / sum(exact_j[i] for i in picks) - 1)
    gaps.sort()
    return gaps[int(0.025 * reps)], gaps[int(0.975 * reps) - 1]


def table(records: list[dict], modes: list[str]) -> str:
    """Markdown table per mode over the chains every mode finished: tokens and their ratio to
    the published algorithm's, forwards, CPU seconds, summed float32 J and its gap to exact
    (with a bootstrap interval over chains, and the median of the per-chain gaps, which one
    chain's detour moves less)."""
    by_mode = {m: {r["chain"]: r for r in records if r["mode"] == m} for m in modes}
    common = sorted(set.intersection(*(set(v) for v in by_mode.values())))
    if not common:
        return "no chain finished by every mode yet"
    lengths = [by_mode[modes[0]][c]["cot_tokens"] for c in common]
    published = sum(by_mode[modes[0]][c]["published_tokens"] for c in common)
    exact_j = (sum(by_mode["exact"][c]["J"] for c in common) if "exact" in by_mode else None)
    lines = [f"{len(common)} chains, CoT tokens {sorted(lengths)}, published algorithm "
             f"{published:,} decoder tokens", "",
             "| mode | decoder tokens | vs published | forwards | CPU s | sum J | gap vs exact "
             "| 95% interval | median chain gap |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in modes:
        rows = [by_mode[m][c] for c in common]
        tokens, j = sum(r["tokens_run"] for r in rows), sum(r["J"] for r in rows)
        gap = f"{100 * (j - exact_j) / exact_j:+.2f}%" if exact_j else "-"
        interval = median = "-"
        if exact_j and m != "exact":
            exact_of = [by_mode["exact"][c]["J"] for c in common]
            low, high = gap_interval(exact_of, [r["J"] for r in rows])
            interval = f"[{100 * low:+.1f}%, {100 * high:+.1f}%]"
            gaps = [r["J"] / e - 1 for r, e in zip(rows, exact_of)]
            median = f"{100 * statistics.median(gaps):+.1f}%"
        lines.append(f"| {m} | {tokens:,} | {published / tokens:.1f}x | "
                     f"{sum(r['forwards'] for r in rows):,} | "
                     f"{sum(r['cpu_s'] for r in rows):.0f} | {j:.2f} | {gap} | {interval} "
                     f"| {median} |")
    return "\n".join(lines)


def floor_table(records: list[dict], layouts: dict) -> str:
    """Markdown table of exact mode's tokens against `suffix_floor`, per chain and summed."""
    lines = ["| chain | CoT tokens | published | floor | exact | exact / floor "
             "| published / floor | published / exact |", "| --- " * 8 + "|"]
    sums = [0, 0, 0]
    for r in sorted((r for r in records if r["mode"] == "exact" and r["chain"] in layouts),
                    key=lambda r: r["cot_tokens"]):
        lay = layouts[r["chain"]]
        floor = suffix_floor(lay.cot_start, lay.cot_ids, len(lay.input_ids) - lay.answer_start,
                             r["order"])
        row = [r["published_tokens"], floor, r["tokens_run"]]
        sums = [a + b for a, b in zip(sums, row)]
        lines.append(f"| {r['chain']} | {r['cot_tokens']} | " + _floor_cells(*row))
    lines.append("| all | | " + _floor_cells(*sums))
    return "\n".join(lines)


def _floor_cells(published: int, floor: int, exact: int) -> str:
    return (f"{published:,} | {floor:,} | {exact:,} | {exact / floor:.2f} | "
            f"{published / floor:.1f}x | {published / exact:.1f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON lines, one per chain and mode")
    ap.add_argument("--chains", type=int, default=16)
    ap.add_argument("--min-cot", type=int, default=60)
    ap.add_argument("--max-cot", type=int, default=250)
    ap.add_argument("--offset", type=int, default=1000)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--dtype", default="float32", help="the pruner's; J is always float32")
    ap.add_argument("--modes", default="exact,per-step=2,shortlist=4")
    ap.add_argument("--report", action="store_true", help="only print the table of --out")
    ap.add_argument("--floor", action="store_true",
                    help="only print exact mode's tokens against `suffix_floor` per chain")
    args = ap.parse_args()
    modes = args.modes.split(",")
    if args.report:
        print(table(read_records(args.out), modes))
        return

    from cotprune.core.models import ModelOptions, load_model, load_tokenizer
    from cotprune.data.layout import ChainLayout

    if args.floor:
        chains = spread_set(ChainLayout(load_tokenizer()), args.chains, args.min_cot,
                            args.max_cot, args.offset)
        print(floor_table(read_records(args.out), dict(chains)))
        return

    model, tok = load_model(ModelOptions(device="cpu", dtype=args.dtype))
    j_model = model if args.dtype == "float32" else load_model(ModelOptions(device="cpu"))[0]
    chains = spread_set(ChainLayout(tok), args.chains, args.min_cot, args.max_cot, args.offset)
    done = {(r["chain"], r["mode"]) for r in read_records(args.out)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for index, lay in chains:
        for mode in modes:
            if (index, mode) in done:
                continue
            rec = prune_chain(model, j_model, tok.pad_token_id, lay, args.keep,
                              mode_options(mode))
            rec = {"chain": index, "mode": mode, "dtype": args.dtype, "keep": args.keep, **rec,
                   "load_average": os.getloadavg()[0], "cpu": cpu_name()}
            with args.out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"chain {index} ({rec['cot_tokens']} CoT tokens) {mode}: "
                  f"{rec['tokens_run']:,} tokens, {rec['cpu_s']} CPU s, J {rec['J']:.3f}",
                  file=sys.stderr, flush=True)
    print(table(read_records(args.out), modes))


if __name__ == "__main__":
    main()
