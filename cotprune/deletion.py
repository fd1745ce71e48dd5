"""J of a chain with one CoT token deleted, for many candidates at once, reusing the prefix.

Deleting the CoT token at sequence position q leaves everything before q unchanged: the keys and
values of positions < q and the NLL terms of targets < q are those of the undeleted sequence. So
each candidate only recomputes its suffix, on top of the cached prefix:

    sequence S (length L), candidate k at position q = cot_start + k, S_k = S without q.
    A group of candidates k >= a shares the prefix S[:g-1] (g = cot_start + a) as a KV cache and
    runs S_k[g-1 : L-2] as input: every row of the group has the same length, so the group is
    one batched forward. Row j of the output predicts S_k[g + j].
    J(S_k) = sum(base NLL of targets in [start, g)) + sum(NLL from the group's rows).

`DeletionScorer.candidate_objectives` returns J(S_k) for the requested candidates; greedy pruning
calls it once per step, and the `loo` scorer once per chain. The plain reference (a full forward
per candidate, as the published code does) lives in the tests and in bench/greedy.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cotprune.engine import decoder_and_head, logprob_entropy


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
    """Split sorted CoT candidate indices into groups that share a prefix.

    A group starting at candidate a recomputes (length - cot_start - a) tokens per row; a later
    member k wastes (k - a) of them, so a group stops when that waste would pass a quarter of the
    row, or when rows x (prefix + row) would pass the token budget.
    """
    groups: list[list[int]] = []
    for k in sorted(candidates):
        if groups:
            a = groups[-1][0]
            row = length - cot_start - a
            fits = (len(groups[-1]) + 1) * length <= batch_tokens
            if fits and (k - a) * 4 <= row:
                groups[-1].append(k)
                continue
        groups.append([k])
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
        self._prompt_kv = None

    def _run(self, ids: torch.Tensor, past, start_pos: int):
        """Decoder forward of `ids` [B, T] at positions start_pos.. on top of `past` (or None)."""
        from transformers import DynamicCache

        b, t = ids.shape
        cache = DynamicCache(ddp_cache_data=past, config=self.model.config) if past \
            else DynamicCache(config=self.model.config)
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

    @torch.no_grad()
    def base_pass(self, state: ChainState):
        """NLL of every target from the CoT on (0 before) and the KV of the whole sequence.

        Runs only S[p-1:] on top of the cached prompt.
        """
        p = len(state.prompt)
        ids = torch.tensor([state.ids[p - 1:]], device=self.device)
        hidden, cache = self._run(ids, self.prompt_cache(state.prompt), p - 1)
        logp, _ = logprob_entropy(hidden[0, :-1], self.head, ids[0, 1:], with_entropy=False)
        nll = torch.zeros(p + ids.shape[1] - 1, dtype=torch.float64, device=self.device)
        nll[p:] = -logp.double()
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        return nll, kv

    def chain_objective(self, state: ChainState, base) -> float:
        """J of the current chain from its base pass."""
        return float(base[0][state.objective_start(self.objective):].sum())

    @torch.no_grad()
    def candidate_objectives(self, state: ChainState, candidates: Sequence[int] | None = None,
                             base=None) -> tuple[float, dict[int, float]]:
        """(J of the current chain, {k: J with CoT token k deleted}) for the candidates."""
        nll, kv = base if base is not None else self.base_pass(state)
        p, m = len(state.prompt), len(state.cot)
        length = p + m + len(state.answer)
        start = state.objective_start(self.objective)
        base_j = self.chain_objective(state, (nll, kv))
        cum = torch.cumsum(nll, 0)  # cum[t] = sum of nll[0..t]
        candidates = range(m) if candidates is None else candidates
        full = torch.tensor(state.ids, device=self.device)
        out: dict[int, float] = {}
        for group in group_candidates(candidates, p, length, self.batch_tokens):
            g = p + group[0]
            # Each row: S_k[g-1 : L-2], i.e. S[g-1 : L-1] without position q = p + k.
            rows = []
            for k in group:
                q = p + k
                rows.append(torch.cat([full[g - 1:q], full[q + 1:length]]))
            ids = torch.stack(rows)[:, :-1]
            past = [(key[:, :, :g - 1].expand(len(group), -1, -1, -1),
                     val[:, :, :g - 1].expand(len(group), -1, -1, -1)) for key, val in kv]
            hidden, _ = self._run(ids, past, g - 1)
            # Targets of row j: S_k[g + j]; J counts target positions t' >= start' where the
            # objective start shifts by one for the answer objective (one CoT token fewer).
            start_k = start if self.objective == "reason-answer" else start - 1
            first = max(start_k, g)  # first target position computed by this group
            n_rows = (length - 1) - first  # targets first .. L-2 (S_k has length L-1)
            targets = torch.stack(rows)[:, first - g + 1:]
            h = hidden[:, first - g:first - g + n_rows]
            logp, _ = logprob_entropy(h.reshape(-1, h.shape[-1]), self.head,
                                      targets.reshape(-1), with_entropy=False)
            suffix = -logp.double().view(len(group), n_rows).sum(1)
            prefix = float(cum[first - 1] - cum[start_k - 1]) if first > start_k else 0.0
            for r, k in enumerate(group):
                out[k] = prefix + float(suffix[r])
        return base_j, out

    def loo_scores(self, state: ChainState) -> list[float]:
        """loo[t] = J(chain without CoT token t) - J(chain), for every CoT token."""
        base_j, js = self.candidate_objectives(state)
        return [js[k] - base_j for k in range(len(state.cot))]
