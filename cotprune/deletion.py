"""J of a chain with one CoT token deleted, for many candidates at once, reusing what is known.

Deleting the CoT token at sequence position q leaves everything before q unchanged: the keys and
values of positions < q and the NLL terms of targets < q are those of the undeleted sequence. So
each candidate only recomputes its suffix, on top of a cached prefix:

    sequence S (length L), prompt length p, candidate k at position q = p + k, S_k = S without q.
    A group of candidates k >= a shares the prefix S[:g-1] (g = p + a) as a KV cache and runs
    S_k[g-1:] as input: every row has the same length, so the group is one batched forward.
    Row j of the output predicts S_k[g + j]; targets before q are S's, already known, so
    only targets from q on are projected to the vocabulary. Groups are chosen to minimise
    tokens run plus a fixed cost per forward (`group_candidates`).

The first call on a chain computes S itself as an extra row of its first group (which sits on
the prompt's KV, computed once per chain). Every scored row (S_k: its NLL per target and its KV)
is kept until the next call, which greedy makes on S' = S without the chosen token d:

- S' is S_d, already scored: its J, NLL and KV come from that row, so no row of S' is run;
- a candidate k < d of S' is S_k without d, which agrees with the kept row S_k up to position
  p + d - 1: it runs only from there, on that row's own KV (rows of different k batch together,
  since they all start at the same position). Candidates k >= d run on the prefix of S' as above.

So a greedy step runs, for each candidate, only the tokens after both its own deletion and the
previous step's deletion. A second call on the same chain (lazy greedy rescoring more
candidates) runs the new candidates only.

Greedy needs only the best candidates of a step, not every J, so with `best_of=m` the scorer
branches and bounds: NLL terms are >= 0, so the NLL summed over a row's targets so far bounds
its J from below. Rows first run up to a checkpoint a few targets before their end, then go on
(lowest bound first) only while their bound is at most the m-th smallest finished J; a dropped
row keeps its bound as its value. The answer is cheap to predict and a bad deletion shows early,
so on GSM8K chains about a quarter of the suffix tokens never run (BENCHMARKS.md).

The plain reference (a full forward per candidate, as the published code does) lives in the
tests and bench/greedy.py.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cotprune.engine import decoder_and_head, logprob_entropy

# A forward costs about this many tokens' worth of time before its first token: every weight is
# read once per forward, whatever its size (SmolLM2 on the CPU: ~80 ms for a 2-token forward,
# ~3 ms per token in a large one). Candidate groups and row jobs are sized against it.
FORWARD_COST_TOKENS = 24

# Kept rows hold O(n^2) keys and values (n rows of about n tokens). Rows past this many bytes of
# KV are kept without it: they still give their J, but the next step recomputes them in full.
KEEP_KV_BYTES = 4 * 2**30

# Branch and bound (`best_of`): a candidate row stops CHECKPOINTS targets before its end and
# goes on only while its bound can still be among the best; the SEED_ROWS likeliest winners run
# to the end first, to give a tight bound. On the CPU with SmolLM2 (first 3 steps of a 90-token
# GSM8K chain): 8,400 tokens run against 11,328 without bounds, 24% less CPU time; checks at
# (32, 16, 8) ran 7,778 tokens but in more, smaller forwards, and were no faster. A row is
# dropped only when its bound exceeds the best by more than BOUND_MARGIN nats, far above
# float32 log-softmax error (a "nonnegative" NLL term can come out as -1e-6), so a row that
# ties or wins is never dropped.
CHECKPOINTS = (16,)
SEED_ROWS = 4
BOUND_MARGIN = 1e-3


@dataclass
class ChainState:
    """The current (partly pruned) chain: prompt ids, current CoT ids, answer ids."""

    prompt: list[int]
    cot: list[int]
    answer: list[int]

    @staticmethod
    def from_layout(layout) -> ChainState:
        return ChainState(layout.input_ids[:layout.cot_start], layout.cot_ids,
                          layout.input_ids[layout.answer_start:layout.answer_end])

    @property
    def ids(self) -> list[int]:
        return [*self.prompt, *self.cot, *self.answer]

    def objective_start(self, objective: str, seq_len: int | None = None) -> int:
        """First target position of J in the current sequence, or in one of `seq_len` tokens
        made of this prompt, a (shortened) CoT and this answer."""
        if objective == "reason-answer":
            return len(self.prompt)
        return (len(self.ids) if seq_len is None else seq_len) - len(self.answer)


def group_candidates(candidates: Sequence[int], cot_start: int, length: int,
                     batch_tokens: int, *, with_base: bool = True) -> list[list[int]]:
    """Split CoT candidate indices into groups that share a prefix, at the least cost.

    A group starting at candidate a runs rows of (length - cot_start - a) tokens, one per member
    plus, with `with_base`, the undeleted chain in the first group (which then starts at a = 0):
    a member k recomputes (k - a) tokens its own row did not need. Cost of a group: its tokens
    plus FORWARD_COST_TOKENS; a group's rows x length stays within the token budget (or it has
    one member). The cheapest split of the sorted candidates is found by dynamic programming.
    """
    ordered = sorted(candidates)
    if not ordered:
        return [[]]
    n = len(ordered)
    best = [0.0] + [float("inf")] * n  # best[i]: cheapest split of ordered[:i]
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(i - 1, -1, -1):
            base = with_base and j == 0
            rows = i - j + base
            if rows * length > batch_tokens and i - j > 1:
                break
            start = 0 if base else ordered[j]
            cost = best[j] + rows * (length - cot_start - start) + FORWARD_COST_TOKENS
            if cost < best[i]:
                best[i], cut[i] = cost, j
    groups, i = [], n
    while i > 0:
        groups.append(ordered[cut[i]:i])
        i = cut[i]
    return groups[::-1]


@dataclass
class ScoredRow:
    """A scored sequence: NLL per target position (0 where J never needs it) and its KV."""

    ids: list[int]
    nll: torch.Tensor  # float64 [len(ids)]; nll[t] = -log p(ids[t] | ids[:t]) for t < scored_to
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None  # per layer, [1, heads, >= scored_to - 1,
    # dim]; None when it was not kept (KEEP_KV_BYTES)
    scored_to: int  # len(ids), or the checkpoint where the row stopped (branch and bound)

    @property
    def finished(self) -> bool:
        return self.scored_to == len(self.ids)


@dataclass
class Job:
    """One batched forward: rows of equal length whose targets before `g` are known."""

    keys: list[int | None]  # candidate per row; None: the undeleted chain
    seqs: list[list[int]]  # the whole sequence of each row
    past: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [rows, heads, g - 1, head_dim]
    known_nll: list[torch.Tensor]  # per row, its NLL of targets already known (>= g of them)
    g: int


def deleted_index(before: list[int], after: list[int], cot_start: int) -> int | None:
    """CoT index d with after == before without position cot_start + d, else None."""
    if len(before) != len(after) + 1 or before[:cot_start] != after[:cot_start]:
        return None
    t = cot_start
    while t < len(after) and before[t] == after[t]:
        t += 1
    return t - cot_start if before[t + 1:] == after[t:] else None


class DeletionScorer:
    """Scores single-token deletions of one chain with a causal LM (no gradients)."""

    def __init__(self, model, objective: str, batch_tokens: int,
                 checkpoints: Sequence[int] = CHECKPOINTS):
        self.model = model
        self.objective = objective
        self.batch_tokens = batch_tokens
        self.checkpoints = tuple(checkpoints)
        self.decoder, self.head = decoder_and_head(model)
        # transformers 5.x renamed the decoder's `past_key_values` argument and output to `cache`
        params = inspect.signature(self.decoder.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.device = next(model.parameters()).device
        self._prompt_key: tuple | None = None
        self._prompt_kv = None
        # rows of the last call: the chain S, and S_k per scored candidate k
        self._chain: ScoredRow | None = None
        self._rows: dict[int, ScoredRow] = {}
        self.tokens_run = 0  # input tokens of all forwards so far (for benchmarks and tests)
        self._kv_left = KEEP_KV_BYTES  # bytes of row KV the current call may still keep

    def _run(self, ids: torch.Tensor, past, start_pos: int):
        """Decoder forward of `ids` [B, T] at positions start_pos.. on top of `past` (or None)."""
        from transformers import DynamicCache

        b, t = ids.shape
        self.tokens_run += b * t
        cache = DynamicCache(ddp_cache_data=past, config=self.model.config)
        positions = torch.arange(start_pos, start_pos + t, device=self.device).expand(b, t)
        mask = torch.ones((b, start_pos + t), dtype=torch.long, device=self.device)
        out = self.decoder(input_ids=ids, position_ids=positions, attention_mask=mask,
                           use_cache=True, **{self._cache_arg: cache})
        return out.last_hidden_state, out[self._cache_arg]

    @torch.no_grad()
    def prompt_cache(self, prompt: list[int]):
        """KV of the prompt without its last token: computed once per chain, never again."""
        key = tuple(prompt)
        if self._prompt_key != key:
            ids = torch.tensor([prompt[:-1]], device=self.device)
            _, cache = self._run(ids, None, 0)
            self._prompt_key = key
            self._prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]
        return self._prompt_kv

    def _known(self, state: ChainState) -> tuple[ScoredRow | None, dict[int, ScoredRow], int]:
        """(S's row if already scored, kept rows S_k that candidates k < d can continue, d)."""
        chain, rows = self._chain, self._rows
        if chain is None:
            return None, {}, 0
        if chain.ids == state.ids:
            return chain, {}, 0
        d = deleted_index(chain.ids, state.ids, len(state.prompt))
        if d is None or d not in rows or rows[d].kv is None or not rows[d].finished:
            return None, {}, 0
        g = len(state.prompt) + d - 1  # where candidates k < d continue (_continued_jobs)
        return rows[d], {k: row for k, row in rows.items()
                         if k < d and row.kv is not None and row.scored_to >= g}, d

    def _continued_jobs(self, state: ChainState, kept: dict[int, ScoredRow], d: int,
                        keys: list[int]) -> list[Job]:
        """Candidates k < d: S_k without d equals the kept S_k before position p + d - 1."""
        ids, g = state.ids, len(state.prompt) + d - 1
        # X = S_k[:g] + S'[g + 1:]; its targets before g are S_k's
        return self._row_jobs(kept, keys, [kept[k].ids[:g] + ids[g + 1:] for k in keys], g,
                              len(ids))

    def _row_jobs(self, rows: dict[int, ScoredRow], keys: list[int], seqs: list[list[int]],
                  g: int, end: int) -> list[Job]:
        """Rows that run positions g - 1 .. end - 2 on their own KV, batched by the token budget
        (which counts tokens run: the rows' KV is held already, within KEEP_KV_BYTES)."""
        per_job = max(1, self.batch_tokens // max(1, end - g))
        return [Job(keys[s:s + per_job], seqs[s:s + per_job],
                    _stack_kv([rows[k].kv for k in keys[s:s + per_job]], g - 1),
                    [rows[k].nll[:g] for k in keys[s:s + per_job]], g)
                for s in range(0, len(keys), per_job)]

    def _group_job(self, state: ChainState, chain: ScoredRow | None, group: list[int]) -> Job:
        """Candidates k >= a on S's prefix; without `chain`, S itself rides along on the prompt."""
        ids, p = state.ids, len(state.prompt)
        keys: list[int | None] = list(group) if chain is not None else [None, *group]
        g = p + group[0] if chain is not None else p
        if chain is None:
            past = self.prompt_cache(state.prompt)
            known = [torch.zeros(p, dtype=torch.float64, device=self.device)] * len(keys)
        else:  # S_k's targets before p + k are S's
            past = [(key[:, :, :g - 1], val[:, :, :g - 1]) for key, val in chain.kv]
            known = [chain.nll[:p + k] for k in keys]
        seqs = [ids if k is None else ids[:p + k] + ids[p + k + 1:] for k in keys]
        b = len(keys)
        return Job(keys, seqs, [(key.expand(b, -1, -1, -1), val.expand(b, -1, -1, -1))
                                for key, val in past], known, g)

    def _run_job(self, job: Job, state: ChainState, stop: int | None = None) -> list[ScoredRow]:
        """Forward a job's rows and score every target from g on (those J can need), up to
        `stop` (exclusive; None: to the end of each row).

        The rows keep their KV while KEEP_KV_BYTES allows (`self._kv_left`); the undeleted
        chain's row always does, since later groups of the same call need it, and so do rows
        cut at `stop`, which may go on later.
        """
        g, lengths = job.g, [len(seq) for seq in job.seqs]
        end = max(lengths) if stop is None else stop
        # rows are as long as the longest minus its last token (which predicts nothing); the
        # undeleted chain is one token longer than its candidates, which then run their last
        ids = torch.tensor([seq[g - 1:end - 1] for seq in job.seqs], device=self.device)
        hidden, cache = self._run(ids, job.past, g - 1)
        nll = torch.zeros((len(lengths), max(lengths)), dtype=torch.float64, device=self.device)
        # project to the vocabulary only where J needs a target not known yet (a group member
        # k recomputes S's tokens before its deletion: their NLL is S's)
        spans = []
        for r, (known, length) in enumerate(zip(job.known_nll, lengths)):
            nll[r, :len(known)] = known
            first = max(len(known), state.objective_start(self.objective, length))
            spans.append((first, min(length, end)))
        hs = [hidden[r, first - g:last - g] for r, (first, last) in enumerate(spans)]
        targets = [t for seq, (first, last) in zip(job.seqs, spans) for t in seq[first:last]]
        if targets:
            logp, _ = logprob_entropy(torch.cat(hs), self.head,
                                      torch.tensor(targets, device=self.device),
                                      with_entropy=False)
            for r, part in enumerate(torch.split(-logp.double(), [len(h) for h in hs])):
                nll[r, spans[r][0]:spans[r][0] + len(part)] = part
        size = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
        keep = size <= self._kv_left or job.keys[0] is None or stop is not None
        self._kv_left -= size if keep else 0
        return [ScoredRow(seq, nll[r, :len(seq)],
                          [(layer.keys[r:r + 1], layer.values[r:r + 1]) for layer in cache.layers]
                          if keep else None, min(len(seq), end))
                for r, seq in enumerate(job.seqs)]

    def _checkpoints(self, state: ChainState) -> list[int]:
        """Targets at which candidate rows stop to check their bound, ascending (those after
        the start of J: before it, every bound is 0)."""
        length = len(state.ids) - 1
        first = state.objective_start(self.objective, length)
        return sorted(length - c for c in set(self.checkpoints) if first < length - c)

    def _finish_rows(self, state: ChainState, chain: ScoredRow, rows: dict[int, ScoredRow],
                     candidates: list[int], best_of: int, stops: list[int]) -> None:
        """Run cut rows on while they can still be among the `best_of` cheapest candidates.

        A row's likely J is its bound plus what the undeleted chain pays for the same targets.
        The likeliest rows run to the end first, to find a tight bound to beat; then each
        checkpoint in turn sends its surviving rows to the next one. Rows that cannot win keep
        their bound."""
        bound_of = {k: self._objective(state, rows[k]) for k in candidates}
        rest = chain.nll.flip(0).cumsum(0).flip(0)  # rest[t]: the chain's NLL from target t on

        def likely(k: int) -> float:
            return bound_of[k] + float(rest[rows[k].scored_to + 1])

        def advance(batch: list[int], stop: int | None) -> None:
            """Run rows cut at the same target on to `stop` (None: to their end)."""
            g = rows[batch[0]].scored_to
            for job in self._row_jobs(rows, batch, [rows[k].ids for k in batch], g,
                                      stop or len(state.ids)):
                rows.update(zip(job.keys, self._run_job(job, state, stop)))
            bound_of.update({k: self._objective(state, rows[k]) for k in batch})

        waiting = [k for k in candidates if not rows[k].finished]
        seed = sorted(waiting, key=lambda k: (likely(k), k))[:max(best_of, SEED_ROWS)]
        for g in sorted({rows[k].scored_to for k in seed}):
            advance([k for k in seed if rows[k].scored_to == g], None)
        while True:
            done = sorted(bound_of[k] for k in candidates if rows[k].finished)
            worst = done[best_of - 1] if len(done) >= best_of else math.inf
            waiting = [k for k in candidates
                       if not rows[k].finished and bound_of[k] <= worst + BOUND_MARGIN]
            if not waiting:
                return
            g = min(rows[k].scored_to for k in waiting)
            later = [t for t in stops if t > g]
            stop = later[0] if later and worst < math.inf else None
            batch = sorted((k for k in waiting if rows[k].scored_to == g),
                           key=lambda k: (likely(k), k))
            advance(batch[:max(1, self.batch_tokens // ((stop or len(state.ids)) - g))], stop)

    def _objective(self, state: ChainState, row: ScoredRow) -> float:
        """J of a row (a lower bound on it where the row is not finished)."""
        return float(row.nll[state.objective_start(self.objective, len(row.ids)):].sum())

    @torch.no_grad()
    def candidate_objectives(self, state: ChainState, candidates: Sequence[int] | None = None,
                             *, best_of: int | None = None) -> tuple[float, dict[int, float]]:
        """(J of the current chain, {k: J with CoT token k deleted}) for the candidates.

        With `best_of=m`, a candidate that cannot be among the m cheapest may get a lower bound
        on its J, above the m-th smallest J, instead of its J: all that greedy needs.
        """
        asked = list(range(len(state.cot)) if candidates is None else candidates)
        # deleting any token of a run of equal tokens gives the same sequence: score the run's
        # first only, so equal J are exactly equal and ties go to the lower index
        first_of = {k: _first_of_run(state.cot, k) for k in asked}
        candidates = sorted(set(first_of.values()))
        chain, kept, d = self._known(state)
        rows = dict(self._rows) if chain is not None and chain.ids == state.ids else {}
        rest = [k for k in candidates if k not in kept]
        self._kv_left = KEEP_KV_BYTES - sum(_kv_bytes(row) for row in rows.values())
        groups = group_candidates(rest, len(state.prompt), len(state.ids), self.batch_tokens,
                                  with_base=chain is None)
        if chain is None:  # S rides along with the first group; later groups need its KV
            job = self._group_job(state, None, groups.pop(0))
            chain, *scored = self._run_job(job, state)
            rows.update(zip(job.keys[1:], scored))
        jobs = self._continued_jobs(state, kept, d, [k for k in candidates if k in kept])
        jobs += [self._group_job(state, chain, group) for group in groups if group]
        stops = self._checkpoints(state) if best_of else []
        for job in jobs:
            # a cut row holds its KV until its tail runs: cut only while the KV budget lasts
            cut = next((t for t in stops if t > job.g), None) if self._kv_left > 0 else None
            rows.update(zip(job.keys, self._run_job(job, state, cut)))
        if stops:
            self._finish_rows(state, chain, rows, candidates, best_of, stops)
        self._chain, self._rows = chain, rows
        return (self._objective(state, chain),
                {k: self._objective(state, rows[first_of[k]]) for k in asked})

    def chain_objective(self, state: ChainState) -> float:
        """J of the current chain (the first group with no candidates)."""
        return self.candidate_objectives(state, [])[0]

    def loo_scores(self, state: ChainState) -> list[float]:
        """loo[t] = J(chain without CoT token t) - J(chain), for every CoT token."""
        base_j, js = self.candidate_objectives(state)
        return [js[k] - base_j for k in range(len(state.cot))]


def _first_of_run(cot: list[int], k: int) -> int:
    """The first index of the run of equal tokens that holds cot[k]."""
    while k > 0 and cot[k - 1] == cot[k]:
        k -= 1
    return k


def _kv_bytes(row: ScoredRow) -> int:
    """Bytes of a kept row's KV (its own slice: rows of one job share the job's tensors)."""
    return 0 if row.kv is None else sum(k.nbytes + v.nbytes for k, v in row.kv)


def _stack_kv(kvs: list[list[tuple[torch.Tensor, torch.Tensor]]], length: int):
    """Per layer, the first `length` positions of several rows' KV as one batch."""
    return [(torch.cat([kv[layer][0][:, :, :length] for kv in kvs]),
             torch.cat([kv[layer][1][:, :, :length] for kv in kvs]))
            for layer in range(len(kvs[0]))]
