"""J of a chain with one CoT token deleted, for many candidates at once, reusing what is known.

Deleting the CoT token at sequence position q leaves everything before q unchanged: the keys and
values of positions < q and the NLL terms of targets < q are those of the undeleted sequence. So
each candidate only recomputes its suffix, on top of a cached prefix:

    sequence S (length L), prompt length p, candidate k at position q = p + k, S_k = S without q.
    Candidate k runs S_k[q-1:] as input on top of S's keys and values before q - 1: the first
    input predicts S_k[q], and targets before q are S's, already known, so only targets from q
    on are projected to the vocabulary. Candidates are packed as blocks, one after another in
    the lanes (rows) of one forward on S's KV (`RowRunner.run_packed`, `packing.py`): a 4D mask
    lets each block see S's positions before its own start and its own earlier tokens. Every
    forward first reads all weights, so one pack of many short blocks is much cheaper than a
    forward per candidate, and no token is run twice.

The first call on a chain computes S itself on the prompt's KV (computed once per chain). Every
scored row (S_k: its NLL per target and its KV) is kept until the next call, which greedy makes
on S' = S without the chosen token d:

- S' is S_d, already scored: its J, NLL and KV come from that row, so no row of S' is run;
- a candidate k < d of S' is S_k without d, which agrees with the kept row S_k up to position
  p + d - 1: it runs only from there, on that row's own KV (rows of different k batch together,
  since they all start at the same position). Candidates k >= d run on S' (S_d's KV) as above.

So a greedy step runs, for each candidate, only the tokens after both its own deletion and the
previous step's deletion. A second call on the same chain (lazy greedy rescoring more
candidates) runs the new candidates only. With `best_of=m` only the m best candidates need
their exact J: rows stop at checkpoints and go on only while they may win
(`branch_and_bound.py`), on cheap lower bounds of their NLL (`bounds.py`).

One step, top to bottom: `DeletionScorer.candidate_objectives` finds the chain's session,
`ChainSession.candidate_objectives` takes what the last call left (`_known`), runs S if it is
new (`_run_chain`), continues kept rows (`_continue_kept`), packs the other candidates
(`_packs`), and either cuts (`finish_rows`), finishes only the likeliest rows
(`finish_likeliest`, with `screen`) or makes every row exact. Row tasks
(`rows.py`) describe each run; `RowRunner` (`runner.py`) runs and scores them.

The plain reference (a full forward per candidate, as the published code does) lives in the
tests and bench/greedy.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial

import torch

from cotprune.core.branch_and_bound import (
    CHECKPOINTS,
    checkpoint_stops,
    finish_likeliest,
    finish_rows,
    tail_sums,
)
from cotprune.core.packing import lanes
from cotprune.core.rows import (
    KV,
    ChainState,
    ScoredRow,
    candidate_task,
    chain_task,
    continued_task,
    deleted_index,
    first_difference,
    first_of_run,
    kv_bytes,
    resumed_task,
)
from cotprune.core.runner import KvBudget, RowRunner, WorkCounts

__all__ = ["CHECKPOINTS", "ChainSession", "ChainState", "DeletionScorer"]  # what callers import

# Tokens per packed forward (at most; the scorer's token budget caps it too). Every forward
# first reads all weights (SmolLM2 on the CPU: ~80 ms for a 2-token forward against ~2.5 ms per
# token in a large one), so packs should be large. Before lanes, first 8 exact steps of a
# 45-token GSM8K chain, CPU seconds: 41.8 at 256, 39.9 at 512, 39.8 at 1024; with lanes, all 23
# steps (two runs each): 60.8 / 56.8 at 512, 57.8 / 62.8 at 1024.
PACK_TOKENS = 512
# Tokens per lane (row) of a packed forward: each packed token attends to its lane's blocks
# (masked), so lanes keep that quadratic part small. A 507-token pack on a 100-token past, CPU:
# 3.40 ms/token in one lane, 2.85 in 4 lanes of 126, 2.84 in 8 of 63. All 23 exact steps of a
# 45-token GSM8K chain (two runs each): 57.3 / 55.9 s in lanes of 128, 58.0 / 59.5 in one.
LANE_TOKENS = 128

# Kept rows hold O(n^2) keys and values (n rows of about n tokens). Rows past this many bytes of
# KV are kept without it: they still give their J, but the next step recomputes them in full.
KEEP_KV_BYTES = 4 * 2**30

# The bound vocabulary of a chain: its own tokens and the BOUND_VOCAB_TOP likeliest tokens at
# each target of the undeleted chain. On a 45-token GSM8K chain (~590 tokens at 32), as many rows
# pass the checkpoint as with exact NLL at steps 0 and 16 and one more at step 8; at 8 (~160
# tokens) one to three more.
BOUND_VOCAB_TOP = 32

Rows = dict[int, ScoredRow]


class ChainSession:
    """What one chain's greedy run knows between calls: the chain S's row, the rows S_k of the
    last call, and S's bound vocabulary. Every call is on S or on S with tokens deleted."""

    def __init__(self, runner: RowRunner, objective: str, batch_tokens: int,
                 checkpoints: Sequence[int], prompt_kv: Callable[[list[int]], KV]):
        self.runner = runner
        self.objective = objective
        self.batch_tokens = batch_tokens
        self.checkpoints = tuple(checkpoints)
        self.prompt_kv = prompt_kv
        self.chain: ScoredRow | None = None
        self.rows: Rows = {}
        # sorted token ids whose logits bound a cut row's NLL (None: no bounds, every target
        # projected in full)
        self.bound_vocab: torch.Tensor | None = None

    def leads_to(self, state: ChainState) -> bool:
        """Whether `state` is this session's chain, or it with tokens deleted."""
        if self.chain is None:
            return True
        before, p = self.chain.ids, len(state.prompt)
        return (before == state.ids or deleted_index(before, state.ids, p) is not None
                or first_difference(before, state.ids, p) is not None)

    @torch.no_grad()
    def candidate_objectives(self, state: ChainState, candidates: Sequence[int] | None = None,
                             *, best_of: int | None = None,
                             screen: int = 0) -> tuple[float, dict[int, float]]:
        """(J of the current chain, {k: J with CoT token k deleted}); see
        `DeletionScorer.candidate_objectives`."""
        asked = list(range(len(state.cot)) if candidates is None else candidates)
        # deleting any token of a run of equal tokens gives the same sequence: score the run's
        # first only, so equal J are exactly equal and ties go to the lower index
        first_of = {k: first_of_run(state.cot, k) for k in asked}
        candidates = sorted(set(first_of.values()))
        chain, kept, d = self._known(state)
        # Rows of the last call carry over only when it scored this very state. When `chain` is
        # the last call's S_d (this state, one deletion on), its rows S'_k belong to the state
        # before: carried over, they were later continued as if they were this state's, and a
        # lazy greedy (--shortlist) step got wrong J for the candidates it did not rescore.
        rows = dict(self.rows) if self._scored(state) else {}
        rest = [k for k in candidates if k not in kept]
        budget = KvBudget(KEEP_KV_BYTES - sum(kv_bytes(row) for row in rows.values()))
        if chain is None:  # S first, on the prompt: every candidate's prefix is S's
            chain = self._run_chain(state, budget)
        p, length = len(state.prompt), len(state.ids) - 1
        # rows stop at their first checkpoint, or with `screen` that many targets after their start
        stops = self._stops(state) if best_of else []
        rows.update(self._continue_kept(state, kept, d, [k for k in candidates if k in kept],
                                        [p + d - 1 + screen] if screen else stops, budget))
        if budget.left <= 0:  # a cut row holds its KV until it goes on: cut none
            ends = dict.fromkeys(rest, length)
        elif screen:
            ends = {k: min(p + k + screen, length) for k in rest}
        else:
            ends = {k: next((t for t in stops if t > p + k), length) for k in rest}
        for packed in self._packs(state, chain, rest, ends, budget):
            rows.update(packed)
        objective = partial(self._objective, state)
        advance = partial(self._advance, state, rows, budget=budget)
        if screen:  # the windows exact, then the likeliest rows on to their end
            self.runner.resolve([rows[k] for k in candidates])
            js = finish_likeliest(rows, candidates, chain.nll, advance=advance,
                                  resolve=self.runner.resolve, objective=objective)
        else:
            if best_of:
                finish_rows(rows, candidates, best_of, stops, chain.nll, self.batch_tokens,
                            len(state.ids), advance=advance, resolve=self.runner.resolve,
                            objective=objective)
            else:  # every J asked for is wanted exactly (rows may come from a bounded call)
                self.runner.resolve([rows[k] for k in candidates])
            js = {k: objective(rows[k]) for k in candidates}
        self.chain, self.rows = chain, rows
        return objective(chain), {k: js[first_of[k]] for k in asked}

    def cot_nll(self, state: ChainState) -> list[float] | None:
        """NLL of each CoT token of `state` as a target of its chain, from rows this session
        holds (the chain, or the last call's finished row that is `state`), without running
        anything or changing what carries over; None when it holds no such row."""
        if self.chain is None:
            return None
        held = [self.chain, *self.rows.values()]
        row = next((r for r in held if r.finished and r.ids == state.ids), None)
        if row is None:
            return None
        self.runner.resolve([row])
        p = len(state.prompt)
        return row.nll[p:p + len(state.cot)].tolist()

    def _scored(self, state: ChainState) -> bool:
        return self.chain is not None and self.chain.ids == state.ids

    def _known(self, state: ChainState) -> tuple[ScoredRow | None, Rows, int]:
        """(S's row if already scored, kept rows S_k that candidates k < d can continue, d).

        d is the first CoT index where S differs from the last call's chain. After one
        deletion S is a scored row; after several (per_step > 1) S itself is run anew, but the
        kept rows of candidates before the first deletion still continue from there."""
        chain, rows = self.chain, self.rows
        if chain is None:
            return None, {}, 0
        if chain.ids == state.ids:
            return chain, {}, 0
        p = len(state.prompt)
        d = deleted_index(chain.ids, state.ids, p)
        # rows are keyed by the first token of a run of equal tokens, d is the run's last
        won = None if d is None else rows.get(first_of_run(chain.ids[p:], d))
        if won is not None and won.kv is not None and won.finished:
            self.runner.resolve([won])  # exact already when it won the last call; not if it lost
            new_chain = won
        else:
            d = first_difference(chain.ids, state.ids, p)
            if d is None:
                return None, {}, 0
            new_chain = None
        g = p + d - 1  # where candidates k < d continue (_continue_kept)
        return new_chain, {k: row for k, row in rows.items()
                           if k < d and row.kv is not None and row.scored_to >= g}, d

    def _run_chain(self, state: ChainState, budget: KvBudget) -> ScoredRow:
        """S on the prompt's KV; its likeliest tokens become the bound vocabulary."""
        task = chain_task(state, self.objective, self.prompt_kv(state.prompt), self.runner.device)
        chain, self.bound_vocab = self.runner.run_chain(task, budget, BOUND_VOCAB_TOP)
        return chain

    def _stops(self, state: ChainState) -> list[int]:
        length = len(state.ids) - 1  # candidates are one token shorter
        return checkpoint_stops(length, state.objective_start(self.objective, length),
                                self.checkpoints)

    def _continue_kept(self, state: ChainState, kept: Rows, d: int, keys: list[int],
                       stops: list[int], budget: KvBudget) -> Rows:
        """Candidates k < d: S_k without d equals the kept S_k before position p + d - 1."""
        start, out = len(state.prompt) + d - 1, {}
        for batch in self._batches(keys, start, len(state.ids)):
            # a cut row holds its KV until its tail runs: cut only while the KV budget lasts
            cut = next((t for t in stops if t > start), None) if budget.left > 0 else None
            tasks = [continued_task(state, self.objective, kept[k], k, start, cut)
                     for k in batch]
            out.update(zip(batch, self.runner.run_batch(tasks, budget, self.bound_vocab)))
        return out

    def _packs(self, state: ChainState, chain: ScoredRow, keys: list[int], ends: dict[int, int],
               budget: KvBudget) -> Iterator[Rows]:
        """The rows of candidates k, each run from its deletion to target ends[k] on S's KV,
        one packed forward at a time."""
        p = len(state.prompt)
        pack_tokens = min(PACK_TOKENS, self.batch_tokens)
        width = min(LANE_TOKENS, pack_tokens)
        in_lanes = lanes(keys, {k: ends[k] - p - k for k in keys}, width)
        per_pack = max(1, pack_tokens // width)
        for first in range(0, len(in_lanes), per_pack):
            pack = in_lanes[first:first + per_pack]
            tasks = [[candidate_task(state, self.objective, chain, k, ends[k]) for k in lane]
                     for lane in pack]
            yield dict(zip([k for lane in pack for k in lane],
                           self.runner.run_packed(tasks, budget, self.bound_vocab)))

    @torch.no_grad()
    def window_estimates(self, state: ChainState, window: int) -> tuple[float, dict[int, float]]:
        """(J of the chain, {k: an estimate of J with CoT token k deleted}) for every k.

        Each candidate runs only the `window` targets after its deletion; beyond them it is
        taken to pay what the chain itself pays there (branch and bound's likely J). Lazy
        greedy's first step ranks candidates by these at about n * window tokens instead of
        n^2 / 2, and gives the ones it rescores their exact J. No row is kept."""
        first_of = {k: first_of_run(state.cot, k) for k in range(len(state.cot))}
        candidates = sorted(set(first_of.values()))
        chain = self._known(state)[0] or self._run_chain(state, KvBudget(KEEP_KV_BYTES))
        p, length = len(state.prompt), len(state.ids) - 1
        ends = {k: min(p + k + window, length) for k in candidates}
        tail = tail_sums(chain.nll).tolist() + [0.0]
        estimates = {}
        for rows in self._packs(state, chain, candidates, ends, KvBudget(0, keep_cut=False)):
            self.runner.resolve(list(rows.values()))
            estimates.update({k: self._objective(state, row) + tail[row.scored_to + 1]
                              for k, row in rows.items()})
        self.chain, self.rows = chain, {}
        return self._objective(state, chain), {k: estimates[first_of[k]] for k in first_of}

    def _advance(self, state: ChainState, rows: Rows, keys: list[int], stop: int | None, *,
                 budget: KvBudget) -> None:
        """Run rows cut at the same target on to `stop` (None: to their end)."""
        start = rows[keys[0]].scored_to
        for batch in self._batches(keys, start, stop or len(state.ids)):
            tasks = [resumed_task(state, self.objective, rows[k], k, rows[k].ids, start, stop)
                     for k in batch]
            rows.update(zip(batch, self.runner.run_batch(tasks, budget, self.bound_vocab)))

    def _batches(self, keys: list[int], start: int, end: int) -> list[list[int]]:
        """Rows that run positions start - 1 .. end - 2 on their own KV, batched by the token
        budget (which counts tokens run: the rows' KV is held already, within KEEP_KV_BYTES)."""
        per_batch = max(1, self.batch_tokens // max(1, end - start))
        return [keys[s:s + per_batch] for s in range(0, len(keys), per_batch)]

    def _objective(self, state: ChainState, row: ScoredRow) -> float:
        """J of a row (a lower bound on it where the row is not finished)."""
        return float(row.nll[state.objective_start(self.objective, len(row.ids)):].sum())


class DeletionScorer:
    """Scores single-token deletions of chains with a causal LM (no gradients): one session
    per chain, one runner and one set of work counters for all of them."""

    def __init__(self, model, objective: str, batch_tokens: int,
                 checkpoints: Sequence[int] = CHECKPOINTS, runner: RowRunner | None = None):
        self.model = model
        self.objective = objective
        self.batch_tokens = batch_tokens
        self.checkpoints = tuple(checkpoints)
        self.runner = runner or RowRunner(model, WorkCounts())
        self.work = self.runner.work
        self.session: ChainSession | None = None
        self._prompt_key: tuple | None = None
        self._prompt_kv: KV | None = None

    def prompt_kv(self, prompt: list[int]) -> KV:
        """KV of the prompt without its last token: computed once per prompt, never again."""
        if self._prompt_key != tuple(prompt):
            self._prompt_kv = self.runner.prompt_kv(prompt)
            self._prompt_key = tuple(prompt)
        return self._prompt_kv

    def with_runner(self, runner) -> DeletionScorer:
        """A scorer like this one, with sessions of its own, on `runner` (a lockstep view of
        this scorer's runner: `lockstep.py`)."""
        return DeletionScorer(self.model, self.objective, self.batch_tokens, self.checkpoints,
                              runner)

    def session_for(self, state: ChainState) -> ChainSession:
        """The session of `state`'s chain: the current one, or a new one for another chain."""
        if self.session is None or not self.session.leads_to(state):
            self.session = ChainSession(self.runner, self.objective, self.batch_tokens,
                                        self.checkpoints, self.prompt_kv)
        return self.session

    def candidate_objectives(self, state: ChainState, candidates: Sequence[int] | None = None,
                             *, best_of: int | None = None,
                             screen: int = 0) -> tuple[float, dict[int, float]]:
        """(J of the current chain, {k: J with CoT token k deleted}) for the candidates.

        With `best_of=m`, a candidate that cannot be among the m cheapest may get a lower bound
        on its J, above the m-th smallest J, instead of its J: all that greedy needs.
        With `screen=W` (an approximation), every candidate runs W targets past its deletion and
        only the likeliest run on to their end (`finish_likeliest`): the cheapest J returned is
        exact, the others may be estimates.
        """
        return self.session_for(state).candidate_objectives(state, candidates, best_of=best_of,
                                                            screen=screen)

    def counts(self) -> dict[str, int]:
        """The work counters, for a summary: {tokens_run, forwards, projection_rows, bound_rows}."""
        return self.work.as_dict()

    def window_estimates(self, state: ChainState, window: int) -> tuple[float, dict[int, float]]:
        """(J of the chain, {k: estimated J without k}) from `window` targets per candidate
        (`ChainSession.window_estimates`)."""
        return self.session_for(state).window_estimates(state, window)

    def cot_nll(self, state: ChainState) -> list[float] | None:
        """NLL of each CoT token of `state`, if its session holds that chain's row (it does
        after a call on `state`, or on the chain one deletion before it); else None."""
        return self.session_for(state).cot_nll(state)

    def chain_objective(self, state: ChainState) -> float:
        """J of the current chain (the first group with no candidates)."""
        return self.candidate_objectives(state, [])[0]

    def loo_scores(self, state: ChainState) -> list[float]:
        """loo[t] = J(chain without CoT token t) - J(chain), for every CoT token."""
        base_j, js = self.candidate_objectives(state)
        return [js[k] - base_j for k in range(len(state.cot))]
