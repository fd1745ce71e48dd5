"""J of a chain with one CoT token deleted, for many candidates at once, reusing the prefix.

Deleting the CoT token at sequence position q leaves everything before q unchanged: the keys and
values of positions < q and the NLL terms of targets < q are those of the undeleted sequence. So
each candidate only recomputes its suffix, on top of a cached prefix:

    sequence S (length L), prompt length p, candidate k at position q = p + k, S_k = S without q.
    A group of candidates k >= a shares the prefix S[:g-1] (g = p + a) as a KV cache and runs
    S_k[g-1 : L-1] as input: every row has the same length L - g, so the group is one batched
    forward. Row j of the output predicts S_k[g + j].
    J(S_k) = sum(NLL of S's targets in [start, g)) + sum(NLL from the row).

The first group always starts at the CoT (g = p), sits on the prompt's KV (computed once per
chain, never again) and carries one extra row: S itself. That row gives J(S), the NLL of every
target of S and the KV of all of S, which the later groups (long chains that do not fit one
batch) slice their prefixes from. So one greedy step is usually exactly one batched forward.

`DeletionScorer.candidate_objectives` returns J(S) and J(S_k) for the requested candidates;
greedy pruning calls it once per step, the `loo` scorer once per chain. The plain reference (a
full forward per candidate, as the published code does) lives in the tests and bench/greedy.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cotprune.engine import decoder_and_head, logprob_entropy

# A group's later members recompute tokens its first member needs anyway: candidate k in a group
# starting at a wastes (k - a) tokens. Fewer, fuller forwards save per-forward overhead; wasted
# tokens cost compute. On the CPU with SmolLM2 (64-token CoT) a quarter of the row measured ~8%
# faster than allowing a whole row, and smaller waste bounds gained nothing more.
MAX_WASTE = 0.25


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

    def objective_start(self, objective: str) -> int:
        """First target position of J in the current sequence."""
        if objective == "reason-answer":
            return len(self.prompt)
        return len(self.prompt) + len(self.cot)


def group_candidates(candidates: Sequence[int], cot_start: int, length: int,
                     batch_tokens: int) -> list[list[int]]:
    """Split CoT candidate indices into groups that share a prefix; the first starts at 0.

    A group starting at candidate a (the first group: a = 0) runs rows of (length - cot_start -
    a) tokens, one per member plus, in the first group, the undeleted chain. A member k wastes
    (k - a) of its row; a new group starts when that passes MAX_WASTE x the row, or when rows x
    length would pass the token budget.
    """
    groups: list[list[int]] = [[]]
    start = 0
    for k in sorted(candidates):
        rows = len(groups[-1]) + (2 if len(groups) == 1 else 1)
        row = length - cot_start - start
        if rows * length > batch_tokens and groups[-1] or (k - start) > MAX_WASTE * row:
            groups.append([])
            start = k
        groups[-1].append(k)
    return groups


class DeletionScorer:
    """Scores single-token deletions of one chain with a causal LM (no gradients)."""

    def __init__(self, model, objective: str, batch_tokens: int):
        self.model = model
        self.objective = objective
        self.batch_tokens = batch_tokens
        self.decoder, self.head = decoder_and_head(model)
        self.device = next(model.parameters()).device
        self._prompt_key: tuple | None = None
        self.last_nll: list[float] | None = None
        self._prompt_kv = None

    def _run(self, ids: torch.Tensor, past, start_pos: int):
        """Decoder forward of `ids` [B, T] at positions start_pos.. on top of `past` (or None)."""
        from transformers import DynamicCache

        b, t = ids.shape
        cache = DynamicCache(ddp_cache_data=past, config=self.model.config)
        positions = torch.arange(start_pos, start_pos + t, device=self.device).expand(b, t)
        mask = torch.ones((b, start_pos + t), dtype=torch.long, device=self.device)
        out = self.decoder(input_ids=ids, past_key_values=cache, position_ids=positions,
                           attention_mask=mask, use_cache=True)
        return out.last_hidden_state, out.past_key_values

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

    def _row_nll(self, hidden: torch.Tensor, rows: torch.Tensor, g: int, first: int,
                 last: int) -> torch.Tensor:
        """Summed NLL per row of targets at positions [first, last), rows starting at g - 1."""
        n = last - first
        if n <= 0:
            return torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
        h = hidden[:, first - g:first - g + n]
        targets = rows[:, first - g + 1:first - g + 1 + n]
        logp, _ = logprob_entropy(h.reshape(-1, h.shape[-1]), self.head, targets.reshape(-1),
                                  with_entropy=False)
        return -logp.double().view(rows.shape[0], n).sum(1)

    @torch.no_grad()
    def candidate_objectives(self, state: ChainState, candidates: Sequence[int] | None = None,
                             ) -> tuple[float, dict[int, float]]:
        """(J of the current chain, {k: J with CoT token k deleted}) for the candidates."""
        p, m = len(state.prompt), len(state.cot)
        length = p + m + len(state.answer)
        start = state.objective_start(self.objective)
        start_k = start if self.objective == "reason-answer" else start - 1  # in S_k
        full = torch.tensor(state.ids, device=self.device)
        candidates = range(m) if candidates is None else candidates
        out: dict[int, float] = {}
        base_j, cum, kv = 0.0, None, None
        for gi, group in enumerate(group_candidates(candidates, p, length, self.batch_tokens)):
            g = p if gi == 0 else p + group[0]
            rows = [torch.cat([full[g - 1:p + k], full[p + k + 1:]]) for k in group]
            if gi == 0:
                rows.insert(0, full[p - 1:length - 1])  # S itself: same length as the others
                past = self.prompt_cache(state.prompt)
            else:
                past = [(key[:, :, :g - 1], val[:, :, :g - 1]) for key, val in kv]
            ids = torch.stack(rows)
            past = [(key.expand(len(rows), -1, -1, -1), val.expand(len(rows), -1, -1, -1))
                    for key, val in past]
            hidden, cache = self._run(ids, past, g - 1)
            if gi == 0:
                logp, _ = logprob_entropy(hidden[0], self.head, full[p:], with_entropy=False)
                nll = torch.zeros(length, dtype=torch.float64, device=self.device)
                nll[p:] = -logp.double()
                base_j = float(nll[start:].sum())
                self.last_nll = nll[p:p + m].tolist()  # surprisal of each current CoT token
                cum = torch.cumsum(nll, 0)  # cum[t] = sum of nll[0..t]
                kv = [(layer.keys[:1], layer.values[:1]) for layer in cache.layers]
                hidden, ids = hidden[1:], ids[1:]
            first = max(start_k, g)  # targets before `first` are S's, already known
            prefix = float(cum[first - 1] - cum[start_k - 1]) if first > start_k else 0.0
            suffix = self._row_nll(hidden, ids, g, first, length - 1)
            for r, k in enumerate(group):
                out[k] = prefix + float(suffix[r])
        return base_j, out

    def chain_objective(self, state: ChainState) -> float:
        """J of the current chain (the first group with no candidates)."""
        return self.candidate_objectives(state, [])[0]

    def loo_scores(self, state: ChainState) -> list[float]:
        """loo[t] = J(chain without CoT token t) - J(chain), for every CoT token."""
        base_j, js = self.candidate_objectives(state)
        return [js[k] - base_j for k in range(len(state.cot))]
