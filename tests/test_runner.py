"""The row runner on a tiny random model: a candidate run as a packed block, or on its own KV,
scores what a full forward of that candidate scores, and the work counters add up."""

import pytest
import torch
from greedy_reference import full_objective

from cotprune.core.models import ModelOptions, load_model, load_tokenizer
from cotprune.core.rows import ChainState, candidate_task, chain_task, resumed_task
from cotprune.core.runner import KvBudget, PackRequest, RowRunner, WorkCounts
from cotprune.data.layout import ChainLayout


@pytest.fixture(scope="module")
def setup(tiny_gpt2_model):
    model, tok = load_model(ModelOptions(model=str(tiny_gpt2_model), device="cpu"))
    cl = ChainLayout(tok)
    state = ChainState(cl.prompt_ids("What is it?"), cl.cot_ids("We add 3 and 4 to get 7."),
                       cl.answer_ids("7"))
    return model, state


def _j(row, start):
    return float(row.nll[start:].sum())


def test_chain_and_packed_candidates_equal_full_forwards(setup):
    model, state = setup
    work = WorkCounts()
    runner = RowRunner(model, work)
    budget = KvBudget(10**12)
    p = len(state.prompt)
    chain, vocab = runner.run_chain(chain_task(state, "reason-answer", runner.prompt_kv(
        state.prompt), runner.device), budget, 32)
    assert work.forwards == 2 and work.tokens_run == len(state.ids) - 1  # prompt, then S
    assert _j(chain, p) == pytest.approx(full_objective(model, state.ids, p), abs=1e-4)
    assert vocab is not None and set(state.ids) <= set(vocab.tolist())
    keys = list(range(len(state.cot)))
    tasks = [candidate_task(state, "reason-answer", chain, k, len(state.ids) - 1) for k in keys]
    before = work.forwards
    rows = runner.run_packed([tasks[::2], tasks[1::2]], budget, vocab)  # two lanes
    assert work.forwards == before + 1
    for k, row in zip(keys[::2] + keys[1::2], rows, strict=True):
        assert row.finished and row.bounded is None and row.kv is not None
        assert _j(row, p) == pytest.approx(full_objective(model, row.ids, p), abs=1e-4), k


@pytest.fixture(scope="module")
def other_state(tiny_gpt2_model):
    """A second chain, with a longer prompt and another CoT length."""
    cl = ChainLayout(load_tokenizer(str(tiny_gpt2_model), False))
    return ChainState(cl.prompt_ids("And what is 12 minus 5, please?"),
                      cl.cot_ids("Take 5 from 12, which is 7."), cl.answer_ids("7"))


def test_packs_of_two_chains_in_one_forward_equal_full_forwards(setup, other_state):
    """Lockstep: chains of different prompt and CoT lengths share one forward, each lane on
    its own chain's past (padded), and still score what their full forwards score; cut rows
    keep their own past and hold bounds."""
    model, state = setup
    work = WorkCounts()
    runner = RowRunner(model, work)
    budget = KvBudget(10**12)
    requests, expected = [], []
    for s, cut in ((state, None), (other_state, 3)):
        chain, vocab = runner.run_chain(chain_task(s, "reason-answer", runner.prompt_kv(
            s.prompt), runner.device), budget, 32)
        end = len(s.ids) - 1 if cut is None else len(s.ids) - cut
        tasks = [candidate_task(s, "reason-answer", chain, k, end) for k in range(len(s.cot))]
        requests.append(PackRequest([tasks[::2], tasks[1::2]], budget, vocab))
        expected.append((s, cut, runner.run_packed(requests[-1].lanes, budget, vocab)))
    before = work.forwards
    merged = runner.run_packs(requests)
    assert work.forwards == before + 1
    for rows, (s, cut, alone) in zip(merged, expected, strict=True):
        p = len(s.prompt)
        for row, ref in zip(rows, alone, strict=True):
            assert row.ids == ref.ids and row.scored_to == ref.scored_to
            assert row.nll.tolist() == pytest.approx(ref.nll.tolist(), abs=1e-4)
            assert (row.bounded is None) == (cut is None) and row.kv is not None
            if cut is None:
                assert _j(row, p) == pytest.approx(full_objective(model, row.ids, p), abs=1e-4)
            for (key, val), (ref_key, ref_val) in zip(row.kv, ref.kv, strict=True):
                assert key.shape == ref_key.shape
                assert torch.allclose(key, ref_key, atol=1e-5)
                assert torch.allclose(val, ref_val, atol=1e-5)


def test_a_cut_row_holds_bounds_until_it_runs_on_and_is_resolved(setup):
    model, state = setup
    runner = RowRunner(model, WorkCounts())
    budget = KvBudget(0)  # nothing may keep its KV unless it must
    p, k = len(state.prompt), 2
    chain, vocab = runner.run_chain(chain_task(state, "reason-answer", runner.prompt_kv(
        state.prompt), runner.device), budget, 32)
    assert chain.kv is not None  # the chain always keeps its KV
    stop = len(state.ids) - 4
    cut, = runner.run_packed([[candidate_task(state, "reason-answer", chain, k, stop)]],
                             budget, vocab)
    assert cut.scored_to == stop and cut.kv is not None and cut.bounded is not None
    assert runner.work.bound_rows == len(cut.bounded.positions)
    done, = runner.run_batch([resumed_task(state, "reason-answer", cut, k, cut.ids, stop,
                                           None)], budget, vocab)
    assert done.finished and done.kv is None  # over the budget, and not cut
    assert done.bounded is not None  # the bounds it inherited stay until resolved
    truth = full_objective(model, done.ids, p)
    assert _j(done, p) <= truth + 1e-6
    runner.resolve([done])
    assert done.bounded is None and _j(done, p) == pytest.approx(truth, abs=1e-4)


def test_kv_budget_charges_what_it_keeps():
    budget = KvBudget(100)
    assert budget.take(60) and budget.left == 40
    assert not budget.take(60) and budget.left == 40
    assert budget.take(60, must=True) and budget.left == -20
    assert WorkCounts(1, 2, 3, 4).as_dict() == {"tokens_run": 1, "forwards": 2,
                                                "projection_rows": 3, "bound_rows": 4}
