"""The rows of the deletion engine: the chain being pruned, the sequences scored for it, and the
small description (`RowTask`) from which `runner.py` scores one more stretch of a row.

A row is one sequence the model reads: the chain S itself, or S_k, the chain without CoT token
k. Its NLL is known up to `start`; a task asks for its targets from `start` up to `stop`,
reading the keys and values of its positions before `start - 1` from `past`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cotprune.core.bounds import Bounded

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [rows, heads, len, dim]


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
    kv: KV | None  # per layer, [1, heads, >= scored_to - 1, dim]; None when it was not kept
    scored_to: int  # len(ids), or the checkpoint where the row stopped (branch and bound)
    bounded: Bounded | None = None  # only rows cut at a checkpoint have them

    @property
    def finished(self) -> bool:
        return self.scored_to == len(self.ids)


@dataclass(frozen=True)
class RowTask:
    """One row to run on: its targets [start, stop) are scored from the model's outputs.

    The row's input is ids[start - 1:stop - 1]; before that it sees the first start - 1
    positions of `past` (its own KV, or the chain's: a candidate's prefix is the chain's).
    """

    key: int | None  # the deleted CoT index; None: the undeleted chain
    ids: list[int]  # the whole sequence
    start: int  # first target not known yet
    stop: int | None  # targets end here (a checkpoint: the row is cut); None: at the row's end
    known: torch.Tensor  # NLL of the targets before `start`
    inherited: Bounded | None  # which of the known targets hold only a bound
    past: KV  # per layer, [1, heads, >= start - 1, dim]
    counted_from: int  # first target J counts: targets before it are never projected

    @property
    def end(self) -> int:
        """The target (exclusive) this run scores up to."""
        return len(self.ids) if self.stop is None else min(self.stop, len(self.ids))


def chain_task(state: ChainState, objective: str, prompt_kv: KV, device) -> RowTask:
    """The undeleted chain S, on the prompt's KV."""
    p = len(state.prompt)
    return RowTask(None, state.ids, p, None, torch.zeros(p, dtype=torch.float64, device=device),
                   None, prompt_kv, state.objective_start(objective))


def candidate_task(state: ChainState, objective: str, chain: ScoredRow, k: int,
                   end: int) -> RowTask:
    """S_k from its deletion on, on S's KV: before position p + k, S_k is S."""
    ids, p = state.ids, len(state.prompt)
    seq = ids[:p + k] + ids[p + k + 1:]
    return RowTask(k, seq, p + k, end if end < len(seq) else None, chain.nll[:p + k], None,
                   chain.kv, state.objective_start(objective, len(seq)))


def continued_task(state: ChainState, objective: str, row: ScoredRow, k: int, start: int,
                   stop: int | None) -> RowTask:
    """A kept row S_k of an earlier chain, going on at `start` into the current chain (whose
    tokens from `start` on replace the row's own)."""
    seq = row.ids[:start] + state.ids[start + 1:]
    return resumed_task(state, objective, row, k, seq, start, stop)


def resumed_task(state: ChainState, objective: str, row: ScoredRow, k: int, seq: list[int],
                 start: int, stop: int | None) -> RowTask:
    """Row `row` as the sequence `seq` (equal to it before `start`), run on from `start`."""
    return RowTask(k, seq, start, stop, row.nll[:start],
                   row.bounded and row.bounded.before(start), row.kv,
                   state.objective_start(objective, len(seq)))


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


def first_of_run(cot: list[int], k: int) -> int:
    """The first index of the run of equal tokens that holds cot[k]."""
    while k > 0 and cot[k - 1] == cot[k]:
        k -= 1
    return k


def kv_bytes(row: ScoredRow) -> int:
    """Bytes of a kept row's KV (its own slice: rows of one job share the job's tensors)."""
    return 0 if row.kv is None else sum(k.nbytes + v.nbytes for k, v in row.kv)
