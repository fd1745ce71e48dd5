import itertools
import random

import pytest
import torch

from cotprune.core.engine import logprob_entropy, plan_batches, sequence_objectives
from cotprune.core.models import ModelOptions, load_model
from cotprune.data.layout import ChainLayout


@pytest.fixture(scope="module")
def tiny(tiny_qwen_model):
    return load_model(ModelOptions(model=str(tiny_qwen_model), device="cpu"))


def reference_objective(model, layout, objective):
    """float64 full-vocabulary log-softmax over the whole sequence, one chain at a time."""
    ids = torch.tensor([layout.input_ids])
    logits = model(ids).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    start = layout.cot_start if objective == "reason-answer" else layout.answer_start
    return -sum(float(logp[p - 1, layout.input_ids[p]]) for p in range(start, layout.answer_end))


def test_plan_batches_respects_budget_and_covers_all():
    lengths = [5, 50, 7, 30, 30, 2, 90]
    batches = plan_batches(lengths, 100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100
    assert batches[0] == [6]  # longest first
    assert plan_batches([], 100) == []
    assert plan_batches([500, 3], 100) == [[0], [1]]  # over the budget alone: its own batch


def plan_cost(lengths, batches, forward_cost):
    return sum(len(b) * max(lengths[i] for i in b) + forward_cost for b in batches)


def best_plan_cost(widths, budget, forward_cost):
    """Plain reference: try every cut of the length-sorted order (2^(n-1) plans)."""
    n, best = len(widths), None
    for cuts in itertools.product((False, True), repeat=n - 1):
        bounds = [0, *(k + 1 for k, cut in enumerate(cuts) if cut), n]
        runs = [widths[a:b] for a, b in itertools.pairwise(bounds)]
        if any(len(r) > 1 and len(r) * r[0] > budget for r in runs):
            continue
        cost = sum(len(r) * r[0] + forward_cost for r in runs)
        best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_plan_batches_is_the_cheapest_plan_of_sorted_runs(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 10))]
    budget, forward_cost = rng.choice([40, 100, 250]), rng.choice([0, 8, 64])
    batches = plan_batches(lengths, budget, forward_cost=forward_cost)
    widths = sorted(lengths, reverse=True)
    assert plan_cost(lengths, batches, forward_cost) == best_plan_cost(widths, budget,
                                                                      forward_cost)


def test_plan_batches_pads_less_than_filling_to_the_budget():
    # filled to 100 tokens, [50, 10, ...] would pad nine 10-token rows to 50
    lengths = [50, 10, 10, 10, 10, 10, 10, 10, 10, 10]
    batches = plan_batches(lengths, 500, forward_cost=8)
    assert batches == [[0], [1, 2, 3, 4, 5, 6, 7, 8, 9]]


def test_logprob_entropy_matches_full_softmax():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(13, 8)
    targets = torch.randint(0, 50, (13,))
    logp, ent = logprob_entropy(hidden, head, targets, chunk_rows=4)
    full = torch.log_softmax(head(hidden).double(), -1)
    assert torch.allclose(logp.double(), full.gather(-1, targets[:, None])[:, 0], atol=1e-5)
    assert torch.allclose(ent.double(), -(full.exp() * full).sum(-1), atol=1e-5)


@pytest.mark.parametrize("objective", ["reason-answer", "answer"])
def test_sequence_objectives_match_reference_and_batching(tiny, objective):
    model, tok = tiny
    cl = ChainLayout(tok)
    layouts = [cl.layout(f"Q{i}?", "step " * (i + 1) + "done", str(i)) for i in range(5)]
    batched = sequence_objectives(model, layouts, objective, batch_tokens=10_000,
                                  pad_id=tok.pad_token_id)
    single = sequence_objectives(model, layouts, objective, batch_tokens=1,
                                 pad_id=tok.pad_token_id)
    with torch.no_grad():
        ref = [reference_objective(model, x, objective) for x in layouts]
    assert batched == pytest.approx(ref, rel=1e-4, abs=1e-3)
    assert single == pytest.approx(batched, rel=1e-5, abs=1e-4)
