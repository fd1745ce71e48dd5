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
`--shard I/N` (or RANK/WORLD_SIZE) writes one part file per process; `--lockstep N` runs N
chains' greedy deletions side by side, their candidates in shared forwards.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa

from cotprune.console import Progress, log
from cotprune.core.deletion import ChainState, DeletionScorer
from cotprune.core.engine import check_objective, sequence_objectives
from cotprune.core.lockstep import Lockstep
from cotprune.core.models import ModelOptions
from cotprune.core.stage import RunOptions, open_stage
from cotprune.data.files import (
    LAYOUT_FIELDS,
    StageOutput,
    extend_schema,
    fingerprint,
    validate_chains,
)
from cotprune.data.layout import ChainLayout, Layout, decode, join_segments, token_texts
from cotprune.errors import InputError
from cotprune.pruning.greedy import (
    GreedyOptions,
    Trajectory,
    greedy_prune,
    kept_positions,
    published_tokens,
)

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
    lockstep: int = 1  # greedy: chains whose candidates share forwards (core/lockstep.py)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.lockstep < 1:
            raise InputError(f"--lockstep must be >= 1, got {self.lockstep}")
        for r in self.keep:
            if not (0.0 <= r <= 1.0) or math.isnan(r):
                raise InputError(f"--keep ratios must lie in [0, 1], got {r}")
        check_objective(self.objective)
        if self.method != "greedy" and self.greedy != GreedyOptions():
            raise InputError(f"--per-step, --shortlist, --refresh-every, --self-term, "
                             f"--first-window, --screen and --fast are for --method greedy, not "
                             f"{self.method!r}")
        if self.method == "predicted" and not self.predictor:
            raise InputError("--method predicted needs --predictor PATH")
        if self.method == "greedy" and self.predictor and self.greedy.shortlist is None:
            raise InputError("--method greedy --predictor PATH (a learned prior) needs "
                             "--shortlist M")
        if self.predictor and (self.greedy.self_term or self.greedy.first_window
                               or self.greedy.screen):
            raise InputError("--self-term, --first-window and --screen are for lazy greedy's "
                             "stale costs; with --predictor no step uses a stale cost")
        if self.predictor and self.method not in ("greedy", "predicted"):
            raise InputError(f"--predictor is for --method predicted or greedy, not "
                             f"{self.method!r}")
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


BATCHED_METHODS = ("surprisal", "entropy", "attention")  # one `score_batch` forward per batch


def column_scores(method: str, row: dict, layout: Layout) -> list[float] | None:
    """The row's own `method` column (a `score` output), when it was scored on this very
    sequence: same token ids, one score per CoT token. Else None: compute the scores."""
    scores = row.get(method)
    if not isinstance(scores, list) or len(scores) != len(layout.cot_ids):
        return None
    if row.get("input_ids") is not None and list(row["input_ids"]) != layout.input_ids:
        return None  # scored with another tokenizer or layout
    return [float(s) for s in scores]


def static_scores(method: str, model, tokenizer, layouts: list[Layout], opts: PruneOptions,
                  scorer) -> list[list[float]]:
    """Per-CoT-token scores of each chain whose ascending order is its deletion order."""
    if method == "loo":
        return [scorer.loo_scores(ChainState.from_layout(x)) for x in layouts]
    from cotprune.scoring.score import score_batch

    results = score_batch(model, tokenizer, layouts, [method], batch_tokens=opts.batch_tokens)
    return [r[method] for r in results]


# --- the stage -------------------------------------------------------------------------------

class GreedyCheckpoint:
    """Saves an unfinished greedy trajectory after every step, so --resume goes on from there."""

    def __init__(self, output: StageOutput, chain_id: str):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", chain_id)
        self.name = f"greedy-{safe}.json"
        self.path = output.state_path(self.name)
        self.output = output
        self.chain_id = chain_id

    def load(self) -> Trajectory | None:
        if not self.path.exists():
            return None
        data = json.loads(self.path.read_text())
        if data["id"] != self.chain_id:
            return None
        estimates = {int(i): j for i, j in data.get("estimates", {}).items()}
        own_nll = {int(i): j for i, j in data.get("own_nll", {}).items()}
        return Trajectory(data["order"], data["trace"], estimates, data.get("last_at"),
                          data.get("step", 0), own_nll)

    def save(self, traj: Trajectory) -> None:
        self.output.write_state(self.name, json.dumps(
            {"id": self.chain_id, "order": traj.order, "trace": traj.trace,
             "estimates": traj.estimates, "last_at": traj.last_at, "step": traj.step,
             "own_nll": traj.own_nll}))


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


