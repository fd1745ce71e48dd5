"""`cotprune prune`: delete CoT tokens, one row per (chain, keep ratio) (SPEC "pruned").

Methods:
- `greedy`: likelihood-preserving greedy deletion (see `greedy.py`), one trajectory per chain.
- static orders, each keeping exactly floor(keep * n) tokens so methods compare at matched
  lengths: `surprisal` (most predictable first), `entropy` (lowest entropy first), `attention`
  (least attended first), `loo` (smallest leave-one-out increase of J first), `random` (seeded
  per chain), `predicted` (a fitted predictor's rank, see `predictor.py`).
Every row's `objective_nll` is J of the pruned chain, computed by the same engine for all methods.

Features: `--protect digits|REGEX` keeps matching tokens; `--max-cot-tokens` skips longer chains;
`--resume` continues whole chains and, for greedy, the unfinished chain from its last step;
`--shard I/N` (or RANK/WORLD_SIZE) writes one part file per process.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from cotprune.console import Progress, log
from cotprune.core.deletion import ChainState, DeletionScorer
from cotprune.core.engine import check_objective, sequence_objectives
from cotprune.core.models import ModelOptions, load_model
from cotprune.data.files import (
    LAYOUT_FIELDS,
    Shard,
    StageOutput,
    extend_schema,
    make_manifest,
    read_table,
    validate_chains,
)
from cotprune.data.layout import ChainLayout, Layout, decode, join_segments, token_texts
from cotprune.errors import InputError
from cotprune.pruning.greedy import GreedyOptions, Trajectory, greedy_prune, kept_positions

METHODS = ("greedy", "surprisal", "entropy", "attention", "loo", "predicted", "random")

PRUNED_FIELDS = [
    pa.field("keep_ratio", pa.float32()),
    pa.field("original_tokens", pa.int32()),
    pa.field("kept_tokens", pa.int32()),
    pa.field("kept_positions", pa.list_(pa.int32())),
    pa.field("method", pa.string()),
    pa.field("objective_nll", pa.float32()),
    *LAYOUT_FIELDS,
    pa.field("prune_order", pa.list_(pa.int32())),
    pa.field("objective_trace", pa.list_(pa.float32())),
]


@dataclass
class PruneOptions:
    method: str = "greedy"
    keep: list[float] = field(default_factory=lambda: [0.9, 0.7, 0.5])
    objective: str = "reason-answer"
    greedy: GreedyOptions = field(default_factory=GreedyOptions)
    protect: str | None = None
    max_cot_tokens: int | None = 1024
    seed: int = 0
    batch_tokens: int = 4096
    predictor: str | None = None
    repredict_every: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for r in self.keep:
            if not (0.0 <= r <= 1.0) or math.isnan(r):
                raise InputError(f"--keep ratios must lie in [0, 1], got {r}")
        check_objective(self.objective)
        if self.method == "predicted" and not self.predictor:
            raise InputError("--method predicted needs --predictor PATH")
        self.protect_pattern  # noqa: B018 -- validate the regex now, before any work

    @property
    def protect_pattern(self) -> re.Pattern | None:
        if not self.protect:
            return None
        pattern = r"\d" if self.protect == "digits" else self.protect
        try:
            return re.compile(pattern)
        except re.error as e:
            raise InputError(f"--protect: bad regular expression ({e})") from None


def kept_count(keep: float, n: int) -> int:
    return math.floor(keep * n + 1e-9)  # 0.7 * 10 must give 7, not 6.999...


def protected_positions(tokenizer, cot_ids: list[int], pattern: re.Pattern | None) -> frozenset:
    if pattern is None:
        return frozenset()
    return frozenset(i for i, t in enumerate(token_texts(tokenizer, cot_ids)) if pattern.search(t))


# --- static orders: original CoT indices, first deleted first --------------------------------

def order_by_scores(scores: list[float], protected: frozenset) -> list[int]:
    """Ascending score (ties: lower index); protected tokens are never deleted."""
    return [i for i in sorted(range(len(scores)), key=lambda i: (scores[i], i))
            if i not in protected]


def random_order(n: int, seed: int, chain_id: str, protected: frozenset) -> list[int]:
    rng = random.Random(f"{seed}:{chain_id}")
    order = [i for i in range(n) if i not in protected]
    rng.shuffle(order)
    return order


def static_scores(method: str, model, tokenizer, layout: Layout, opts: PruneOptions,
                  scorer) -> list[float]:
    """Per-CoT-token scores whose ascending order is the deletion order."""
    if method == "loo":
        return scorer.loo_scores(ChainState.from_layout(layout))
    from cotprune.scoring.score import score_batch

    return score_batch(model, tokenizer, [layout], [method],
                       batch_tokens=opts.batch_tokens)[0][method]


# --- the stage -------------------------------------------------------------------------------

class GreedyCheckpoint:
    """Saves an unfinished greedy trajectory after every step, so --resume goes on from there."""

    def __init__(self, output: StageOutput, chain_id: str):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", chain_id)
        self.path = output.state_path(f"greedy-{safe}.json")
        self.chain_id = chain_id

    def load(self) -> Trajectory | None:
        if not self.path.exists():
            return None
        data = json.loads(self.path.read_text())
        return Trajectory(data["order"], data["trace"]) if data["id"] == self.chain_id else None

    def save(self, traj: Trajectory) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"id": self.chain_id, "order": traj.order, "trace": traj.trace}))
        tmp.replace(self.path)


def pruned_rows(chain: dict, layout: Layout, order: list[int], opts: PruneOptions, tokenizer,
                model, trajectory: Trajectory | None) -> list[dict]:
    """One row per requested ratio, with J of each pruned chain."""
    n = len(layout.cot_ids)
    prompt = layout.input_ids[:layout.cot_start]
    answer = layout.input_ids[layout.answer_start:layout.answer_end]
    kept_sets = []
    for r in opts.keep:
        want = kept_count(r, n)
        keep = max(want, n - len(order))  # protected tokens may make a ratio unreachable
        kept_sets.append(kept_positions(n, order, keep))
    pruned_layouts = [join_segments(prompt, [layout.cot_ids[i] for i in kept], answer)
                      for kept in kept_sets]
    js = sequence_objectives(model, pruned_layouts, opts.objective,
                             batch_tokens=opts.batch_tokens, pad_id=tokenizer.pad_token_id)
    rows = []
    for r, kept, j in zip(opts.keep, kept_sets, js, strict=True):
        rows.append({
            **chain,
            "cot": decode(tokenizer, [layout.cot_ids[i] for i in kept]),
            "keep_ratio": r,
            "original_tokens": n,
            "kept_tokens": len(kept),
            "kept_positions": kept,
            "method": opts.method,
            "objective_nll": j,
            **layout.as_columns(),
            "prune_order": trajectory.order if trajectory else None,
            "objective_trace": trajectory.trace if trajectory else None,
        })
    return rows


def run_prune(chains_path: Path, out: Path, model_opts: ModelOptions, opts: PruneOptions, *,
              shard: Shard = Shard(), resume: bool = False, limit: int | None = None) -> dict:
    """The `prune` recipe: read, lay out, order, cut at each ratio, write. Returns the summary."""
    table = read_table(chains_path)
    validate_chains(table, str(chains_path))
    if limit is not None:
        table = table.slice(0, limit)
    rows_range = shard.rows(table.num_rows)
    chains = table.slice(rows_range.start, len(rows_range)).to_pylist()

    schema = extend_schema(table.schema, PRUNED_FIELDS)
    manifest = make_manifest("prune", model=model_opts.model, dtype=model_opts.dtype,
                             seed=opts.seed, method=opts.method, keep=opts.keep,
                             objective=opts.objective)
    output = StageOutput(out, schema, manifest, shard=shard, resume=resume)
    done = output.done_ids
    model, tokenizer = load_model(model_opts)
    layouter = ChainLayout(tokenizer)
    scorer = DeletionScorer(model, opts.objective, opts.batch_tokens)
    predictor = None
    if opts.method == "predicted":
        from cotprune.pruning.predictor import load_predictor

        predictor = load_predictor(opts.predictor, model_opts.model)

    skipped = cot_tokens = 0
    with Progress(len(chains), f"prune {opts.method}") as progress:
        for offset, chain in enumerate(chains):
            if chain["id"] in done:
                progress.advance()
                continue
            layout = layouter.layout(chain["question"], chain["cot"], chain["answer"])
            n = len(layout.cot_ids)
            if opts.max_cot_tokens is not None and n > opts.max_cot_tokens:
                log.warning("skipping %s: %d CoT tokens > --max-cot-tokens %d", chain["id"], n,
                            opts.max_cot_tokens)
                skipped += 1
                progress.advance()
                continue
            protected = protected_positions(tokenizer, layout.cot_ids, opts.protect_pattern)
            trajectory = None
            if opts.method == "greedy":
                checkpoint = GreedyCheckpoint(output, chain["id"])
                trajectory = greedy_prune(
                    scorer, layout.input_ids[:layout.cot_start], layout.cot_ids,
                    layout.input_ids[layout.answer_start:],
                    n - kept_count(min(opts.keep), n), protected=protected, opts=opts.greedy,
                    start=checkpoint.load() if resume else None, on_step=checkpoint.save)
                order = trajectory.order
            elif opts.method == "random":
                order = random_order(n, opts.seed, chain["id"], protected)
            elif opts.method == "predicted":
                order = predictor.order(model, tokenizer, layout, protected,
                                        repredict_every=opts.repredict_every)
            else:
                scores = static_scores(opts.method, model, tokenizer, layout, opts, scorer)
                order = order_by_scores(scores, protected)
            rows = pruned_rows(chain, layout, order, opts, tokenizer, model, trajectory)
            output.write(rows, [rows_range.start + offset] * len(rows))
            cot_tokens += n
            progress.advance(1, tokens=n)
        seconds = progress.seconds
    written = output.finish()
    return {"command": "prune", "method": opts.method, "chains": len(chains) - skipped,
            "skipped": skipped, "rows": written, "cot_tokens": cot_tokens,
            "seconds": round(seconds, 3), "output": str(out)}
