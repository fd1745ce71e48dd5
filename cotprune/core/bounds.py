"""Lower bounds on a row's NLL, for branch and bound (`branch_and_bound.py`, `runner.py`).

Greedy needs the exact J of the few candidates that may win a step, and only a lower bound for
the rest. -log p(target) = logsumexp(logits) - logit(target), and a log-sum-exp over part of the
vocabulary is at most the full one, so the logits of a few hundred likely tokens give a bound at
about 1% of the cost of the full projection (`bound_vocabulary`, `nll_lower_bound`). A row
keeps the hidden states of its bounded targets (`Bounded`), so making them exact later costs a
projection and no forward.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cotprune.core.engine import VOCAB_CHUNK_ROWS


def bound_vocabulary(hidden: torch.Tensor, head, ids: Sequence[int], top: int,
                     chunk_rows: int = VOCAB_CHUNK_ROWS) -> torch.Tensor:
    """Sorted token ids: every id in `ids` and the `top` likeliest tokens predicted by each row
    of `hidden` [N, H] through `head` (projected `chunk_rows` rows at a time)."""
    likeliest = [logits.topk(min(top, logits.shape[-1]), dim=-1).indices.flatten()
                 for s in range(0, hidden.shape[0], chunk_rows)
                 for logits in [head(hidden[s:s + chunk_rows])]]
    return torch.unique(torch.cat([torch.as_tensor(list(ids), device=hidden.device),
                                   *likeliest]))


# Per-target slack of `nll_lower_bound` on top of the rounding of the full projection's dtype: the
# two projections sum the same products in different orders (float32: ~1e-6 apart).
BOUND_SLACK = 1e-4


def nll_lower_bound(hidden: torch.Tensor, weight: torch.Tensor, vocab: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
    """A lower bound on -log p(target) per row of `hidden` [N, H], from the logits of the token
    ids `vocab` (sorted; they must hold every target) of the projection `weight` [V, H] only.

    log-sum-exp over part of the vocabulary is at most the full one, so lse(vocab logits) -
    z(target) <= -log p(target). With the chain's own tokens and each position's likeliest ones
    in `vocab` (~1% of SmolLM2's), the bound is a few tenths of a nat below the truth per row of
    ~40 targets, at ~1% of the cost of the full projection."""
    slots = torch.searchsorted(vocab, targets)
    if bool((slots >= len(vocab)).any()) or not torch.equal(vocab[slots], targets):
        raise ValueError("nll_lower_bound: every target must be in the bound vocabulary")
    logits = hidden.float() @ weight[vocab].float().T
    z = logits.gather(-1, slots[:, None]).squeeze(-1)
    lse = logits.logsumexp(-1)
    # the full projection rounds its logits in the weight's dtype: allow two roundings of each
    slack = BOUND_SLACK + 2 * torch.finfo(weight.dtype).eps * (lse.abs() + z.abs())
    return (lse - z - slack).clamp_min(0)


@dataclass
class Bounded:
    """Targets of a row whose NLL holds only a lower bound, with the hidden states that predict
    them: their exact NLL, once the row turns out to need it, costs a projection and no forward."""

    positions: list[int]  # ascending
    hidden: torch.Tensor  # [len(positions), hidden size]

    def before(self, g: int) -> Bounded | None:
        """The bounded targets before position g (None if there are none)."""
        n = bisect_left(self.positions, g)
        return Bounded(self.positions[:n], self.hidden[:n]) if n else None

    @staticmethod
    def join(old: Bounded | None, positions: list[int], hidden: torch.Tensor) -> Bounded:
        if old is None:
            return Bounded(positions, hidden)
        return Bounded(old.positions + positions, torch.cat([old.hidden, hidden]))


@dataclass
class Targets:
    """Targets to project at once: their place in the NLL table, hidden states and tokens."""

    rows: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    hidden: list[torch.Tensor] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def add(self, row: int, positions: list[int], hidden: torch.Tensor, seq: list[int]) -> None:
        self.rows += [row] * len(positions)
        self.positions += positions
        self.hidden.append(hidden)
        self.tokens += [seq[t] for t in positions]

    def index(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(self.rows), torch.tensor(self.positions)

    def tokens_on(self, device: torch.device) -> torch.Tensor:
        return torch.tensor(self.tokens, device=device)
