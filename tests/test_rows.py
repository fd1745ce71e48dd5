"""Row tasks describe the sequence a candidate is, and which part of it still has to run."""

import torch

from cotprune.core.rows import (
    ChainState,
    ScoredRow,
    candidate_task,
    chain_task,
    continued_task,
    deleted_index,
    first_of_run,
    kv_bytes,
    resumed_task,
)

STATE = ChainState([1, 2, 3], [10, 11, 12, 13], [20, 21])  # p = 3, L = 9


def _row(ids, scored_to=None, kv=None):
    n = len(ids)
    return ScoredRow(list(ids), torch.arange(n, dtype=torch.float64), kv,
                     n if scored_to is None else scored_to)


def test_chain_task_runs_the_whole_chain_on_the_prompt():
    task = chain_task(STATE, "reason-answer", ["kv"], "cpu")
    assert task.key is None and task.ids == STATE.ids
    assert task.start == 3 and task.stop is None and task.end == 9
    assert task.known.tolist() == [0.0] * 3 and task.counted_from == 3
    assert chain_task(STATE, "answer", [], "cpu").counted_from == 7


def test_candidate_task_is_the_chain_without_k_from_its_deletion_on():
    chain = _row(STATE.ids, kv=["chain kv"])
    task = candidate_task(STATE, "reason-answer", chain, 1, 6)
    assert task.ids == [1, 2, 3, 10, 12, 13, 20, 21] and task.key == 1
    assert task.start == 4 and task.stop == 6 and task.end == 6  # cut at target 6
    assert task.known.tolist() == [0, 1, 2, 3] and task.past is chain.kv
    whole = candidate_task(STATE, "answer", chain, 1, 8)
    assert whole.stop is None and whole.end == 8 and whole.counted_from == 6


def test_continued_task_joins_a_kept_row_to_the_current_chain():
    """S_k of the chain before (d = 2 deleted since) goes on at p + d - 1 into S' without k."""
    before = ChainState([1, 2, 3], [10, 11, 12, 13], [20, 21])
    after = ChainState([1, 2, 3], [10, 11, 13], [20, 21])
    k, d = 0, 2
    kept = _row([1, 2, 3, 11, 12, 13, 20, 21])  # before without k
    task = continued_task(after, "reason-answer", kept, k, 3 + d - 1, None)
    assert task.ids == [1, 2, 3, 11, 13, 20, 21]  # after without k
    assert task.ids[:task.start] == kept.ids[:task.start]
    assert task.known.tolist() == [0, 1, 2, 3] and task.inherited is None
    assert before.ids != after.ids


def test_resumed_task_keeps_only_the_bounds_before_its_start():
    from cotprune.core.bounds import Bounded

    row = _row(STATE.ids, scored_to=6)
    row.bounded = Bounded([4, 5, 6], torch.zeros(3, 2))
    task = resumed_task(STATE, "reason-answer", row, 2, row.ids, 6, None)
    assert task.inherited.positions == [4, 5] and task.start == 6 and task.end == 9


def test_deleted_index_and_first_of_run():
    assert deleted_index([1, 2, 3, 4], [1, 2, 4], 1) == 1
    assert deleted_index([1, 2, 3, 4], [1, 3, 4], 1) == 0
    assert deleted_index([1, 2, 3, 4], [1, 2, 3], 1) == 2
    assert deleted_index([1, 2, 3, 4], [1, 4], 1) is None  # two gone
    assert deleted_index([1, 2, 3, 4], [9, 2, 3], 1) is None  # another prompt
    assert [first_of_run([5, 7, 7, 7, 5], k) for k in range(5)] == [0, 1, 1, 1, 4]


def test_kv_bytes_counts_a_rows_own_tensors():
    kv = [(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))]
    assert kv_bytes(_row([1, 2], kv=kv)) == 2 * 24 * 4 and kv_bytes(_row([1])) == 0
