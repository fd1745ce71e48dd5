"""J of a chain with one CoT token deleted, for many candidates at once, reusing what is known.

Deleting the CoT token at sequence position q leaves everything before q unchanged: the keys and
values of positions < q and the NLL terms of targets < q are those of the undeleted sequence. So
each candidate only recomputes its suffix, on top of a cached prefix:

    sequence S (length L), prompt length p, candidate k at position q = p + k, S_k = S without q.
    Candidate k runs S_k[q-1:] as input on top of S's keys and values before q - 1: the first
    input predicts S_k[q], and targets before q are S's, already known, so only targets from q
    on are projected to the vocabulary. Candidates are packed as blocks, one after another in
    the lanes (rows) of one forward on S's KV (`_run_pack`, `packing.py`): a 4D mask lets each
    block see S's positions before its own start and its own earlier tokens. Every forward
    first reads all weights, so one pack of many short blocks is much cheaper than a forward
    per candidate, and no token is run twice.

The first call on a chain computes S itself on the prompt's KV (computed once per chain). Every
scored row (S_k: its NLL per target and its KV) is kept until the next call, which greedy makes
on S' = S without the chosen token d:

- S' is S_d, already scored: its J, NLL and KV come from that row, so no row of S' is run;
- a candidate k < d of S' is S_k without d, which agrees with the kept row S_k up to position
  p + d - 1: it runs only from there, on that row's own KV (rows of different k batch together,
  since they all start at the same position). Candidates k >= d run on S' (S_d's KV) as above.

So a greedy step runs, for each candidate, only the tokens after both its own deletion and the
previous step's deletion. A second call on the same chain (lazy greedy rescoring more
candidates) runs the new candidates only.

Greedy needs only the best candidates of a step, not every J, so with `best_of=m` the scorer
branches and bounds: NLL terms are >= 0, so the NLL summed over a row's targets so far bounds
its J from below. Rows first run up to a checkpoint a few targets before their end, then go on
(lowest bound first) only while their bound is at most the m-th smallest finished J; a dropped
row keeps its bound as its value. The answer is cheap to predict and a bad deletion shows early,
so on GSM8K chains about a quarter of the suffix tokens never run (BENCHMARKS.md).

Nor does a row need its exact NLL to be dropped: a row cut at a checkpoint projects its targets
onto a small vocabulary only (the chain's tokens and the undeleted chain's likeliest ones), a
lower bound (`bounds.py`), and keeps their hidden states. Only rows that may be among the best
when they finish get the full projection (`_settle`), so most targets never pay for the whole
vocabulary.

The plain reference (a full forward per candidate, as the published code does) lives in the
tests and bench/greedy.py.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cotprune.core.bounds import Bounded, Targets, bound_vocabulary, nll_lower_bound
from cotprune.core.engine import decoder_and_head, logprob_entropy
from cotprune.core.packing import grouped_query_sdpa, lanes, lay_out, stack_kv

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

# Branch and bound (`best_of`): a candidate row stops CHECKPOINTS targets before its end and
# goes on only while its bound can still be among the best; the SEED_ROWS likeliest winners run
# to the end first, to give a tight bound. The last targets (the answer's number, the end of
# turn) carry most of the tail's NLL, so an early check keeps most rows: on a 45-token GSM8K
# chain 35 of 37 rows pass a check 16 targets before the end, 6 pass one at 8. With packed
# candidates (the targets before the check cost no extra forward), all 23 exact steps of that
# chain, CPU seconds: 82.8 at (16,), 73.0 at (8,), 72.5 at (12, 8), 78.1 at (6,), 80.7 at (4,).
# A row is dropped only when its bound exceeds the best by more than BOUND_MARGIN nats, far above
# float32 log-softmax error (a "nonnegative" NLL term can come out as -1e-6), so a row that
# ties or wins is never dropped.
CHECKPOINTS = (8,)
SEED_ROWS = 4
BOUND_MARGIN = 1e-3

# The bound vocabulary of a chain: its own tokens and the BOUND_VOCAB_TOP likeliest tokens at
# each target of the undeleted chain. On a 45-token GSM8K chain (~590 tokens at 32), as many rows
# pass the checkpoint as with exact NLL at steps 0 and 16 and one more at step 8; at 8 (~160
# tokens) one to three more.
BOUND_VOCAB_TOP = 32


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


@dataclass
class ScoredRow:
    """A scored sequence: NLL per target position (0 where J never needs it) and its KV."""

    ids: list[int]
    nll: torch.Tensor  # float64 [len(ids)]; nll[t] = -log p(ids[t] | ids[:t]) for t < scored_to,
    # or a lower bound on it at the `bounded` targets
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None  # per layer, [1, heads, >= scored_to - 1,
    # dim]; None when it was not kept (KEEP_KV_BYTES)
    scored_to: int  # len(ids), or the checkpoint where the row stopped (branch and bound)
    bounded: Bounded | None = None  # only rows cut at a checkpoint have them

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
    bounded: list[Bounded | None]  # per row, which known targets hold only a bound


def deleted_index(before: list[int], after: list[int], cot_start: int) -> int | None:
    """CoT index d with after == before without position cot_start + d, else None."""
    if len(before) != len(after) + 1 or before[:cot_start] != after[:cot_start]:
        return None
    t = cot_start
    while t < len(after) and before[t] == after[t]:
        t += 1
    return t - cot_start if before[t + 1:] == after[t:] else None


def first_difference(before: list[int], after: list[int], cot_start: int) -> int | None:
    """First CoT index d where `after` differs from `before` (both with the same prompt, `after`
    the shorter), or None: every candidate k < d of `after` agrees with `before` without k up to
    position cot_start + d - 1, so its kept row can go on from there."""
    if len(after) >= len(before) or before[:cot_start] != after[:cot_start]:
        return None
    t = cot_start
    while t < len(after) and before[t] == after[t]:
        t += 1
    return t - cot_start


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
        # sorted token ids whose logits bound a cut row's NLL (None: no bounds, every target
        # projected in full); only a plain linear head's weight gives the logits directly
        self._bound_vocab: torch.Tensor | None = None
        self._prompt_key: tuple | None = None
        self._prompt_kv = None
        # rows of the last call: the chain S, and S_k per scored candidate k
        self._chain: ScoredRow | None = None
        self._rows: dict[int, ScoredRow] = {}
        # work done so far, in counts that do not depend on the machine (benchmarks, summaries)
        self.tokens_run = 0  # decoder input tokens of all forwards
        self.forwards = 0  # decoder forwards
        self.projection_rows = 0  # hidden rows projected onto the whole vocabulary
        self.bound_rows = 0  # hidden rows projected onto a bound vocabulary only
        self._kv_left = KEEP_KV_BYTES  # bytes of row KV the current call may still keep

    def _run(self, ids: torch.Tensor, past, positions: torch.Tensor,
             mask: torch.Tensor | None = None):
        """Decoder forward of `ids` [B, T] at `positions` [B, T] on top of `past` (or None).

        Without `mask`, each row sees its whole past and its own earlier tokens; a packed
        forward passes its own 4D additive mask [B, 1, T, past + T]."""
        from transformers import DynamicCache

        b, t = ids.shape
        self.tokens_run += b * t
        self.forwards += 1
        cache = DynamicCache(ddp_cache_data=past, config=self.model.config)
        if mask is None:
            mask = torch.ones((b, int(positions[0, 0]) + t), dtype=torch.long, device=self.device)
        with grouped_query_sdpa(self.device):
            out = self.decoder(input_ids=ids, position_ids=positions, attention_mask=mask,
                               use_cache=True, **{self._cache_arg: cache})
        return out.last_hidden_state, out[self._cache_arg]

    def _positions(self, start: int, b: int, t: int) -> torch.Tensor:
        return torch.arange(start, start + t, device=self.device).expand(b, t)

    @torch.no_grad()
    def prompt_cache(self, prompt: list[int]):
        """KV of the prompt without its last token: computed once per chain, never again."""
        key = tuple(prompt)
        if self._prompt_key != key:
            ids = torch.tensor([prompt[:-1]], device=self.device)
            _, cache = self._run(ids, None, self._positions(0, 1, len(prompt) - 1))
            self._prompt_key = key
            self._prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]
        return self._prompt_kv

    def _known(self, state: ChainState) -> tuple[ScoredRow | None, dict[int, ScoredRow], int]:
        """(S's row if already scored, kept rows S_k that candidates k < d can continue, d).

        d is the first CoT index where S differs from the last call's chain. After one
        deletion S is a scored row; after several (per_step > 1) S itself is run anew, but the
        kept rows of candidates before the first deletion still continue from there."""
        chain, rows = self._chain, self._rows
        if chain is None:
            return None, {}, 0
        if chain.ids == state.ids:
            return chain, {}, 0
        p = len(state.prompt)
        d = deleted_index(chain.ids, state.ids, p)
        if d is not None and d in rows and rows[d].kv is not None and rows[d].finished:
            self._resolve([rows[d]])  # exact already when d won the last call; not if d lost
            new_chain = rows[d]
        else:
            d = first_difference(chain.ids, state.ids, p)
            if d is None:
                return None, {}, 0
            new_chain = None
        g = p + d - 1  # where candidates k < d continue (_continued_jobs)
        return new_chain, {k: row for k, row in rows.items()
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
                    stack_kv([rows[k].kv for k in keys[s:s + per_job]], g - 1),
                    [rows[k].nll[:g] for k in keys[s:s + per_job]], g,
                    [rows[k].bounded and rows[k].bounded.before(g)
                     for k in keys[s:s + per_job]])
                for s in range(0, len(keys), per_job)]

    def _chain_job(self, state: ChainState) -> Job:
        """The undeleted chain S, on the prompt's KV."""
        p = len(state.prompt)
        return Job([None], [state.ids], self.prompt_cache(state.prompt),
                   [torch.zeros(p, dtype=torch.float64, device=self.device)], p, [None])

    def _run_job(self, job: Job, state: ChainState, stop: int | None = None) -> list[ScoredRow]:
        """Forward a job's rows and score every target from g on (those J can need), up to
        `stop` (exclusive; None: to the end of each row).

        The rows keep their KV while KEEP_KV_BYTES allows (`self._kv_left`); the undeleted
        chain's row always does, since the packs of the same call need it, and so do rows cut
        at `stop`, which may go on later.
        """
        g, lengths = job.g, [len(seq) for seq in job.seqs]
        end = max(lengths) if stop is None else stop
        # rows are as long as the longest minus its last token (which predicts nothing)
        ids = torch.tensor([seq[g - 1:end - 1] for seq in job.seqs], device=self.device)
        hidden, cache = self._run(ids, job.past, self._positions(g - 1, *ids.shape))
        if job.keys[0] is None and type(self.head) is torch.nn.Linear:
            # the undeleted chain: its likeliest tokens make the bounds
            self._bound_vocab = bound_vocabulary(hidden[0], self.head, state.ids,
                                                 BOUND_VOCAB_TOP)
            self.projection_rows += hidden.shape[1]
        elif job.keys[0] is None:
            self._bound_vocab = None
        nll, bounded = self._score(state, job.seqs, job.known_nll, job.bounded, list(hidden),
                                   [g] * len(lengths), [min(length, end) for length in lengths])
        size = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
        keep = size <= self._kv_left or job.keys[0] is None or stop is not None
        self._kv_left -= size if keep else 0
        # each kept row gets its own copy: a view would keep the whole job's cache alive for as
        # long as any one of its rows lives (a 107-token chain grew to 1.9 GB of such storage
        # for 0.4 GB of rows in 6 steps)
        return [ScoredRow(seq, nll[r, :len(seq)],
                          [(layer.keys[r:r + 1].clone(), layer.values[r:r + 1].clone())
                           for layer in cache.layers] if keep else None,
                          min(len(seq), end), bounded[r])
                for r, seq in enumerate(job.seqs)]

    def _run_pack(self, state: ChainState, chain: ScoredRow, key_lanes: list[list[int]],
                  end_of: dict[int, int]) -> dict[int, ScoredRow]:
        """Candidates k, each run from position p + k - 1 to end_of[k] - 2, as blocks of one
        forward on S's KV: one after another in each lane (a row of the forward).

        Block k sees S's positions before its start (S_k's prefix) and its own earlier tokens,
        nothing of the other blocks; its tokens keep their true positions. So its outputs equal
        a forward of S_k alone, in one forward for all blocks."""
        ids, p = state.ids, len(state.prompt)
        keys = [k for lane in key_lanes for k in lane]
        seqs = [ids[:p + k] + ids[p + k + 1:] for k in keys]
        starts = [p + k - 1 for k in keys]
        ends = [end_of[k] for k in keys]
        sizes = [end - 1 - start for start, end in zip(starts, ends)]
        past_len = max(starts)
        block_lanes = [list(range(a, b)) for a, b in itertools.pairwise(
            itertools.accumulate(map(len, key_lanes), initial=0))]  # the lanes, as block indices
        pack = lay_out(block_lanes, [seq[start:end - 1] for seq, start, end
                                     in zip(seqs, starts, ends)],
                       starts, past_len, chain.kv[0][0].dtype)
        past = [(key[:, :, :past_len].expand(len(key_lanes), -1, -1, -1),
                 val[:, :, :past_len].expand(len(key_lanes), -1, -1, -1))
                for key, val in chain.kv]
        hidden, cache = self._run(pack.tokens.to(self.device), past,
                                  pack.positions.to(self.device), pack.mask.to(self.device))
        blocks = [hidden[lane, off:off + size] for (lane, off), size in zip(pack.place, sizes)]
        nll, bounded = self._score(state, seqs, [chain.nll[:p + k] for k in keys],
                                   [None] * len(keys), blocks, [start + 1 for start in starts],
                                   ends)
        position_bytes = sum(layer.keys[0, :, 0].nbytes + layer.values[0, :, 0].nbytes
                             for layer in cache.layers)
        rows = []
        for r, (seq, start, size) in enumerate(zip(seqs, starts, sizes)):
            cut = ends[r] < len(seq)  # a cut row needs its KV to go on
            keep = cut or (start + size) * position_bytes <= self._kv_left
            kv = None
            if keep:  # the row's own KV: S's prefix, then its block
                lane, off = pack.place[r]
                own = slice(past_len + off, past_len + off + size)
                kv = [(torch.cat([layer.keys[lane:lane + 1, :, :start],
                                  layer.keys[lane:lane + 1, :, own]], 2),
                       torch.cat([layer.values[lane:lane + 1, :, :start],
                                  layer.values[lane:lane + 1, :, own]], 2))
                      for layer in cache.layers]
                self._kv_left -= (start + size) * position_bytes
            rows.append(ScoredRow(seq, nll[r, :len(seq)], kv, ends[r], bounded[r]))
        return dict(zip(keys, rows))

    def _score(self, state: ChainState, seqs: list[list[int]], known: list[torch.Tensor],
               inherited: list[Bounded | None], hidden: list[torch.Tensor], first: list[int],
               ends: list[int]) -> tuple[torch.Tensor, list[Bounded | None]]:
        """(NLL per target [rows, longest], bounded targets per row) of rows whose hidden[r][j]
        predicts seqs[r][first[r] + j]: targets in known[r] are copied, the others up to ends[r]
        that J needs are projected to the vocabulary (0 elsewhere).

        A row cut before its end only gets lower bounds on its new targets and keeps their hidden
        states; a row that reaches its end is projected in full, and keeps the bounded targets it
        inherited (`inherited[r]`, a part of known[r]) until `_resolve`."""
        nll = torch.zeros((len(seqs), max(map(len, seqs))), dtype=torch.float64,
                          device=self.device)
        full, cheap, bounded = Targets(), Targets(), []
        for r, seq in enumerate(seqs):
            nll[r, :len(known[r])] = known[r]
            lo = max(len(known[r]), state.objective_start(self.objective, len(seq)))
            hi = max(lo, min(len(seq), ends[r]))
            new = list(range(lo, hi))
            h = hidden[r][lo - first[r]:hi - first[r]]
            if hi < len(seq) and self._bound_vocab is not None:
                cheap.add(r, new, h, seq)
                bounded.append(Bounded.join(inherited[r], new, h))
            else:
                full.add(r, new, h, seq)
                bounded.append(inherited[r])
        if full.rows:
            hidden_rows = torch.cat(full.hidden)
            self.projection_rows += len(hidden_rows)
            logp, _ = logprob_entropy(hidden_rows, self.head, full.tokens_on(self.device),
                                      with_entropy=False)
            nll[full.index()] = -logp.double()
        if cheap.rows:
            hidden_rows = torch.cat(cheap.hidden)
            self.bound_rows += len(hidden_rows)
            nll[cheap.index()] = nll_lower_bound(hidden_rows, self.head.weight,
                                                 self._bound_vocab,
                                                 cheap.tokens_on(self.device)).double()
        return nll, bounded

    def _resolve(self, rows: list[ScoredRow]) -> None:
        """Project the bounded targets of `rows` in full (one batch), making their NLL exact."""
        todo = [row for row in rows if row.bounded is not None]
        if not todo:
            return
        targets = Targets()
        for r, row in enumerate(todo):
            targets.add(r, row.bounded.positions, row.bounded.hidden, row.ids)
        hidden_rows = torch.cat(targets.hidden)
        self.projection_rows += len(hidden_rows)
        logp, _ = logprob_entropy(hidden_rows, self.head, targets.tokens_on(self.device),
                                  with_entropy=False)
        for row, nll in zip(todo, (-logp.double()).split([len(row.bounded.positions)
                                                          for row in todo])):
            row.nll[row.bounded.positions] = nll
            row.bounded = None

    def _settle(self, state: ChainState, rows: dict[int, ScoredRow], finished: list[int],
                best_of: int, bound_of: dict[int, float]) -> list[float]:
        """Sorted exact J of the finished rows, after making exact those that may be among the
        `best_of` cheapest (lowest bound first); the others keep their bound in `bound_of`."""
        while True:
            exact = sorted(bound_of[k] for k in finished if rows[k].bounded is None)
            worst = exact[best_of - 1] if len(exact) >= best_of else math.inf
            todo = sorted((k for k in finished if rows[k].bounded is not None
                           and bound_of[k] <= worst + BOUND_MARGIN), key=bound_of.get)
            if not todo:
                return exact
            todo = todo[:best_of - len(exact)] if worst == math.inf else todo
            self._resolve([rows[k] for k in todo])
            bound_of.update({k: self._objective(state, rows[k]) for k in todo})

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
        The likeliest rows run to the end first, to find a tight bound to beat, together with
        the rows whose bound already lies below the likely best J (they would most likely run
        on anyway, and riding along saves a forward); then each checkpoint in turn sends its
        surviving rows to the next one. Rows that cannot win keep their bound."""
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

        waiting = sorted((k for k in candidates if not rows[k].finished),
                         key=lambda k: (likely(k), k))
        reach = likely(waiting[min(best_of, len(waiting)) - 1]) if waiting else math.inf
        seed = waiting[:max(best_of, SEED_ROWS)] + [k for k in waiting[max(best_of, SEED_ROWS):]
                                                     if bound_of[k] <= reach]
        for g in sorted({rows[k].scored_to for k in seed}):
            advance([k for k in seed if rows[k].scored_to == g], None)
        while True:
            done = self._settle(state, rows, [k for k in candidates if rows[k].finished],
                                best_of, bound_of)
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
        # Rows of the last call carry over only when it scored this very state. When `chain` is
        # the last call's S_d (this state, one deletion on), its rows S'_k belong to the state
        # before: carried over, they were later continued as if they were this state's, and a
        # lazy greedy (--shortlist) step got wrong J for the candidates it did not rescore.
        same_state = self._chain is not None and self._chain.ids == state.ids
        rows = dict(self._rows) if same_state else {}
        rest = [k for k in candidates if k not in kept]
        self._kv_left = KEEP_KV_BYTES - sum(_kv_bytes(row) for row in rows.values())
        if chain is None:  # S first, on the prompt: every candidate's prefix is S's
            chain, = self._run_job(self._chain_job(state), state)
        stops = self._checkpoints(state) if best_of else []
        # a cut row holds its KV until its tail runs: cut only while the KV budget lasts
        for job in self._continued_jobs(state, kept, d, [k for k in candidates if k in kept]):
            cut = next((t for t in stops if t > job.g), None) if self._kv_left > 0 else None
            rows.update(zip(job.keys, self._run_job(job, state, cut)))
        p, length = len(state.prompt), len(state.ids) - 1  # candidates are one token shorter
        ends = {k: next((t for t in stops if t > p + k), length) if self._kv_left > 0 else length
                for k in rest}
        budget = min(PACK_TOKENS, self.batch_tokens)
        width = min(LANE_TOKENS, budget)
        in_lanes = lanes(rest, {k: ends[k] - p - k for k in rest}, width)
        per_pack = max(1, budget // width)
        for first in range(0, len(in_lanes), per_pack):
            rows.update(self._run_pack(state, chain, in_lanes[first:first + per_pack], ends))
        if best_of:
            self._finish_rows(state, chain, rows, candidates, best_of, stops)
        else:  # every J asked for is wanted exactly (rows may come from a bounded call)
            self._resolve([rows[k] for k in candidates])
        self._chain, self._rows = chain, rows
        return (self._objective(state, chain),
                {k: self._objective(state, rows[first_of[k]]) for k in asked})

    def counts(self) -> dict[str, int]:
        """The work counters, for a summary: {tokens_run, forwards, projection_rows, bound_rows}."""
        return {"tokens_run": self.tokens_run, "forwards": self.forwards,
                "projection_rows": self.projection_rows, "bound_rows": self.bound_rows}

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