def prune_options(opts: PruneOptions) -> dict:
    """The options that change what `prune` writes (batching does not), for the manifest."""
    from cotprune.core.stage import plain

    return {"method": opts.method, "keep": opts.keep, "objective": opts.objective,
            "greedy": plain(opts.greedy) if opts.method == "greedy" else None,
            "protect": opts.protect, "max_cot_tokens": opts.max_cot_tokens,
            "predictor": opts.predictor, "repredict_every": opts.repredict_every,
            # the same path may hold another fit later: the artifact's bytes decide
            "predictor_sha256": fingerprint(opts.predictor) if opts.predictor else None}


def run_prune(chains_path: Path, out: Path, model_opts: ModelOptions, opts: PruneOptions,
              run: RunOptions | None = None) -> dict:
    """The `prune` recipe: read, lay out, order, cut at each ratio, write. Returns the summary."""
    run = run or RunOptions(seed=opts.seed)
    predictor = None
    if opts.predictor:  # a bad predictor file fails before the model is loaded
        from cotprune.pruning.predictor import load_predictor

        predictor = load_predictor(opts.predictor, model_opts.model)
    stage = open_stage("prune", chains_path, out, model_opts, run, validate=validate_chains,
                       output_schema=lambda schema: extend_schema(schema, PRUNED_FIELDS),
                       options=prune_options(opts))
    model, tokenizer, chains, output = stage.model, stage.tokenizer, stage.rows, stage.output
    done = output.done_ids
    layouter = ChainLayout(tokenizer)
    ctx = PruneContext(opts, model, tokenizer, DeletionScorer(model, opts.objective,
                                                              opts.batch_tokens),
                       output, run.resume, predictor)
    if predictor is not None:
        predictor.check_model(model)

    skipped = cot_tokens = baseline_tokens = 0
    todo = []  # (index into chains, layout) of the chains this run prunes
    with Progress(len(chains), f"prune {opts.method}") as progress:
        for offset, chain in enumerate(chains):
            if chain["id"] in done:
                progress.skip()
                continue
            layout = layouter.layout(chain["question"], chain["cot"], chain["answer"])
            n = len(layout.cot_ids)
            if opts.max_cot_tokens is not None and n > opts.max_cot_tokens:
                log.warning("skipping %s: %d CoT tokens > --max-cot-tokens %d", chain["id"], n,
                            opts.max_cot_tokens)
                skipped += 1
                progress.skip()
                continue
            todo.append((offset, layout))
        for group in chain_groups(todo, opts):
            tokens_run = ctx.scorer.counts()["tokens_run"]
            orders = deletion_orders([chains[k] for k, _ in group], [x for _, x in group], ctx)
            for (offset, layout), (order, trajectory) in zip(group, orders, strict=True):
                rows = pruned_rows(chains[offset], layout, order, opts, tokenizer, model,
                                   trajectory)
                stage.write(rows, [offset] * len(rows))
                cot_tokens += len(layout.cot_ids)
                baseline_tokens += greedy_baseline_tokens(layout, opts)
                # the engine's decoder tokens: what a deletion method's speed is made of
                progress.advance(1, tokens=ctx.scorer.counts()["tokens_run"] - tokens_run)
                tokens_run = ctx.scorer.counts()["tokens_run"]
        seconds = progress.seconds
    written = output.finish()
    return {"command": "prune", "method": opts.method, "chains": len(chains) - skipped,
            "skipped": skipped, "rows": written, "cot_tokens": cot_tokens,
            **work_counts(ctx.scorer, opts, baseline_tokens),
            "seconds": round(seconds, 3), "output": str(out)}


def greedy_baseline_tokens(layout: Layout, opts: PruneOptions) -> int:
    """The published greedy algorithm's decoder tokens for this chain (0 for other methods)."""
    if opts.method != "greedy":
        return 0
    n = len(layout.cot_ids)
    return published_tokens(layout.cot_start, n, len(layout.input_ids) - layout.answer_start,
                            n - kept_count(min(opts.keep), n))


def work_counts(scorer: DeletionScorer, opts: PruneOptions, baseline_tokens: int) -> dict:
    """What this process ran, in counts that do not depend on the machine: decoder input tokens,
    forwards and vocabulary-projection rows of the deletion scorer (greedy and loo; null for
    the methods that do not use it), and for greedy the published algorithm's tokens for the
    same chains and ratio, with their ratio to ours."""
    if opts.method not in ("greedy", "loo"):
        return {"tokens_run": None, "forwards": None, "projection_rows": None}
    counts = scorer.counts()
    if opts.method == "greedy":
        counts["published_tokens"] = baseline_tokens
        counts["published_ratio"] = (round(baseline_tokens / counts["tokens_run"], 3)
                                     if counts["tokens_run"] else None)
    return counts


