"""Runs row tasks (`rows.py`) through the model and scores their targets.

`RowRunner` holds the model and nothing about any chain, so the rows of several chains could
share its forwards. It runs tasks two ways:

- `run_batch`: rows that start at the same position, each on its own KV, as the rows of one
  forward (the undeleted chain on the prompt's KV; kept rows going on).
- `run_packed`: candidates on the chain's shared KV, as blocks one after another in the lanes
  of one forward (`packing.py`); a 4D mask keeps each block to its own prefix, so its outputs
  equal a forward of that candidate alone. `run_packs` puts several chains' packs in one
  forward, each lane on its own chain's KV (`prune --lockstep`, `lockstep.py`).

A task cut before its end (`stop`) projects its new targets onto the chain's bound vocabulary
only (`bounds.py`) and keeps their hidden states; `resolve` makes them exact later.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import asdict, dataclass

import torch

from cotprune.core.bounds import Bounded, Targets, bound_vocabulary, nll_lower_bound
from cotprune.core.engine import decoder_and_head, logprob_entropy
from cotprune.core.packing import grouped_query_sdpa, lay_out, stack_kv
from cotprune.core.rows import KV, RowTask, ScoredRow


@dataclass
class WorkCounts:
    """Work done, in counts that do not depend on the machine (benchmarks, summaries)."""

    tokens_run: int = 0  # decoder input tokens of all forwards
    forwards: int = 0  # decoder forwards
    projection_rows: int = 0  # hidden rows projected onto the whole vocabulary
    bound_rows: int = 0  # hidden rows projected onto a bound vocabulary only

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class KvBudget:
    """Bytes of row KV a call may still keep. Rows hold O(n^2) keys and values in all, so a row
    past the budget keeps only its J; rows that must go on later keep their KV regardless."""

    def __init__(self, left: int, *, keep_cut: bool = True):
        self.left = left
        self.keep_cut = keep_cut  # False: not even cut rows keep KV (they will not go on)

    def take(self, nbytes: int, must: bool = False) -> bool:
        """Whether a row of `nbytes` keeps its KV (charging the budget when it does)."""
        keep = (must and self.keep_cut) or nbytes <= self.left
        if keep:
            self.left -= nbytes
        return keep


@dataclass
class PackRequest:
    """One chain's candidates for a packed forward: lanes of tasks on the chain's shared KV,
    the budget their rows' KV is charged to, and the chain's bound vocabulary."""

    lanes: list[list[RowTask]]
    budget: KvBudget
    vocab: torch.Tensor | None


class RowRunner:
    """Forwards and projections of row tasks for one causal LM (no gradients)."""

    def __init__(self, model, work: WorkCounts):
        self.model = model
        self.work = work
        self.decoder, self.head = decoder_and_head(model)
        # transformers 5.x renamed the decoder's `past_key_values` argument and output to `cache`
        params = inspect.signature(self.decoder.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.device = next(model.parameters()).device
        # only a plain linear head's weight gives the logits of part of the vocabulary
        self.can_bound = type(self.head) is torch.nn.Linear

    def call(self, fn):
        """Other model work (a predictor's feature forward): run here, so that a lockstep view
        of this runner (`lockstep.py`) can run it in its main thread instead."""
        return fn()

    def forward(self, ids: torch.Tensor, past: KV | None, positions: torch.Tensor,
                mask: torch.Tensor | None = None):
        """(hidden states, cache) of `ids` [B, T] at `positions` [B, T] on top of `past`.

        Without `mask`, each row sees its whole past and its own earlier tokens; a packed
        forward passes its own 4D additive mask [B, 1, T, past + T]."""
        from transformers import DynamicCache

        b, t = ids.shape
        self.work.tokens_run += b * t
        self.work.forwards += 1
        cache = DynamicCache(ddp_cache_data=past, config=self.model.config)
        if mask is None:
            mask = torch.ones((b, int(positions[0, 0]) + t), dtype=torch.long, device=self.device)
        with grouped_query_sdpa(self.device):
            out = self.decoder(input_ids=ids, position_ids=positions, attention_mask=mask,
                               use_cache=True, **{self._cache_arg: cache})
        return out.last_hidden_state, out[self._cache_arg]

    def positions(self, start: int, b: int, t: int) -> torch.Tensor:
        return torch.arange(start, start + t, device=self.device).expand(b, t)

    @torch.no_grad()
    def prompt_kv(self, prompt: list[int]) -> KV:
        """KV of the prompt without its last token (which every row runs itself)."""
        ids = torch.tensor([prompt[:-1]], device=self.device)
        _, cache = self.forward(ids, None, self.positions(0, 1, len(prompt) - 1))
        return [(layer.keys, layer.values) for layer in cache.layers]

    @torch.no_grad()
    def run_chain(self, task: RowTask, budget: KvBudget, vocab_top: int,
                  ) -> tuple[ScoredRow, torch.Tensor | None]:
        """(S's row, its bound vocabulary): S's likeliest tokens at each target make the bounds
        of its candidates (None where the head cannot bound)."""
        hidden, cache = self._forward_batch([task])
        vocab = None
        if self.can_bound:
            vocab = bound_vocabulary(hidden[0], self.head, task.ids, vocab_top)
            self.work.projection_rows += hidden.shape[1]
        row, = self._batch_rows([task], hidden, cache, budget, None, keep=True)
        return row, vocab

    @torch.no_grad()
    def run_batch(self, tasks: list[RowTask], budget: KvBudget,
                  vocab: torch.Tensor | None) -> list[ScoredRow]:
        """Rows of equal length and start, each on its own KV, in one forward. Cut rows keep
        their KV (they go on later); the others while the budget lasts."""
        hidden, cache = self._forward_batch(tasks)
        return self._batch_rows(tasks, hidden, cache, budget, vocab,
                                keep=tasks[0].stop is not None)

    def _forward_batch(self, tasks: list[RowTask]):
        start, end = tasks[0].start, tasks[0].end
        ids = torch.tensor([task.ids[start - 1:end - 1] for task in tasks], device=self.device)
        # the chain runs on the prompt's KV as it is; rows on their own KV are stacked
        past = (tasks[0].past if len(tasks) == 1 and tasks[0].key is None
                else stack_kv([task.past for task in tasks], start - 1))
        return self.forward(ids, past, self.positions(start - 1, *ids.shape))

    def _batch_rows(self, tasks: list[RowTask], hidden: torch.Tensor, cache, budget: KvBudget,
                    vocab: torch.Tensor | None, keep: bool) -> list[ScoredRow]:
        nll, bounded = self.score(tasks, list(hidden), vocab)
        size = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
        keep = budget.take(size, must=keep)
        # each kept row gets its own copy: a view would keep the whole batch's cache alive for
        # as long as any one of its rows lives (a 107-token chain grew to 1.9 GB of such
        # storage for 0.4 GB of rows in 6 steps)
        return [ScoredRow(task.ids, nll[r, :len(task.ids)],
                          [(layer.keys[r:r + 1].clone(), layer.values[r:r + 1].clone())
                           for layer in cache.layers] if keep else None,
                          task.end, bounded[r])
                for r, task in enumerate(tasks)]

    def run_packed(self, lanes_of_tasks: list[list[RowTask]], budget: KvBudget,
                   vocab: torch.Tensor | None) -> list[ScoredRow]:
        """Candidates on their shared past (the chain's KV), as blocks of one forward: one
        after another in each lane (a row of the forward), each at its true positions."""
        return self.run_packs([PackRequest(lanes_of_tasks, budget, vocab)])[0]

    @torch.no_grad()
    def run_packs(self, requests: list[PackRequest]) -> list[list[ScoredRow]]:
        """The packs of several chains (each on its own shared past) in one forward.

        Every lane keeps its chain's past, padded to the longest: a block sees only the past
        before its own start, so the padding is seen by nothing and each block's outputs equal
        a forward of that candidate alone (up to float rounding)."""
        tasks = [task for req in requests for lane in req.lanes for task in lane]
        starts = [task.start - 1 for task in tasks]  # where each block's input begins
        sizes = [task.end - task.start for task in tasks]
        past_len = max(starts)
        lane_sizes = [len(lane) for req in requests for lane in req.lanes]
        block_lanes = [list(range(a, b)) for a, b in itertools.pairwise(
            itertools.accumulate(lane_sizes, initial=0))]
        dtype = tasks[0].past[0][0].dtype
        pack = lay_out(block_lanes, [task.ids[task.start - 1:task.end - 1] for task in tasks],
                       starts, past_len, dtype)
        past = lanes_past([(req.lanes[0][0].past, len(req.lanes)) for req in requests], past_len)
        hidden, cache = self.forward(pack.tokens.to(self.device), past,
                                     pack.positions.to(self.device), pack.mask.to(self.device))
        position_bytes = sum(layer.keys[0, :, 0].nbytes + layer.values[0, :, 0].nbytes
                             for layer in cache.layers)
        out, first = [], 0
        for req in requests:
            mine = range(first, first + sum(len(lane) for lane in req.lanes))
            first = mine.stop
            blocks = [hidden[lane, off:off + sizes[r]]
                      for r, (lane, off) in zip(mine, (pack.place[r] for r in mine))]
            nll, bounded = self.score([tasks[r] for r in mine], blocks, req.vocab)
            rows = []
            for i, r in enumerate(mine):
                task, start, size = tasks[r], starts[r], sizes[r]
                kv = None
                if req.budget.take((start + size) * position_bytes, must=task.stop is not None):
                    kv = _block_kv(cache, pack.place[r], start, past_len, size)
                rows.append(ScoredRow(task.ids, nll[i, :len(task.ids)], kv, task.end,
                                      bounded[i]))
            out.append(rows)
        return out

    @torch.no_grad()
    def score(self, tasks: list[RowTask], hidden: list[torch.Tensor],
              vocab: torch.Tensor | None) -> tuple[torch.Tensor, list[Bounded | None]]:
        """(NLL per target [rows, longest], bounded targets per row), where hidden[r][j]
        predicts target tasks[r].start + j: known targets are copied, the new ones J needs are
        projected to the vocabulary (0 elsewhere).

        A row cut before its end only gets lower bounds on its new targets and keeps their
        hidden states; a row that reaches its end is projected in full, and keeps the bounded
        targets it inherited until `resolve`."""
        nll = torch.zeros((len(tasks), max(len(task.ids) for task in tasks)),
                          dtype=torch.float64, device=self.device)
        full, cheap, bounded = Targets(), Targets(), []
        for r, task in enumerate(tasks):
            nll[r, :len(task.known)] = task.known
            lo = max(len(task.known), task.counted_from)
            hi = max(lo, task.end)
            new = list(range(lo, hi))
            h = hidden[r][lo - task.start:hi - task.start]
            if hi < len(task.ids) and vocab is not None:
                cheap.add(r, new, h, task.ids)
                bounded.append(Bounded.join(task.inherited, new, h))
            else:
                full.add(r, new, h, task.ids)
                bounded.append(task.inherited)
        if full.rows:
            nll[full.index()] = self._exact_nll(full)
        if cheap.rows:
            hidden_rows = torch.cat(cheap.hidden)
            self.work.bound_rows += len(hidden_rows)
            nll[cheap.index()] = nll_lower_bound(hidden_rows, self.head.weight, vocab,
                                                 cheap.tokens_on(self.device)).double()
        return nll, bounded

    @torch.no_grad()
    def resolve(self, rows: list[ScoredRow]) -> None:
        """Project the bounded targets of `rows` in full (one batch), making their NLL exact."""
        todo = [row for row in rows if row.bounded is not None]
        if not todo:
            return
        targets = Targets()
        for r, row in enumerate(todo):
            targets.add(r, row.bounded.positions, row.bounded.hidden, row.ids)
        exact = self._exact_nll(targets)
        for row, nll in zip(todo, exact.split([len(row.bounded.positions) for row in todo])):
            row.nll[row.bounded.positions] = nll
            row.bounded = None

    def _exact_nll(self, targets: Targets) -> torch.Tensor:
        hidden_rows = torch.cat(targets.hidden)
        self.work.projection_rows += len(hidden_rows)
        logp, _ = logprob_entropy(hidden_rows, self.head, targets.tokens_on(self.device),
                                  with_entropy=False)
        return -logp.double()


def lanes_past(pasts: list[tuple[KV, int]], length: int) -> KV:
    """Per layer, the first `length` positions of each (shared KV, lanes) repeated for its lanes
    and padded with zeros to `length`: the past of a forward over several chains' lanes."""
    if len(pasts) == 1:  # one chain: its KV as a view, no copy
        (kv, n), = pasts
        return [(key[:, :, :length].expand(n, -1, -1, -1), val[:, :, :length].expand(n, -1, -1, -1))
                for key, val in kv]

    def padded(t: torch.Tensor, n: int) -> torch.Tensor:
        t = t[:, :, :length]
        pad = length - t.shape[2]
        if pad:
            t = torch.cat([t, t.new_zeros(*t.shape[:2], pad, t.shape[3])], 2)
        return t.expand(n, -1, -1, -1)

    return [(torch.cat([padded(kv[layer][0], n) for kv, n in pasts]),
             torch.cat([padded(kv[layer][1], n) for kv, n in pasts]))
            for layer in range(len(pasts[0][0]))]


def _block_kv(cache, place: tuple[int, int], start: int, past_len: int, size: int) -> KV:
    """A packed block's own KV: the shared prefix before its start, then its own positions."""
    lane, off = place
    own = slice(past_len + off, past_len + off + size)
    return [(torch.cat([layer.keys[lane:lane + 1, :, :start],
                        layer.keys[lane:lane + 1, :, own]], 2),
             torch.cat([layer.values[lane:lane + 1, :, :start],
                        layer.values[lane:lane + 1, :, own]], 2))
            for layer in cache.layers]
