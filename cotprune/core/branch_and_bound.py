"""Branch and bound over candidate rows: greedy needs only the best of a step, not every J.

NLL terms are >= 0, so the NLL summed over a row's targets so far (or a lower bound on it,
`bounds.py`) bounds its J from below. Rows first run up to a checkpoint a few targets before
their end, then go on (lowest bound first) only while their bound is at most the m-th smallest
finished J; a row that cannot win keeps its bound as its value. The answer is cheap to predict
and a bad deletion shows early, so on GSM8K chains about a quarter of the suffix tokens never
run (BENCHMARKS.md).

These are plain functions over a dict of rows (`rows.ScoredRow`). Running a row further,
making its bounded targets exact and reading its J are passed in (`advance`, `resolve`,
`objective`), so the cuts can be followed, and tested, apart from the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from cotprune.core.rows import ScoredRow

# A candidate row stops CHECKPOINTS targets before its end and goes on only while its bound can
# still be among the best; the SEED_ROWS likeliest winners run to the end first, to give a tight
# bound. The last targets (the answer's number, the end of turn) carry most of the tail's NLL,
# so an early check keeps most rows: on a 45-token GSM8K chain 35 of 37 rows pass a check 16
# targets before the end, 6 pass one at 8. With packed candidates (the targets before the check
# cost no extra forward), all 23 exact steps of that chain, CPU seconds: 82.8 at (16,), 73.0 at
# (8,), 72.5 at (12, 8), 78.1 at (6,), 80.7 at (4,). A row is dropped only when its bound
# exceeds the best by more than BOUND_MARGIN nats, far above float32 log-softmax error (a
# "nonnegative" NLL term can come out as -1e-6), so a row that ties or wins is never dropped.
CHECKPOINTS = (8,)
SEED_ROWS = 4
BOUND_MARGIN = 1e-3

Rows = dict[int, ScoredRow]
Advance = Callable[[list[int], int | None], None]  # run rows cut at one target on to a stop
Resolve = Callable[[list[ScoredRow]], None]  # make the rows' bounded targets exact
Objective = Callable[[ScoredRow], float]  # J of a row, or a lower bound on it


def tail_sums(chain_nll: torch.Tensor) -> torch.Tensor:
    """t -> the undeleted chain's NLL from target t on: what a cut row is likely to pay for the
    targets it has not run (its target t is the chain's t + 1)."""
    return chain_nll.flip(0).cumsum(0).flip(0)


def checkpoint_stops(length: int, first: int, checkpoints: Sequence[int]) -> list[int]:
    """Targets at which rows of `length` tokens stop to check their bound, ascending: those
    after J's first target `first` (before it, every bound is 0)."""
    return sorted(length - c for c in set(checkpoints) if first < length - c)


def mth_smallest(values: list[float], m: int) -> float:
    """The m-th smallest of sorted `values`, or infinity when there are fewer."""
    return values[m - 1] if len(values) >= m else math.inf


def settle(rows: Rows, finished: list[int], best_of: int, bound_of: dict[int, float],
           resolve: Resolve, objective: Objective) -> list[float]:
    """Sorted exact J of the finished rows, after making exact those that may be among the
    `best_of` cheapest (lowest bound first); the others keep their bound in `bound_of`."""
    while True:
        exact = sorted(bound_of[k] for k in finished if rows[k].bounded is None)
        worst = mth_smallest(exact, best_of)
        todo = sorted((k for k in finished if rows[k].bounded is not None
                       and bound_of[k] <= worst + BOUND_MARGIN), key=bound_of.get)
        if not todo:
            return exact
        todo = todo[:best_of - len(exact)] if worst == math.inf else todo
        resolve([rows[k] for k in todo])
        bound_of.update({k: objective(rows[k]) for k in todo})


def seed_rows(waiting: list[int], bound_of: dict[int, float], likely: Callable[[int], float],
              best_of: int) -> list[int]:
    """The rows to run to their end first: the likeliest winners (`waiting` is sorted by
    likely J), and those whose bound already lies below the likely best J (they would most
    likely run on anyway, and riding along saves a forward)."""
    reach = likely(waiting[min(best_of, len(waiting)) - 1]) if waiting else math.inf
    first = max(best_of, SEED_ROWS)
    return waiting[:first] + [k for k in waiting[first:] if bound_of[k] <= reach]


def next_advance(rows: Rows, waiting: list[int], worst: float, stops: list[int],
                 likely: Callable[[int], float], batch_tokens: int,
                 seq_len: int) -> tuple[list[int], int | None]:
    """(rows, stop) of the next run: the likeliest of the rows cut earliest, as many as one
    batch holds, to the next checkpoint (to their end while no J is known to beat)."""
    g = min(rows[k].scored_to for k in waiting)
    later = [t for t in stops if t > g]
    stop = later[0] if later and worst < math.inf else None
    batch = sorted((k for k in waiting if rows[k].scored_to == g), key=lambda k: (likely(k), k))
    return batch[:max(1, batch_tokens // ((stop or seq_len) - g))], stop


def finish_rows(rows: Rows, candidates: list[int], best_of: int, stops: list[int],
                chain_nll: torch.Tensor, batch_tokens: int, seq_len: int, *,
                advance: Advance, resolve: Resolve, objective: Objective) -> None:
    """Run cut rows on while they can still be among the `best_of` cheapest candidates.

    A row's likely J is its bound plus what the undeleted chain (NLL `chain_nll`, `seq_len`
    tokens) pays for the same targets. The seed rows run to their end first; then each
    checkpoint in turn sends its surviving rows to the next one. Rows that cannot win keep
    their bound."""
    bound_of = {k: objective(rows[k]) for k in candidates}
    rest = tail_sums(chain_nll)

    def likely(k: int) -> float:
        return bound_of[k] + float(rest[rows[k].scored_to + 1])

    def run_on(batch: list[int], stop: int | None) -> None:
        advance(batch, stop)
        bound_of.update({k: objective(rows[k]) for k in batch})

    waiting = sorted((k for k in candidates if not rows[k].finished),
                     key=lambda k: (likely(k), k))
    seed = seed_rows(waiting, bound_of, likely, best_of)
    for g in sorted({rows[k].scored_to for k in seed}):
        run_on([k for k in seed if rows[k].scored_to == g], None)
    while True:
        done = settle(rows, [k for k in candidates if rows[k].finished], best_of, bound_of,
                      resolve, objective)
        worst = mth_smallest(done, best_of)
        waiting = [k for k in candidates
                   if not rows[k].finished and bound_of[k] <= worst + BOUND_MARGIN]
        if not waiting:
            return
        run_on(*next_advance(rows, waiting, worst, stops, likely, batch_tokens, seq_len))


def finish_likeliest(rows: Rows, candidates: list[int], chain_nll: torch.Tensor, *,
                     advance: Advance, resolve: Resolve, objective: Objective) -> dict[int, float]:
    """{k: J} of the candidates: exact for finished rows, an estimate for the others.

    Not a bound, an approximation (lazy greedy's --screen): every row has run a few targets
    past its deletion, exactly. A row's estimate is its NLL so far plus what the undeleted chain
    pays for the targets still to run. The likeliest row runs to its end, then the next, until
    the best finished J is no more than every unfinished row's estimate; those keep it."""
    rest = tail_sums(chain_nll)

    def value(k: int) -> float:
        row = rows[k]
        return objective(row) + (0.0 if row.finished else float(rest[row.scored_to + 1]))

    js = {k: value(k) for k in candidates}
    while True:
        best = min((js[k] for k in candidates if rows[k].finished), default=math.inf)
        waiting = [k for k in candidates if not rows[k].finished and js[k] < best]
        if not waiting:
            return js
        k = min(waiting, key=lambda k: (js[k], k))
        advance([k], None)
        resolve([rows[k]])
        js[k] = objective(rows[k])