@dataclass
class PruneContext:
    """What ordering a chain's deletions needs besides the chain itself."""

    opts: PruneOptions
    model: object
    tokenizer: object
    scorer: DeletionScorer
    output: StageOutput
    resume: bool
    predictor: object = None


def chain_groups(todo: list[tuple[int, Layout]], opts: PruneOptions) -> list[list]:
    """The chains ordered together: batches within --batch-tokens for the methods one forward
    scores (surprisal, entropy, attention), --lockstep chains for greedy, else one chain at a
    time."""
    if opts.method == "greedy":
        return [todo[i:i + opts.lockstep] for i in range(0, len(todo), opts.lockstep)]
    if opts.method not in BATCHED_METHODS:
        return [[item] for item in todo]
    from cotprune.core.engine import plan_batches

    plan = plan_batches([len(x.input_ids) for _, x in todo], opts.batch_tokens)
    return [[todo[b] for b in sorted(batch)] for batch in plan]


def deletion_orders(rows: list[dict], layouts: list[Layout], ctx: PruneContext,
                    ) -> list[tuple[list[int], Trajectory | None]]:
    """(deletion order, greedy trajectory or None) of each chain of one group."""
    opts, tokenizer = ctx.opts, ctx.tokenizer
    protected = [protected_positions(tokenizer, x.cot_ids, opts.protect_pattern) for x in layouts]
    if opts.method == "greedy":
        chains = list(zip(rows, layouts, protected, strict=True))
        if len(chains) == 1:
            trajectories = [greedy_trajectory(*chains[0], ctx)]
        else:  # each chain's loop on a scorer of its own, on a lockstep view of the runner
            lockstep = Lockstep(ctx.scorer.runner)
            trajectories = lockstep.run([
                lambda runner, chain=chain: greedy_trajectory(
                    *chain, replace(ctx, scorer=ctx.scorer.with_runner(runner)))
                for chain in chains])
        return [(t.order, t) for t in trajectories]
    if opts.method == "random":
        return [(random_order(len(x.cot_ids), opts.seed, r["id"], p), None)
                for r, x, p in zip(rows, layouts, protected, strict=True)]
    if opts.method == "predicted":
        return [(ctx.predictor.order(ctx.model, tokenizer, x, p,
                                     repredict_every=opts.repredict_every), None)
                for x, p in zip(layouts, protected, strict=True)]
    scores = [column_scores(opts.method, r, x) for r, x in zip(rows, layouts, strict=True)]
    missing = [k for k, s in enumerate(scores) if s is None]
    if missing:
        computed = static_scores(opts.method, ctx.model, tokenizer,
                                 [layouts[k] for k in missing], opts, ctx.scorer)
        for k, s in zip(missing, computed, strict=True):
            scores[k] = s
    return [(order_by_scores(s, p), None) for s, p in zip(scores, protected, strict=True)]


def greedy_trajectory(row: dict, layout: Layout, protected: frozenset,
                      ctx: PruneContext) -> Trajectory:
    """Greedy deletion of one chain, checkpointed after every step (continued on --resume)."""
    n = len(layout.cot_ids)
    checkpoint = GreedyCheckpoint(ctx.output, row["id"])
    prior = None if ctx.predictor is None else PredictorPrior(ctx, layout)
    return greedy_prune(
        ctx.scorer, layout.input_ids[:layout.cot_start], layout.cot_ids,
        layout.input_ids[layout.answer_start:], n - kept_count(min(ctx.opts.keep), n),
        protected=protected, opts=ctx.opts.greedy,
        start=checkpoint.load() if ctx.resume else None, on_step=checkpoint.save, prior=prior)


class PredictorPrior:
    """A fitted predictor's scores of a chain's current CoT (greedy's learned prior): one
    feature forward of the pruned chain per call, counted into the scorer's work counters."""

    def __init__(self, ctx: PruneContext, layout: Layout):
        self.ctx = ctx
        self.prompt = layout.input_ids[:layout.cot_start]
        self.answer = layout.input_ids[layout.answer_start:layout.answer_end]

    def __call__(self, cot: list[int]) -> list[float]:
        from cotprune.pruning.predictor import chain_features

        current = join_segments(self.prompt, cot, self.answer)
        def forward():  # on the scorer's runner: with --lockstep, in the main thread
            work = self.ctx.scorer.work
            work.tokens_run += len(current.input_ids)
            work.forwards += 1
            work.projection_rows += len(cot)
            return chain_features(self.ctx.model, self.ctx.tokenizer, [current])

        return self.ctx.predictor.scores(self.ctx.scorer.runner.call(forward))[0]
